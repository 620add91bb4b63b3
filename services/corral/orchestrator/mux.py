"""The orchestrator's own request-reply: one wildcard inbox, a dict of waiting futures.

nats-py's `Client.request` pays per call for a random token (an `os.urandom` system call), a
NUID, a done-callback, and `asyncio.wait_for` (a second future and a wrapper). On the call
path that is a large share of the orchestrator's CPU, so the router sends its forwarded
requests through this mux instead: tokens are a counter under a per-mux NUID inbox, and a
timeout is one `call_at` timer that fails the future.

A forward to a module that answers directly (corral.runtime.direct) is answered here by the
module's outcome report, which arrives batched on the mux's own `outcomes_subject`; a
module that ignores the direct-reply headers answers on the token as usual.

Guarantees, the same as nats-py's request:

* one answer per request: the first reply resolves the future and removes it, so a reply
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
from typing import Final, NamedTuple

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from corral.component import Component
from corral.protocol import OutcomeBatch

__all__ = ["OutcomeLostError", "Reported", "RequestMux"]

log = logging.getLogger("corral.orchestrator.mux")

_STATUS_HEADER: Final = "Status"
_NO_RESPONDERS: Final = "503"
_OUTCOMES_TOKEN: Final = "outcomes"  # request tokens are numbers, so it never names a request


class Reported(NamedTuple):
    """The module answered the caller itself; this is how the call ended."""

    code: str  # "ok" or an ErrorCode value


class OutcomeLostError(nats.errors.TimeoutError):
    """No outcome report for a directly answered call, and the connection was re-established
    meanwhile: the report may have been lost, and the module may well have answered."""


class RequestMux(Component):
    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self._waiting: dict[str, asyncio.Future[Msg | Reported]] = {}
        self._tokens = itertools.count(1)
        self._inbox = ""  # "_INBOX.<nuid>."; each request adds its token
        self._sub: Subscription | None = None
        self._decode_outcomes = msgspec.json.Decoder(OutcomeBatch).decode
        self.reported = 0  # outcome reports that settled a call
        self.stale_reports = 0  # reports for calls no longer waiting (timed out, unknown)

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    @property
    def outcomes_subject(self) -> str:
        """Where modules that answer directly report outcomes (the `Corral-Outcomes` header)."""
        return self._inbox + _OUTCOMES_TOKEN

    async def start(self) -> None:
        if self._sub is not None:
            return
        self._inbox = self.nc.new_inbox() + "."
        # Limits 0: unbounded (see the module docstring on slow consumers).
        self._sub = await self.nc.subscribe(
            self._inbox + "*", cb=self._on_message, pending_msgs_limit=0, pending_bytes_limit=0
        )

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):  # closing: the subscription goes with it
                await sub.unsubscribe()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(nats.errors.ConnectionClosedError())
        self._waiting.clear()

    async def request(
        self,
        subject: str,
        payload: bytes,
        timeout: float,
        headers: dict[str, str] | None = None,
        *,
        direct: bool = False,
    ) -> Msg | Reported:
        """Publish `payload` on `subject` and wait up to `timeout` seconds for the first reply,
        or (`direct`, with the direct-reply headers set) for the outcome report.

        Raises nats.errors.TimeoutError (OutcomeLostError when `direct` and the connection was
        re-established meanwhile), NoRespondersError, or what `publish` raises."""
        if self._sub is None:
            raise RuntimeError("RequestMux is not started: call `await mux.start()` first")
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg | Reported] = loop.create_future()
        self._waiting[token] = future
        timer = loop.call_later(timeout, self._expire, token)
        reconnects = self.nc.stats["reconnects"]
        try:
            await self.nc.publish(subject, payload, reply=self._inbox + token, headers=headers)
            answer = await future
        except nats.errors.TimeoutError:
            if direct and self.nc.stats["reconnects"] != reconnects:
                raise OutcomeLostError from None
            raise
        finally:
            timer.cancel()
            self._waiting.pop(token, None)  # already gone when answered; here on timeout/cancel
        if (
            isinstance(answer, Msg)
            and answer.headers
            and not answer.data
            and answer.headers.get(_STATUS_HEADER) == _NO_RESPONDERS
        ):
            raise nats.errors.NoRespondersError
        return answer

    def _expire(self, token: str) -> None:
        future = self._waiting.pop(token, None)
        if future is not None and not future.done():
            future.set_exception(nats.errors.TimeoutError())

    async def _on_message(self, msg: Msg) -> None:
        token = msg.subject[len(self._inbox) :]
        if token == _OUTCOMES_TOKEN:
            self._on_outcomes(msg.data)
            return
        future = self._waiting.pop(token, None)
        if future is not None and not future.done():
            future.set_result(msg)

    def _on_outcomes(self, data: bytes) -> None:
        try:
            batch = self._decode_outcomes(data)
        except msgspec.DecodeError as exc:
            log.warning("ignoring a malformed outcome report on %s: %s", self.outcomes_subject, exc)
            return
        start = len(self._inbox)
        for outcome in batch.outcomes:
            future = (
                self._waiting.pop(outcome.call[start:], None)
                if outcome.call.startswith(self._inbox)
                else None
            )
            if future is not None and not future.done():
                future.set_result(Reported(outcome.code))
                self.reported += 1
            else:
                self.stale_reports += 1
