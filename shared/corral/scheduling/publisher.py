"""Many JetStream publishes in flight, each answered by its own future.

nats-py's `publish_async` loses the future of a publish the stream refuses (its reply handler
raises instead of failing the future, so a full stream hangs the caller), so the task queue
uses this: one wildcard inbox, a future per publish, the acknowledgement parsed here.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Final

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = ["EXPECT_NEW", "WRONG_LAST_SEQUENCE", "Ack", "AsyncPublisher", "PublishRefused"]

# Headers of a create-only KV write, and the error JetStream answers when the key exists.
EXPECT_NEW: Final = {"Nats-Expected-Last-Subject-Sequence": "0"}
WRONG_LAST_SEQUENCE: Final = 10071


class Ack(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False


class _Error(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _Reply(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _Error | None = None


_decode = msgspec.json.Decoder(_Reply).decode


class PublishRefused(Exception):
    """JetStream answered a publish with an error (e.g. err_code 10077: the stream is full)."""

    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"JetStream refused the publish: {description} (code {code}, err_code {err_code})")
        self.code = code
        self.err_code = err_code
        self.description = description


class AsyncPublisher:
    def __init__(self, nc: Client, timeout: float = 5.0) -> None:
        self.nc = nc
        self.timeout = timeout
        self._prefix = ""
        # token -> (future, deadline on the loop's clock), oldest first: every publish has the
        # same timeout, so insertion order is deadline order and one timer serves them all.
        self._pending: dict[str, tuple[asyncio.Future[Ack], float]] = {}
        self._counter = itertools.count()
        self._sub: Subscription | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def _start(self) -> None:
        self._prefix = self.nc.new_inbox() + "."
        self._sub = await self.nc.subscribe(self._prefix + "*", cb=self._on_ack)

    async def _on_ack(self, msg: Msg) -> None:
        pending = self._pending.pop(msg.subject[len(self._prefix) :], None)
        if pending is None:
            return
        future = pending[0]
        if future.done():
            return
        if not msg.data:  # a status message: 503 no responders (no stream takes this subject)
            status = (msg.headers or {}).get("Status", "")
            future.set_exception(PublishRefused(int(status or 503), 0, "no stream answered (no responders)"))
            return
        try:
            reply = _decode(msg.data)
        except msgspec.DecodeError as exc:
            future.set_exception(exc)
            return
        if reply.error is not None:
            error = reply.error
            future.set_exception(PublishRefused(error.code, error.err_code, error.description))
        else:
            future.set_result(Ack(reply.stream, reply.seq, reply.duplicate))

    def _expire(self) -> None:
        """Fail the publishes past their deadline (the oldest ones), then wait for the next."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._pending:
            token, (future, deadline) = next(iter(self._pending.items()))
            if deadline > now:
                self._timer = loop.call_at(deadline, self._expire)
                return
            del self._pending[token]
            if not future.done():
                future.set_exception(
                    TimeoutError(f"JetStream did not acknowledge a publish within {self.timeout}s")
                )

    async def publish(
        self, subject: str, data: bytes, headers: dict[str, str] | None = None
    ) -> asyncio.Future[Ack]:
        """Send now; the returned future holds the acknowledgement (TimeoutError after `timeout`).
        A future per publish, no task and no timer of its own: this is on every task's path."""
        if self._sub is None:
            await self._start()
        token = str(next(self._counter))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Ack] = loop.create_future()
        self._pending[token] = (future, loop.time() + self.timeout)
        if self._timer is None:
            self._timer = loop.call_later(self.timeout, self._expire)
        await self.nc.publish(subject, data, reply=self._prefix + token, headers=headers)
        return future

    async def wait(self, futures: list[asyncio.Future[Ack]]) -> list[Ack | BaseException]:
        """Every acknowledgement, or its error. The publishes are all sent already, so awaiting
        them in turn costs no more time than gather() and none of its bookkeeping."""
        outcomes: list[Ack | BaseException] = []
        for future in futures:
            try:
                outcomes.append(await future)
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
