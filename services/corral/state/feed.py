"""A Feed: every message of a stream under a subject filter, in order, for as long as it runs.

It survives what kills a plain consumer - a reconnect, a nats-server restart, a consumer the
server deleted - by owning its position: the stream sequence of the last message it handed
on. Whenever its consumer is lost (see `corral.state.consumer`) it makes a new one that starts
right after that sequence, so no message is missed and none is handed on twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from corral.component import Component
from corral.state.consumer import AckFields, ConsumerLost, PullConsumer

__all__ = ["Feed", "OnMessage"]

log = logging.getLogger("corral.state.feed")

OnMessage = Callable[[Msg, AckFields], Awaitable[None]]

_BATCH = 1024  # messages per pull request; the next one is sent when half are in
_EXPIRES = 30.0  # seconds a pull request waits on the server for messages
_BUFFER = 65536  # messages read ahead of the handler
_RETRY_FIRST, _RETRY_MAX = 0.05, 2.0  # backoff between attempts to make a consumer
START_WAIT = 10.0  # seconds start() waits for the first consumer to be pulling


class Feed(Component):
    """Hands each message to `on_message`, one at a time, in stream order.

    Starts after stream sequence `after` (0: from the first message kept). Two loops run: a
    reader that pulls messages as soon as JetStream stores them into a buffer, and a
    deliverer that hands them on. A slow handler therefore does not leave messages waiting on
    the server, where a KV bucket's per-key history limit could remove them before they are
    read; only a handler more than _BUFFER messages behind makes the reader wait. A handler
    exception is logged and the feed goes on.
    """

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        stream: str,
        filter_subject: str,
        on_message: OnMessage,
        *,
        after: int = 0,
        heartbeat: float = 1.0,
        name: str = "feed",
    ) -> None:
        self.nc = nc
        self.js = js
        self.stream = stream
        self.filter_subject = filter_subject
        self.on_message = on_message
        self.last_seq = after  # the last message handed on
        self.read_seq = after  # the last message read; a new consumer starts after it
        self.heartbeat = heartbeat
        self.name = name
        self.consumers = 0  # consumers made so far: one more each time the feed recovers
        self._buffer: asyncio.Queue[tuple[Msg, AckFields]] = asyncio.Queue(_BUFFER)
        self._tasks: list[asyncio.Task[None]] = []
        self._pulling = asyncio.Event()  # set once the first pull request is sent

    async def start(self, after: int | None = None, *, wait: float = START_WAIT) -> None:
        """Start following; returns once the server holds a pull request of the feed's, so every
        message stored from then on reaches the feed (TimeoutError after `wait` seconds)."""
        if self._tasks:
            return
        if after is not None:
            self.last_seq = self.read_seq = after
        label = f"{self.name}-{self.filter_subject}"
        self._tasks = [
            asyncio.create_task(self._read(), name=f"{label}-read"),
            asyncio.create_task(self._deliver(), name=f"{label}-deliver"),
        ]
        try:
            async with asyncio.timeout(wait):
                await self._pulling.wait()
            await self.nc.flush()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop pulling and handing on; safe to call more than once, also from `on_message`."""
        tasks, self._tasks = self._tasks, []
        others = [task for task in tasks if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        for task in others:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _read(self) -> None:
        delay = _RETRY_FIRST
        while not self.nc.is_closed:
            consumer: PullConsumer | None = None
            try:
                consumer = await self._new_consumer()
                delay = _RETRY_FIRST
                await self._pull(consumer)
            except (ConsumerLost, TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
                log.info(
                    "%s on %s: %s; resuming after %d", self.name, self.filter_subject, exc, self.read_seq
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
            finally:
                if consumer is not None:
                    await asyncio.shield(consumer.close())

    async def _deliver(self) -> None:
        while True:
            msg, fields = await self._buffer.get()
            self.last_seq = fields.stream_seq
            try:
                await self.on_message(msg, fields)
            except Exception:
                log.exception(
                    "%s: handler failed for %s (sequence %d)", self.name, msg.subject, self.last_seq
                )

    async def _new_consumer(self) -> PullConsumer:
        if self.read_seq:
            policy, start = api.DeliverPolicy.BY_START_SEQUENCE, self.read_seq + 1
        else:
            policy, start = api.DeliverPolicy.ALL, None
        consumer = await PullConsumer.create(
            self.nc,
            self.js,
            self.stream,
            self.filter_subject,
            policy=policy,
            start_seq=start,
            pulling=self._pulling,
        )
        self.consumers += 1
        return consumer

    async def _pull(self, consumer: PullConsumer) -> None:
        followed = consumer.follow(batch=_BATCH, expires=_EXPIRES, heartbeat=self.heartbeat)
        async with contextlib.aclosing(followed) as messages:
            async for msg, fields in messages:
                if fields.stream_seq <= self.read_seq:
                    continue  # already read from an earlier consumer
                self.read_seq = fields.stream_seq
                await self._buffer.put((msg, fields))
