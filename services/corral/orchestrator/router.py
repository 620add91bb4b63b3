"""The mediated call path: `<prefix>.send.<module>` -> `<prefix>.mod.<module>.<type>`.

The payload is forwarded as the raw bytes the caller sent (never decoded and re-encoded),
and the module's reply bytes are returned as they came.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from corral.discovery import discover, module_types
from corral.protocol import (
    TIMEOUT_HEADER,
    TRACEPARENT_HEADER,
    Codec,
    Envelope,
    ErrorCode,
    codec_for,
    describe_decode_error,
)
from corral.runtime import Reply, error_reply
from corral.runtime.endpoints import ERROR_CODE_HEADER
from corral.subjects import Subjects

__all__ = ["CallRouter", "ModuleCallStats"]

_FORWARDED_HEADERS = ("Content-Type", TRACEPARENT_HEADER, "tracestate")


@dataclass(slots=True)
class ModuleCallStats:
    calls: int = 0
    successes: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    total_seconds: float = 0.0


class CallRouter:
    def __init__(
        self, nc: Client, subjects: Subjects, *, default_timeout: float, max_request_bytes: int
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.default_timeout = default_timeout
        self.max_request_bytes = max_request_bytes
        self.stats: dict[str, ModuleCallStats] = {}
        self._send_prefix = subjects.send("")  # "corral.send."

    async def handle(self, msg: Msg) -> Reply:
        codec = codec_for(msg.headers)
        module = msg.subject[len(self._send_prefix) :]
        if not module or "." in module:
            return error_reply(
                codec,
                "send",
                ErrorCode.VALIDATION,
                f"subject {msg.subject!r} is not {self._send_prefix}<module>: name exactly one module",
            )
        if len(msg.data) > self.max_request_bytes:
            return error_reply(
                codec,
                "send",
                ErrorCode.VALIDATION,
                f"request body is {len(msg.data)} bytes, over the limit of {self.max_request_bytes} bytes "
                f"for {msg.subject} (CORRAL_MAX_REQUEST_BYTES)",
            )
        try:
            envelope = codec.decode(msg.data, Envelope)
        except msgspec.DecodeError as exc:
            return error_reply(
                codec, "send", ErrorCode.VALIDATION, describe_decode_error(exc, codec, "envelope")
            )
        try:
            timeout = self._timeout(envelope, msg)
        except ValueError as exc:
            return error_reply(codec, envelope.type, ErrorCode.VALIDATION, str(exc))
        return await self._forward(module, envelope, msg, codec, timeout)

    def _timeout(self, envelope: Envelope, msg: Msg) -> float:
        """The smallest of the module default, the Envelope's `timeout` and the Corral-Timeout header."""
        candidates = [self.default_timeout]
        if envelope.timeout is not None:
            candidates.append(envelope.timeout)
        header = (msg.headers or {}).get(TIMEOUT_HEADER)
        if header is not None:
            try:
                value = float(header)
            except ValueError:
                raise ValueError(
                    f"header {TIMEOUT_HEADER} must be a number of seconds, got {header!r}"
                ) from None
            if not math.isfinite(value) or value <= 0:
                raise ValueError(
                    f"header {TIMEOUT_HEADER} must be a positive number of seconds, got {header!r}"
                )
            candidates.append(value)
        return min(candidates)

    async def _forward(
        self, module: str, envelope: Envelope, msg: Msg, codec: Codec, timeout: float
    ) -> Reply:
        stats = self.stats.get(module)
        if stats is None:
            stats = self.stats[module] = ModuleCallStats()
        headers = {k: v for k in _FORWARDED_HEADERS if msg.headers and (v := msg.headers.get(k))} or None
        started = time.perf_counter()
        stats.calls += 1
        try:
            response = await self.nc.request(
                self.subjects.module(module, envelope.type),
                bytes(envelope.payload),
                timeout=timeout,
                headers=headers,
            )
        except nats.errors.NoRespondersError:
            reply = await self._not_found(module, envelope.type, codec)
        except nats.errors.TimeoutError:
            reply = error_reply(
                codec,
                envelope.type,
                ErrorCode.TIMEOUT,
                f"module {module!r} did not answer {envelope.type!r} within {timeout:g}s",
            )
        else:
            code = response.headers.get(ERROR_CODE_HEADER, "ok") if response.headers else "ok"
            reply = Reply(response.data, response.headers, code == "ok", code)
        stats.total_seconds += time.perf_counter() - started
        if reply.success:
            stats.successes += 1
        else:
            stats.errors[reply.code] = stats.errors.get(reply.code, 0) + 1
        return reply

    async def _not_found(self, module: str, type_: str, codec: Codec) -> Reply:
        modules = module_types(await discover(self.nc, self.subjects.prefix), self.subjects.prefix)
        if module in modules:
            handled = ", ".join(sorted(modules[module])) or "nothing"
            message = f"module {module!r} has no message type {type_!r}; it handles: {handled}"
        elif modules:
            message = f"no module named {module!r} is running; running modules: {', '.join(sorted(modules))}"
        else:
            message = f"no module named {module!r} is running, and no modules are running at all"
        return error_reply(codec, type_, ErrorCode.NOT_FOUND, message)
