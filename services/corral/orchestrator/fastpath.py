"""The call path's fast lane: a call to a direct-reply module, without a task.

Most calls are plain: a module whose instances answer directly (corral.runtime.direct), a
closed breaker, no retries, nobody subscribed to the type, no per-request span or DEBUG line
wanted (those come from the task path's Service._serve). Such a call with a free bulkhead
slot is admitted and forwarded as nats-py reads the request (corral.runtime.inline), and
settled by a callback when the module's outcome report (or a timeout, or a stray reply)
arrives: no task, no coroutine frames kept alive across the call, none of the per-call
objects that `asyncio` needs for an awaited request. A call that must queue waits in the
bulkhead's priority queue in a small task of its own.

It is the same call as the router's: the same admission (`CallRouter.admit`), the same
breaker permit and bulkhead slot, the same timeout, the same judging, statistics and error
replies. Anything else, and anything unexpected before the forward is published, declines
(`accept()` returns False) and the router's task path takes the request from the start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.aio.msg import Msg

from corral.errors import CorralError
from corral.orchestrator.breaker import Permit
from corral.orchestrator.mux import Answer, OutcomeLostError, Reported
from corral.protocol import DIRECT_REPLY_GRACE, DIRECT_REPLY_HEADER, ErrorCode
from corral.runtime import Reply
from corral.runtime.endpoints import exception_reply
from corral.runtime.inline import publish_nowait

if TYPE_CHECKING:
    from corral.orchestrator.router import Admission, CallRouter, ModuleRoute

__all__ = ["FastPath"]

log = logging.getLogger("corral.orchestrator.fastpath")

Settled = Callable[[Reply, float], None]  # (how the call ended, seconds): endpoint accounting


class _Call:
    """One call in flight on the fast path."""

    __slots__ = ("codec", "fast", "module", "permit", "reply_to", "route", "started", "timeout", "type")

    def __init__(
        self,
        fast: FastPath,
        admission: Admission,
        route: ModuleRoute,
        permit: Permit,
        reply_to: str,
    ) -> None:
        self.fast = fast
        self.module = admission.module
        self.type = admission.envelope.type
        self.codec = admission.codec
        self.timeout = admission.timeout
        self.route = route
        self.permit = permit
        self.reply_to = reply_to
        self.started = time.perf_counter()

    def settle(self, answer: Answer | Exception) -> None:
        """The mux's callback: exactly once per forwarded call."""
        router = self.fast.router
        if isinstance(answer, Reported):
            self.finish(Reply(b"", None, answer.code == "ok", answer.code, answered=True))
        elif isinstance(answer, Msg):  # an instance that ignored Corral-Direct-Reply answered us
            self.finish(router.reply_from(answer))
        elif isinstance(answer, nats.errors.NoRespondersError):
            self.fast.spawn(self._no_responders())
        elif isinstance(answer, OutcomeLostError):
            self.finish(router.outcome_unknown())
        elif isinstance(answer, nats.errors.TimeoutError):
            self.finish(router.timeout_reply(self.codec, self.module, self.type, self.timeout, True))
        else:  # the mux stopped (ConnectionClosedError): the service is going away
            self.finish(
                router.error(self.codec, self.type, ErrorCode.UNAVAILABLE, "the orchestrator is stopping")
            )

    async def _no_responders(self) -> None:
        router = self.fast.router
        try:
            reply = await router.no_responders(self.module, self.type, self.codec)
        except Exception as exc:  # a failed discovery: still one answer, still one outcome
            reply = router.error(self.codec, self.type, ErrorCode.UNAVAILABLE, f"no responders ({exc!r})")
        self.finish(reply)

    def finish(self, reply: Reply, *, holds_slot: bool = True, verdict: bool = True) -> None:
        """Settle the call: breaker (unless no `verdict`), slot, statistics, then the answer."""
        fast, router = self.fast, self.fast.router
        elapsed = time.perf_counter() - self.started
        try:
            if verdict:
                router.judge(self.permit, reply, elapsed)
        finally:
            self.permit.release()  # no-op once judged
            if holds_slot:
                self.route.bulkhead.release()
                fast._untaken()
        router.record(self.module, self.route, reply, elapsed)
        fast.settled(reply, elapsed)
        if not reply.answered:
            fast.respond(self.reply_to, reply)


class FastPath:
    def __init__(self, router: CallRouter, settled: Settled, bypass: Callable[[], bool]) -> None:
        self.router = router
        self.settled = settled
        self.bypass = bypass  # True: decline everything (per-request spans or DEBUG lines wanted)
        self.pending = 0  # calls forwarded and not yet settled
        self.idle = asyncio.Event()
        self.idle.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.taken = 0

    def accept(self, msg: Msg) -> bool:
        """Take the request if it qualifies (see the module docstring); False: use the task path."""
        router = self.router
        if not msg.reply or router.watched_types or self.bypass():
            return False
        try:
            admission = router.admit(msg)
        except Exception:
            return False
        if isinstance(admission, Reply) or admission.envelope.retries:
            return False  # an error to explain, or retries: the task path does both
        if not router.catalog.answers_directly(admission.module):
            return False
        route = router.route(admission.module)  # a module the catalog saw running
        try:
            permit = route.breaker.acquire()
        except Exception:
            return False  # CIRCUIT_OPEN: the task path answers it
        call = _Call(self, admission, route, permit, msg.reply)
        if not route.bulkhead.try_acquire():
            if route.bulkhead.queued >= route.bulkhead.config.max_queue:
                permit.release()
                return False  # OVERLOADED: the task path answers it
            self._taken()
            self.spawn(self._queued(call, admission, msg))  # waits for a slot by priority
            return True
        try:
            self._forward(call, admission, msg, admission.timeout)
        except Exception:  # not published: undo, and let the task path try
            permit.release()
            route.bulkhead.release()
            return False
        self._taken()
        return True

    def _taken(self) -> None:
        self.router.routed += 1
        self.taken += 1
        self.pending += 1
        self.idle.clear()

    def _untaken(self) -> None:
        self.pending -= 1
        if not self.pending:
            self.idle.set()

    def _forward(self, call: _Call, admission: Admission, msg: Msg, seconds: float) -> None:
        router, envelope = self.router, admission.envelope
        headers = router.forwarded_headers(msg) or {}
        headers[DIRECT_REPLY_HEADER] = f"{msg.reply} {seconds:.6g}"
        router.mux.forward(
            router.subjects.module(admission.module, envelope.type),
            envelope.payload_bytes,
            seconds + DIRECT_REPLY_GRACE,
            headers,
            call.settle,
            direct=True,
        )

    async def _queued(self, call: _Call, admission: Admission, msg: Msg) -> None:
        """A call that found the bulkhead full: it waits in its priority queue, as on the task
        path (waiting counts against its timeout), then goes out like any other fast call."""
        loop = asyncio.get_running_loop()
        waited_from = loop.time()
        bulkhead = call.route.bulkhead
        try:
            await bulkhead.acquire(int(admission.envelope.priority), admission.timeout)
        except CorralError as exc:  # no slot in time: our queue, not the module's fault
            call.permit.release()
            self._untaken()
            call.finish(exception_reply(call.codec, call.type, exc), holds_slot=False, verdict=False)
            return
        except BaseException:
            call.permit.release()
            self._untaken()
            raise
        remaining = max(0.001, admission.timeout - (loop.time() - waited_from))
        try:
            self._forward(call, admission, msg, remaining)
        except Exception as exc:  # not published (closing): as on the task path, no verdict
            call.finish(exception_reply(call.codec, call.type, exc), verdict=False)

    def respond(self, reply_to: str, reply: Reply) -> None:
        try:
            publish_nowait(self.router.nc, reply_to, reply.data, headers=reply.headers)
        except Exception as exc:  # the connection may be closing; the caller will time out
            log.warning("could not send reply to %s: %r", reply_to, exc)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float) -> None:
        """Wait for calls in flight to settle and their replies to go out (at most `timeout`)."""
        try:
            async with asyncio.timeout(timeout):
                await self.idle.wait()
                while self._tasks:
                    await asyncio.wait(list(self._tasks))
        except TimeoutError:
            log.warning("%d fast-path calls still in flight after %gs", self.pending, timeout)
