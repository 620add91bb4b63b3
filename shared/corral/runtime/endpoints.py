"""Turning NATS requests into handler calls and handler results (or failures) into Responses.

This is the one place where an exception becomes an error reply: a CorralError keeps its
code, anything else is a MODULE_ERROR with the exception's message, and a malformed body
is a VALIDATION error quoting msgspec's message with the field path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec
from nats.aio.msg import Msg

from corral.errors import CorralError
from corral.protocol import (
    SERVICE_ERROR_CODES,
    Codec,
    ErrorCode,
    codec_for,
    describe_decode_error,
    error_response,
    success_response,
)

__all__ = ["Endpoint", "Reply", "RequestContext", "error_reply", "typed_handler"]

log = logging.getLogger("corral.runtime")

SERVICE_ERROR_HEADER = "Nats-Service-Error"
SERVICE_ERROR_CODE_HEADER = "Nats-Service-Error-Code"
# The corral ErrorCode of a failed reply, so a hop in between can tell failures apart without decoding.
ERROR_CODE_HEADER = "Corral-Error-Code"


class Reply(NamedTuple):
    data: bytes
    headers: dict[str, str] | None
    success: bool
    code: str = "ok"  # the ErrorCode value on failure; a metrics label
    answered: bool = False  # someone else already answered the caller (a module's direct reply)


RawHandler = Callable[[Msg], Awaitable[Reply]]


@dataclass(slots=True)
class RequestContext:
    """What a typed handler may want to know about the request besides its payload."""

    msg: Msg
    codec: Codec

    @property
    def subject(self) -> str:
        return self.msg.subject

    @property
    def headers(self) -> dict[str, str]:
        return self.msg.headers or {}


def error_reply(codec: Codec, type_: str, code: ErrorCode, *errors: str) -> Reply:
    headers = dict(codec.headers or {})
    headers[SERVICE_ERROR_HEADER] = errors[0] if errors else code.value
    headers[SERVICE_ERROR_CODE_HEADER] = SERVICE_ERROR_CODES[code]
    headers[ERROR_CODE_HEADER] = code.value
    return Reply(codec.encode(error_response(type_, code, *errors)), headers, False, code.value)


def exception_reply(codec: Codec, type_: str, exc: BaseException) -> Reply:
    if isinstance(exc, CorralError):
        return error_reply(codec, type_, exc.code, *exc.errors)
    log.error("handler for %s raised %s", type_, type(exc).__name__, exc_info=exc)
    return error_reply(codec, type_, ErrorCode.MODULE_ERROR, f"{type(exc).__name__}: {exc}")


def typed_handler(
    type_: str,
    payload_type: Any,
    handler: Callable[[Any, RequestContext], Awaitable[Any]],
    max_request_bytes: int,
) -> RawHandler:
    """Wrap `handler(payload, ctx)` into a raw handler: decode, call, encode, never raise."""

    async def handle(msg: Msg) -> Reply:
        codec = codec_for(msg.headers)
        if len(msg.data) > max_request_bytes:
            return error_reply(
                codec,
                type_,
                ErrorCode.VALIDATION,
                f"request body is {len(msg.data)} bytes, over the limit of {max_request_bytes} bytes "
                f"for {msg.subject} (CORRAL_MAX_REQUEST_BYTES)",
            )
        try:
            if payload_type is None:
                payload = None
            else:
                payload = codec.decode(msg.data or codec.encode({}), payload_type)
        except msgspec.DecodeError as exc:
            return error_reply(codec, type_, ErrorCode.VALIDATION, describe_decode_error(exc, codec))
        try:
            result = await handler(payload, RequestContext(msg, codec))
        except Exception as exc:
            return exception_reply(codec, type_, exc)
        return Reply(codec.encode(success_response(type_, result)), codec.headers, True)

    return handle


@dataclass(slots=True)
class EndpointStats:
    requests: int = 0
    errors: int = 0
    processing_ns: int = 0
    in_flight: int = 0
    last_error: str | None = None


@dataclass(slots=True)
class Endpoint:
    """One request subject of a service; `response_type` names replies when the handler crashes."""

    name: str
    subject: str
    handler: RawHandler
    response_type: str
    queue_group: str | None = None
    metadata: dict[str, str] | None = None  # published in the Services API INFO of the endpoint
    direct_reply: bool = False  # honours Corral-Direct-Reply (see corral.runtime.direct)
    # Called in nats-py's read loop, before a task is made (so it must not block): True when it
    # took the request and answers and accounts for it itself (Service.account); False to serve
    # it as usual.
    accept: Callable[[Msg], bool] | None = None
    stats: EndpointStats = field(default_factory=EndpointStats)

    async def serve(self, msg: Msg) -> tuple[Reply, int]:
        """Run the handler; whatever happens, return a Reply and the nanoseconds it took.
        Records statistics."""
        started = time.perf_counter_ns()
        stats = self.stats
        stats.in_flight += 1
        try:
            reply = await self.handler(msg)
        except Exception as exc:
            reply = exception_reply(codec_for(msg.headers), self.response_type, exc)
        finally:
            stats.in_flight -= 1
        elapsed = time.perf_counter_ns() - started
        self.record(reply, elapsed)
        return reply, elapsed

    def record(self, reply: Reply, elapsed_ns: int) -> None:
        stats = self.stats
        stats.requests += 1
        stats.processing_ns += elapsed_ns
        if not reply.success:
            stats.errors += 1
            stats.last_error = reply.code
