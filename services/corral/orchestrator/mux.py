"""The orchestrator's own request-reply: one wildcard inbox, a dict of waiting calls.

nats-py's `Client.request` pays per call for a random token (an `os.urandom` system call), a
NUID, a done-callback, and `asyncio.wait_for` (a second future and a wrapper). On the call
path that is a large share of the orchestrator's CPU, so the router sends its forwarded
requests through this mux instead: tokens are a counter under a per-mux NUID inbox, and a
timeout is a deadline in a shared `Deadlines` (not a loop timer per call). `request()`
awaits the answer; `forward()` hands it to a callback, so the fast path needs no task.

A forward to a module that answers directly (corral.runtime.direct) is answered here by the
module's outcome report, which arrives batched on the mux's own `outcomes_subject`; a
module that ignores the direct-reply headers answers on the token as usual.

Guarantees, the same as nats-py's request:

* one answer per request: the first reply settles the call and removes it, so a reply
  that comes after the timeout (or a second reply) finds nothing and is dropped;
* no responders: the server's `503` status message becomes `NoRespondersError`;
* reconnects: nats-py re-subscribes the inbox after a reconnect; a reply lost in between
  makes its request time out. For a directly answered call that is `OutcomeLostError`
  instead: the module may have answered the caller, so the outcome is unknown.
* slow consumers: the inbox queue is unbounded in nats-py, so nothing is dropped on this
  side; it holds at most the replies to calls in flight, which the bulkheads bound. (A
  server-side slow consumer disconnects the client, and that is the reconnect case.)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from functools import partial
from typing import Final, NamedTuple

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from corral.component import Component
from corral.protocol import OutcomeBatch
from corral.runtime import inline
from corral.runtime.deadlines import Deadlines, Handle
from corral.subjects import OUTCOMES_TOKEN

__all__ = ["OutcomeLostError", "Reported", "RequestMux"]

log = logging.getLogger("corral.orchestrator.mux")

_STATUS_HEADER: Final = "Status"
_NO_RESPONDERS: Final = "503"


class Reported(NamedTuple):
    """The module answered the caller itself; this is how the call ended."""

    code: str  # "ok" or an ErrorCode value


class OutcomeLostError(nats.errors.TimeoutError):
    """No outcome report for a directly answered call, and the connection was re-established
    meanwhile: the report may have been lost, and the module may well have answered."""


Answer = Msg | Reported  # a reply on the token, or the outcome a direct-reply module reported
Settle = Callable[[Answer | Exception], None]


class _Waiting:
    """One forwarded request, until its answer, its timeout, or its cancellation."""

    __slots__ = ("deadline", "direct", "reconnects", "settle")

    def __init__(self, settle: Settle, direct: bool, reconnects: int) -> None:
        self.settle = settle
        self.direct = direct
        self.reconnects = reconnects
        self.deadline: Handle | None = None


class RequestMux(Component):
    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self._waiting: dict[str, _Waiting] = {}
        self._tokens = itertools.count(1)
        self._inbox = ""  # "_INBOX.<nuid>."; each request adds its token
        self._sub: Subscription | None = None
        self._deadlines = Deadlines()
        self._decode_outcomes = msgspec.json.Decoder(OutcomeBatch).decode
        self.reported = 0  # outcome reports that settled a call
        self.stale_reports = 0  # reports for calls no longer waiting (timed out, unknown)

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    @property
    def outcomes_subject(self) -> str:
        """Where modules that answer directly report outcomes (see corral.runtime.direct)."""
        return self._inbox + OUTCOMES_TOKEN  # request tokens are numbers: never this one

    async def start(self) -> None:
        if self._sub is not None:
            return
        self._inbox = self.nc.new_inbox() + "."
        # Limits 0: unbounded (see the module docstring on slow consumers).
        self._sub = await self.nc.subscribe(
            self._inbox + "*", cb=self._on_message, pending_msgs_limit=0, pending_bytes_limit=0
        )
        # Answers are settled as nats-py reads them, without a queue and a task in between.
        inline.deliver_inline(self._sub, self._deliver)

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):  # closing: the subscription goes with it
                await sub.unsubscribe()
        waiting, self._waiting = self._waiting, {}
        self._deadlines.clear()
        for entry in waiting.values():
            _settle(entry, nats.errors.ConnectionClosedError())

    def forward(
        self,
        subject: str,
        payload: bytes,
        timeout: float,
        headers: dict[str, str] | None,
        settle: Settle,
        *,
        direct: bool = False,
    ) -> str:
        """Publish `payload` on `subject` and return the call's token.

        `settle` gets, exactly once, the first answer (a Msg, or Reported for a direct-reply
        call) or an exception: nats.errors.TimeoutError after `timeout` seconds
        (OutcomeLostError when `direct` and the connection was re-established meanwhile),
        NoRespondersError, or ConnectionClosedError on stop(). If publishing raises, `settle`
        is never called and the exception propagates. The request is queued on the connection
        (corral.runtime.inline), not awaited: nothing can answer it before this returns."""
        if self._sub is None:
            raise RuntimeError("RequestMux is not started: call `await mux.start()` first")
        token = str(next(self._tokens))
        inline.publish_nowait(self.nc, subject, payload, reply=self._inbox + token, headers=headers)
        entry = _Waiting(settle, direct, self.nc.stats["reconnects"])
        entry.deadline = self._deadlines.add(timeout, partial(self._expire, token))
        self._waiting[token] = entry
        return token

    async def request(
        self,
        subject: str,
        payload: bytes,
        timeout: float,
        headers: dict[str, str] | None = None,
        *,
        direct: bool = False,
    ) -> Answer:
        """`forward()`, awaiting the answer: returns it, or raises what `settle` would get."""
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()

        def settle(answer: Answer | Exception) -> None:
            if future.done():
                return
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer)

        token = self.forward(subject, payload, timeout, headers, settle, direct=direct)
        try:
            return await future
        finally:
            self._pop(token)  # cancelled: leave the table, so a late answer is dropped

    def _pop(self, token: str) -> _Waiting | None:
        entry = self._waiting.pop(token, None)
        if entry is not None and entry.deadline is not None:
            self._deadlines.cancel(entry.deadline)
        return entry

    def _expire(self, token: str) -> None:
        entry = self._waiting.pop(token, None)
        if entry is None:
            return
        lost = entry.direct and self.nc.stats["reconnects"] != entry.reconnects
        _settle(entry, OutcomeLostError() if lost else nats.errors.TimeoutError())

    async def _on_message(self, msg: Msg) -> None:
        self._deliver(msg)  # where this nats-py cannot deliver inline

    def _deliver(self, msg: Msg) -> None:
        token = msg.subject[len(self._inbox) :]
        if token == OUTCOMES_TOKEN:
            self._on_outcomes(msg.data)
            return
        entry = self._pop(token)
        if entry is None:
            return  # late (after its timeout) or a second reply: the call has its answer
        if msg.headers and not msg.data and msg.headers.get(_STATUS_HEADER) == _NO_RESPONDERS:
            _settle(entry, nats.errors.NoRespondersError())
        else:
            _settle(entry, msg)

    def _on_outcomes(self, data: bytes) -> None:
        try:
            batch = self._decode_outcomes(data)
        except msgspec.DecodeError as exc:
            log.warning("ignoring a malformed outcome report on %s: %s", self.outcomes_subject, exc)
            return
        inbox, start = self._inbox, len(self._inbox)
        for outcome in batch.outcomes:
            entry = self._pop(outcome.call[start:]) if outcome.call.startswith(inbox) else None
            if entry is None:
                self.stale_reports += 1
                continue
            self.reported += 1
            _settle(entry, Reported(outcome.code))


def _settle(entry: _Waiting, answer: Answer | Exception) -> None:
    try:
        entry.settle(answer)
    except Exception:  # one call's bookkeeping must not stop the mux (or the rest of a batch)
        log.exception("settling a forwarded call failed")
