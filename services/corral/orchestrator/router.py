"""The mediated call path: `<prefix>.send.<module>` -> `<prefix>.mod.<module>.<type>`.

Per call: validate the Envelope, take a breaker permit (CIRCUIT_OPEN at once when open),
take a bulkhead slot (queued by priority; OVERLOADED when the queue is full), forward the
payload as the raw bytes the caller sent (never decoded and re-encoded) with the smallest of
the module's, the Envelope's and the header's timeout, retry idempotent types on request,
and return the module's reply bytes as they came.

A module whose instances all answer directly (SDK modules; corral.runtime.direct) gets the
call with the caller's inbox in `Corral-Direct-Reply`: it answers the caller itself and reports
the outcome, which settles the breaker permit, the bulkhead slot and the statistics here as
a reply would. Calls with retries, and modules that do not advertise it (the WASM adapter,
`external` modules), go through the orchestrator both ways.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from corral.errors import CircuitOpenError, CorralError
from corral.orchestrator.breaker import CircuitBreaker, Permit
from corral.orchestrator.breakers import BreakerBoard
from corral.orchestrator.bulkhead import Bulkhead
from corral.orchestrator.catalog import ModuleCatalog
from corral.orchestrator.mux import OutcomeLostError, Reported, RequestMux
from corral.orchestrator.stats import ModuleStats
from corral.policy import CallPolicy
from corral.protocol import (
    DIRECT_REPLY_GRACE,
    DIRECT_REPLY_HEADER,
    TIMEOUT_HEADER,
    TRACEPARENT_HEADER,
    Codec,
    Envelope,
    ErrorCode,
    codec_for,
    describe_decode_error,
)
from corral.runtime import Reply, error_reply
from corral.runtime.deadlines import Deadlines
from corral.runtime.endpoints import ERROR_CODE_HEADER, exception_reply
from corral.subjects import Subjects

__all__ = ["Admission", "CallRouter", "ModuleRoute"]

_FORWARDED_HEADERS = ("Content-Type", TRACEPARENT_HEADER, "tracestate")
# Outcomes that say the module is unwell (they count for its breaker and may be retried).
_MODULE_FAULTS = frozenset(
    {ErrorCode.TIMEOUT.value, ErrorCode.MODULE_ERROR.value, ErrorCode.UNAVAILABLE.value}
)
_RETRY_BASE_DELAY = 0.05
# A directly answered call whose report was lost in a reconnect: it may well have succeeded.
OUTCOME_UNKNOWN = "UNKNOWN"


@dataclass(slots=True)
class Admission:
    """A request that passed validation: which module, how to encode, what, and how long."""

    module: str
    codec: Codec
    envelope: Envelope
    timeout: float


@dataclass(slots=True)
class ModuleRoute:
    """Everything the call path keeps per module."""

    policy: CallPolicy
    breaker: CircuitBreaker
    bulkhead: Bulkhead
    stats: ModuleStats


class CallRouter:
    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        *,
        policy_for: dict[str, CallPolicy],
        default_policy: CallPolicy,
        board: BreakerBoard,
        catalog: ModuleCatalog,
        max_request_bytes: int,
        mux: RequestMux,
    ) -> None:
        self.nc = nc
        self.mux = mux
        self.subjects = subjects
        self.policy_for = policy_for
        self.default_policy = default_policy
        self.board = board
        self.catalog = catalog
        self.max_request_bytes = max_request_bytes
        self.routes: dict[str, ModuleRoute] = {}
        self.watched_types: set[str] = set()  # types someone subscribed to (see subscriptions.py)
        self.routed = 0
        self._send_prefix = subjects.send("")  # "corral.send."
        self._deadlines = Deadlines()  # every bulkhead's queue timeouts

    def route(self, module: str) -> ModuleRoute:
        route = self.routes.get(module)
        if route is None:
            policy = self.policy_for.get(module, self.default_policy)
            route = ModuleRoute(
                policy,
                self.board.get(module),
                Bulkhead(module, policy.bulkhead, self._deadlines),
                ModuleStats(),
            )
            self.routes[module] = route
        return route

    # --- the request -------------------------------------------------------------------------
    def admit(self, msg: Msg) -> Reply | Admission:
        """Check a request before any call state is touched: a VALIDATION reply, or what to call."""
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
        route = self.routes.get(module)
        policy = route.policy if route is not None else self.policy_for.get(module, self.default_policy)
        try:
            timeout = self._timeout(envelope, msg, policy)
        except ValueError as exc:
            return error_reply(codec, envelope.type, ErrorCode.VALIDATION, str(exc))
        return Admission(module, codec, envelope, timeout)

    async def handle(self, msg: Msg) -> Reply:
        """The task path: every request the fast path (fastpath.py) declined."""
        admission = self.admit(msg)
        if isinstance(admission, Reply):
            return admission
        module, codec, envelope, timeout = (
            admission.module,
            admission.codec,
            admission.envelope,
            admission.timeout,
        )
        route = self.route(module)
        self.routed += 1
        if self.watched_types and envelope.type in self.watched_types:
            await self.nc.publish(
                self.subjects.message_event(envelope.type), msg.data, headers={"Module": module}
            )
        started = time.perf_counter()
        reply = await self._guarded(module, route, envelope, msg, codec, timeout)
        self.record(module, route, reply, time.perf_counter() - started)
        return reply

    def record(self, module: str, route: ModuleRoute, reply: Reply, seconds: float) -> None:
        """The call's statistics, once per call."""
        route.stats.record(reply.code, seconds)
        if reply.code == ErrorCode.NOT_FOUND.value and route.stats.calls == 1:
            self._forget(module)  # do not keep state for names nobody serves

    def _timeout(self, envelope: Envelope, msg: Msg, policy: CallPolicy) -> float:
        """The smallest of the module's timeout, the Envelope's `timeout` and the Corral-Timeout header."""
        candidates = [policy.timeout]
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

    async def _guarded(
        self, module: str, route: ModuleRoute, envelope: Envelope, msg: Msg, codec: Codec, timeout: float
    ) -> Reply:
        """Breaker, then bulkhead, then the call (with retries); errors of our own become replies."""
        try:
            permit = route.breaker.acquire()
        except CircuitOpenError as exc:
            return exception_reply(codec, envelope.type, exc)
        deadline = asyncio.get_running_loop().time() + timeout
        bulkhead = route.bulkhead
        try:
            await bulkhead.acquire(int(envelope.priority), timeout)
            try:
                reply = await self._call_with_retries(module, envelope, msg, codec, deadline, timeout)
            finally:
                bulkhead.release()
            self.judge(permit, reply, asyncio.get_running_loop().time() - (deadline - timeout))
            return reply
        except CorralError as exc:  # OVERLOADED or no slot in time: our queue, not the module's fault
            return exception_reply(codec, envelope.type, exc)
        finally:
            permit.release()  # no-op once judged; frees a half-open probe slot on any other exit

    def judge(self, permit: Permit, reply: Reply, seconds: float) -> None:
        """Tell the breaker how the call went (`seconds`: how long it took)."""
        if reply.success:
            permit.success(seconds)
        elif reply.code in _MODULE_FAULTS:
            permit.failure(reply.code)
        # VALIDATION, NOT_FOUND, ...: the caller's mistake says nothing about the module.

    async def _call_with_retries(
        self, module: str, envelope: Envelope, msg: Msg, codec: Codec, deadline: float, timeout: float
    ) -> Reply:
        loop = asyncio.get_running_loop()
        if envelope.retries and not await self.catalog.is_idempotent(module, envelope.type):
            return error_reply(
                codec,
                envelope.type,
                ErrorCode.VALIDATION,
                f"retries requested, but module {module!r} does not declare {envelope.type!r} idempotent; "
                "send without `retries`",
            )
        attempt = 0
        while True:
            remaining = max(0.001, deadline - loop.time())
            reply = await self._call(module, envelope, msg, codec, remaining, timeout)
            delay = _RETRY_BASE_DELAY * 2**attempt * (0.5 + random.random())
            if reply.success or reply.code not in _MODULE_FAULTS or attempt >= envelope.retries:
                return reply
            if loop.time() + delay >= deadline:
                return reply
            attempt += 1
            await asyncio.sleep(delay)

    async def _call(
        self, module: str, envelope: Envelope, msg: Msg, codec: Codec, remaining: float, timeout: float
    ) -> Reply:
        """One request to the module, waiting `remaining` seconds of the call's `timeout`."""
        headers = self.forwarded_headers(msg)
        direct = bool(msg.reply) and not envelope.retries and self.catalog.answers_directly(module)
        wait = remaining
        if direct:
            headers = headers or {}
            headers[DIRECT_REPLY_HEADER] = f"{msg.reply} {remaining:.6g}"
            wait = remaining + DIRECT_REPLY_GRACE  # the module answers TIMEOUT itself at `remaining`
        try:
            answer = await self.mux.request(
                self.subjects.module(module, envelope.type),
                envelope.payload_bytes,
                wait,
                headers,
                direct=direct,
            )
        except nats.errors.NoRespondersError:
            return await self.no_responders(module, envelope.type, codec)
        except OutcomeLostError:
            return self.outcome_unknown()
        except nats.errors.TimeoutError:
            return self.timeout_reply(codec, module, envelope.type, timeout, direct)
        if isinstance(answer, Reported):
            return Reply(b"", None, answer.code == "ok", answer.code, answered=True)
        return self.reply_from(answer)

    # --- replies (shared with the fast path) -------------------------------------------------
    @staticmethod
    def forwarded_headers(msg: Msg) -> dict[str, str] | None:
        if not msg.headers:
            return None
        return {k: v for k in _FORWARDED_HEADERS if (v := msg.headers.get(k))} or None

    @staticmethod
    def reply_from(response: Msg) -> Reply:
        """The module's reply, passed on as it came."""
        code = response.headers.get(ERROR_CODE_HEADER, "ok") if response.headers else "ok"
        return Reply(response.data, response.headers, code == "ok", code)

    @staticmethod
    def outcome_unknown() -> Reply:
        # No verdict for the breaker (the permit is released), no second answer to the caller.
        return Reply(b"", None, False, OUTCOME_UNKNOWN, answered=True)

    @staticmethod
    def timeout_reply(codec: Codec, module: str, type_: str, timeout: float, direct: bool) -> Reply:
        late = f", nor reported an outcome {DIRECT_REPLY_GRACE:g}s after" if direct else ""
        return error_reply(
            codec,
            type_,
            ErrorCode.TIMEOUT,
            f"module {module!r} did not answer {type_!r} within {timeout:g}s{late}",
        )

    @staticmethod
    def error(codec: Codec, type_: str, code: ErrorCode, message: str) -> Reply:
        return error_reply(codec, type_, code, message)

    async def no_responders(self, module: str, type_: str, codec: Codec) -> Reply:
        """Nobody answered: say whether the module is down, unknown, or lacks the type."""
        # A discovery at most a second old: concurrent failures share one discovery (0.3 s of
        # waiting for answers) instead of queueing one each behind the catalog's lock.
        modules = await self.catalog.refresh(max_age=1.0)
        if module in modules:
            handled = ", ".join(sorted(modules[module])) or "nothing"
            return error_reply(
                codec,
                type_,
                ErrorCode.NOT_FOUND,
                f"module {module!r} has no message type {type_!r}; it handles: {handled}",
            )
        if module in self.policy_for or self.catalog.was_seen(module):
            return error_reply(
                codec, type_, ErrorCode.UNAVAILABLE, f"module {module!r} has no running instance"
            )
        running = ", ".join(sorted(modules))
        message = (
            f"no module named {module!r} is running; running modules: {running}"
            if modules
            else f"no module named {module!r} is running, and no modules are running at all"
        )
        return error_reply(codec, type_, ErrorCode.NOT_FOUND, message)

    def _forget(self, module: str) -> None:
        self.routes.pop(module, None)
        self.board.forget(module)
