"""The wire protocol: every message corral puts on the bus, and how it is encoded.

Bodies are JSON unless a request carries ``Content-Type: application/msgpack``;
the reply then uses the same encoding. Every reply is a :class:`Response`.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from typing import Annotated, Any, Final

import msgspec

__all__ = [
    "CONTENT_TYPE_HEADER",
    "DIRECT_REPLY_GRACE",
    "DIRECT_REPLY_HEADER",
    "INSTANCE_HEADER",
    "JSON",
    "MSGPACK",
    "MSGPACK_CONTENT_TYPE",
    "PRIORITY_NAMES",
    "TRACEPARENT_HEADER",
    "CheckResult",
    "Codec",
    "Envelope",
    "ErrorCode",
    "ErrorPayload",
    "Heartbeat",
    "ModuleHealth",
    "ModuleRegistration",
    "ModuleStatus",
    "Outcome",
    "OutcomeBatch",
    "Priority",
    "Response",
    "codec_for",
    "error_response",
    "parse_priority",
    "success_response",
]

CONTENT_TYPE_HEADER: Final = "Content-Type"
MSGPACK_CONTENT_TYPE: Final = "application/msgpack"
TRACEPARENT_HEADER: Final = "traceparent"
# Per-request deadline in seconds, as an alternative to the Envelope's `timeout` field.
TIMEOUT_HEADER: Final = "Corral-Timeout"
# Direct reply (see corral.runtime.direct): on a request the orchestrator forwards to an SDK
# module, "<caller's inbox> <seconds left>" (subjects have no spaces). Short on purpose: nats-py
# spends time per header character on both sides, on every call.
DIRECT_REPLY_HEADER: Final = "Corral-Direct-Reply"
# On a control verb (`<prefix>.modctl.<module>.<verb>`): only the instance it names acts on it
# and answers; without it, every instance does.
INSTANCE_HEADER: Final = "Corral-Instance"
# How long after a directly answered call's deadline the orchestrator waits for its outcome
# report before answering TIMEOUT itself; a module sends nothing later than half of it.
DIRECT_REPLY_GRACE: Final = 1.0


class ErrorCode(enum.StrEnum):
    """Why a request failed; the `code` of every error payload."""

    VALIDATION = "VALIDATION"  # the caller sent something malformed; never counts against a module
    NOT_FOUND = "NOT_FOUND"  # no such module, message type, key or task
    TIMEOUT = "TIMEOUT"  # no answer within the deadline
    CIRCUIT_OPEN = "CIRCUIT_OPEN"  # the module's breaker is open; retry after the advertised wait
    OVERLOADED = "OVERLOADED"  # a bounded queue is full; back off
    UNAVAILABLE = "UNAVAILABLE"  # the target exists but cannot serve now (stopping, not ready)
    MODULE_ERROR = "MODULE_ERROR"  # the handler raised
    CONFLICT = "CONFLICT"  # a compare-and-set lost against another writer


# The Services API convention puts a numeric code in the `Nats-Service-Error-Code` header.
SERVICE_ERROR_CODES: Final[Mapping[ErrorCode, str]] = {
    ErrorCode.VALIDATION: "400",
    ErrorCode.NOT_FOUND: "404",
    ErrorCode.CONFLICT: "409",
    ErrorCode.OVERLOADED: "429",
    ErrorCode.MODULE_ERROR: "500",
    ErrorCode.UNAVAILABLE: "503",
    ErrorCode.CIRCUIT_OPEN: "503",
    ErrorCode.TIMEOUT: "504",
}


class Priority(enum.IntEnum):
    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3
    BACKGROUND = 4


PRIORITY_NAMES: Final[Mapping[str, Priority]] = {p.name.lower(): p for p in Priority}


def parse_priority(value: int | str, field: str = "priority") -> Priority:
    """Accept 0-4 or a name ("high"); raise ValueError naming the field otherwise."""
    if isinstance(value, str):
        if value.strip().isdecimal():  # not isdigit(): '²' is a digit int() refuses
            value = int(value)
        else:
            try:
                return PRIORITY_NAMES[value.strip().lower()]
            except KeyError:
                names = ", ".join(PRIORITY_NAMES)
                raise ValueError(
                    f"unknown priority {value!r}: use 0-4 or one of {names} - at `$.{field}`"
                ) from None
    try:
        return Priority(value)
    except ValueError:
        raise ValueError(
            f"priority {value} is out of range: use 0 (critical) to 4 (background) - at `$.{field}`"
        ) from None


Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]
TypeName = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_\-]+$")]


class Envelope(msgspec.Struct, omit_defaults=True):
    """The body of `corral.send.<module>`: a message type and its payload.

    `payload` stays raw bytes so the orchestrator forwards it without re-encoding.
    """

    type: TypeName
    # UNSET rather than an empty Raw default: the JSON Schema export cannot encode a Raw default.
    payload: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    timestamp: float | None = None
    id: str | None = None
    priority: int | str = Priority.NORMAL
    timeout: Seconds | None = None
    # Extra attempts after a timeout or module error; only for types the module declares idempotent.
    retries: Annotated[int, msgspec.Meta(ge=0, le=5)] = 0

    @property
    def payload_bytes(self) -> bytes:
        """The payload exactly as the caller encoded it (empty when there was none)."""
        return b"" if self.payload is msgspec.UNSET else bytes(self.payload)

    def __post_init__(self) -> None:
        self.priority = parse_priority(self.priority)
        if self.timestamp is None:
            self.timestamp = time.time()


class ErrorPayload(msgspec.Struct):
    code: ErrorCode
    errors: list[str]


class Outcome(msgspec.Struct, array_like=True):
    """How one directly answered call ended, as the module reports it to the orchestrator."""

    call: str  # the reply subject of the forwarded request: the orchestrator's key for the call
    code: str  # "ok", or the ErrorCode value of the reply the module sent


class OutcomeBatch(msgspec.Struct):
    """Outcome reports a module instance sends one orchestrator in one message."""

    outcomes: list[Outcome]


class Response(msgspec.Struct):
    """Every reply: `<type>:success` with the result, or `<type>:error` with an ErrorPayload."""

    type: str
    payload: Any
    success: bool
    timestamp: float


class Heartbeat(msgspec.Struct, omit_defaults=True):
    """Published on `<prefix>.hb.<service>.<instance>` by every service and module instance."""

    service: str
    instance: str
    role: str  # "service" or "module"
    version: str
    pid: int
    host: str
    started: float
    timestamp: float
    cpu_percent: float
    rss_bytes: int
    threads: int
    open_fds: int
    in_flight: int
    handled: int
    ready: bool
    metrics_url: str = ""
    service_id: str = ""  # the NATS Services API id: `$SRV.PING.<service>.<service_id>` reaches it
    modctl: bool = False  # answers the SDK control verbs (`<prefix>.modctl.<module>.<verb>`)
    # Seconds between this instance's beats (its CORRAL_HEARTBEAT_INTERVAL), so a watcher can
    # tell a slow beat from a missing one; 0: not said (a process older than this field).
    interval: float = 0.0


_Token = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_\-]+$")]


class ModuleRegistration(msgspec.Struct, forbid_unknown_fields=True):
    """`<prefix>.orchestrator.register`: an SDK module instance waiting to be told it may serve."""

    module: _Token
    instance: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    version: str = ""
    depends_on: list[_Token] = []
    types: list[str] = []
    # Seconds between the instance's heartbeats, so the orchestrator knows when they are missing.
    heartbeat_interval: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 0.0


class ModuleStatus(msgspec.Struct):
    """The reply of `<prefix>.modctl.<module>.status`, one per instance."""

    module: str
    instance: str
    pid: int
    started: float
    ready: bool
    degraded: bool
    throttle: int | None
    config_version: int
    in_flight: int
    degraded_reason: str = ""


class CheckResult(msgspec.Struct):
    ok: bool
    error: str = ""


class ModuleHealth(msgspec.Struct):
    """The reply of `<prefix>.modctl.<module>.health`: the module's own checks, one instance."""

    module: str
    instance: str
    checks: dict[str, CheckResult]
    throttle: int | None = None


def success_response(type_: str, payload: Any) -> Response:
    return Response(type=f"{type_}:success", payload=payload, success=True, timestamp=time.time())


def error_response(type_: str, code: ErrorCode, *errors: str) -> Response:
    return Response(
        type=f"{type_}:error",
        payload=ErrorPayload(code=code, errors=list(errors)),
        success=False,
        timestamp=time.time(),
    )


class Codec:
    """One wire encoding; encoders and decoders are built once and reused."""

    def __init__(self, name: str, content_type: str | None) -> None:
        self.name = name
        self.content_type = content_type
        self._decoders: dict[Any, Any] = {}
        if content_type == MSGPACK_CONTENT_TYPE:
            self._encoder: msgspec.json.Encoder | msgspec.msgpack.Encoder = msgspec.msgpack.Encoder()
        else:
            self._encoder = msgspec.json.Encoder()

    @property
    def headers(self) -> dict[str, str] | None:
        return {CONTENT_TYPE_HEADER: self.content_type} if self.content_type else None

    def encode(self, value: Any) -> bytes:
        return self._encoder.encode(value)

    def decoder(self, type_: Any) -> msgspec.json.Decoder[Any] | msgspec.msgpack.Decoder[Any]:
        decoder = self._decoders.get(type_)
        if decoder is None:
            if self.content_type == MSGPACK_CONTENT_TYPE:
                decoder = msgspec.msgpack.Decoder(type_)
            else:
                decoder = msgspec.json.Decoder(type_)
            self._decoders[type_] = decoder
        return decoder

    def decode(self, data: bytes, type_: Any = Any) -> Any:
        """Decode `data` as `type_`; raises msgspec.DecodeError (ValidationError names the path)."""
        return self.decoder(type_).decode(data)


JSON: Final = Codec("json", None)
MSGPACK: Final = Codec("msgpack", MSGPACK_CONTENT_TYPE)


def codec_for(headers: Mapping[str, str] | None) -> Codec:
    """The codec a request asked for: msgpack when its Content-Type says so, JSON otherwise."""
    if headers and headers.get(CONTENT_TYPE_HEADER) == MSGPACK_CONTENT_TYPE:
        return MSGPACK
    return JSON


def describe_decode_error(error: msgspec.DecodeError, codec: Codec, what: str = "request body") -> str:
    """A user-facing sentence for a decode failure, keeping msgspec's field path."""
    if isinstance(error, msgspec.ValidationError):
        return f"invalid {what}: {error}"
    return f"malformed {what}: not valid {codec.name.upper()}: {error}"
