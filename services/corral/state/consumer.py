"""One ephemeral JetStream pull consumer, read strictly in order, and the one-shot reads on it.

Why not nats-py's KV watcher or `js.subscribe(ordered_consumer=True)`: after a server restart
their consumer is gone, and what they do about it (recreate it once, in the background, from
a sequence they track inside the subscription) is what has failed to resume in several NATS
clients. Here the reader owns the sequence: each consumer has AckNone, one reader, and every
message's consumer sequence is checked. Anything unexpected - a gap (a batch lost on a
reconnect), a 409 or 503 status (the consumer was deleted, the server restarted), no message
nor heartbeat for three heartbeat intervals - raises ConsumerLost, and the caller makes a new
consumer from the last stream sequence it processed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncGenerator, Mapping
from typing import NamedTuple

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api

__all__ = ["AckFields", "ConsumerLost", "PullConsumer", "ack_fields", "read_latest", "read_messages"]

_STATUS = "Status"
_HEARTBEAT = "100"
_END_OF_REQUEST = ("404", "408")  # no messages now (no_wait), or the request expired
CONSUMER_INACTIVE_THRESHOLD = 60.0  # seconds before the server removes a consumer nobody reads
_ONE_SHOT_SILENCE = 5.0  # seconds a no_wait request may take to answer


class ConsumerLost(Exception):
    """The consumer is gone or skipped messages: make a new one from the last stream sequence."""


class AckFields(NamedTuple):
    stream_seq: int
    consumer_seq: int
    timestamp: float  # seconds since the epoch
    pending: int


def ack_fields(reply: str) -> AckFields:
    """The sequences in a JetStream message's reply subject (v1 and v2, with a domain, formats)."""
    tokens = reply.split(".")
    offset = 2 if len(tokens) == 9 else 4
    return AckFields(
        int(tokens[offset + 3]),
        int(tokens[offset + 4]),
        int(tokens[offset + 5]) / 1e9,
        int(tokens[offset + 6]),
    )


class PullConsumer:
    """An ephemeral AckNone pull consumer and the inbox its messages arrive on."""

    def __init__(
        self, nc: Client, js: JetStreamContext, stream: str, pulling: asyncio.Event | None = None
    ) -> None:
        self.nc = nc
        self.js = js
        self.stream = stream
        self.name = nc._nuid.next().decode()
        self.inbox = nc.new_inbox()
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{self.name}"
        self._delivered = 0  # the consumer sequence of the last message read
        # Our own queue, read under asyncio.timeout: nats-py's next_msg nests wait_for in a task,
        # and cancelling that on Python 3.11 can hang when a message arrives at the same moment.
        self._inbox: asyncio.Queue[Msg] = asyncio.Queue()
        self._sub: Subscription | None = None
        self._pulling = pulling  # set when a pull request has been sent

    @classmethod
    async def create(
        cls,
        nc: Client,
        js: JetStreamContext,
        stream: str,
        filter_subject: str,
        *,
        policy: api.DeliverPolicy,
        start_seq: int | None = None,
        headers_only: bool = False,
        pulling: asyncio.Event | None = None,
    ) -> PullConsumer:
        consumer = cls(nc, js, stream, pulling)
        config = api.ConsumerConfig(
            name=consumer.name,
            deliver_policy=policy,
            opt_start_seq=start_seq,
            ack_policy=api.AckPolicy.NONE,
            filter_subject=filter_subject,
            headers_only=headers_only or None,
            inactive_threshold=CONSUMER_INACTIVE_THRESHOLD,
            num_replicas=1,
            mem_storage=True,
        )
        consumer._sub = await nc.subscribe(consumer.inbox, cb=consumer._received)
        try:
            await js.add_consumer(stream, config)
        except BaseException:
            await consumer._sub.unsubscribe()
            raise
        return consumer

    async def _received(self, msg: Msg) -> None:
        self._inbox.put_nowait(msg)  # bounded by the pull requests: at most two batches in flight

    async def fetch(self, batch: int) -> AsyncGenerator[tuple[Msg, AckFields], None]:
        """Yield what is there now, up to `batch` messages, in order (one no_wait pull request)."""
        await self._request({"batch": batch, "no_wait": True})
        for _ in range(batch):
            msg = await self._next(_ONE_SHOT_SILENCE)
            status = self._status(msg)
            if status in _END_OF_REQUEST:
                return
            if status is None:
                yield msg, self._checked(msg)

    async def follow(
        self, *, batch: int, expires: float, heartbeat: float
    ) -> AsyncGenerator[tuple[Msg, AckFields], None]:
        """Yield every message, in order, for as long as the caller iterates.

        The server always holds a pull request of ours: the next one is sent before the
        current one runs out (half its messages or half its time used), so a message is sent
        to us as soon as it is stored. A message that waited on the server for a request
        could be removed before it was sent (a KV bucket keeps a few revisions per key).
        """
        open_requests: deque[int] = deque()  # messages each request may still bring, oldest first
        sent = 0.0
        loop = asyncio.get_running_loop()
        while True:
            if not open_requests or (
                len(open_requests) == 1
                and (open_requests[0] <= batch // 2 or loop.time() - sent > expires / 2)
            ):
                body = {"batch": batch, "expires": int(expires * 1e9), "idle_heartbeat": int(heartbeat * 1e9)}
                await self._request(body)
                open_requests.append(batch)
                sent = loop.time()
            msg = await self._next(heartbeat * 3)
            status = self._status(msg)
            if status in _END_OF_REQUEST:
                if open_requests:
                    open_requests.popleft()  # requests expire in the order they were sent
                continue
            if status is not None:
                continue
            fields = self._checked(msg)
            open_requests[0] -= 1
            if open_requests[0] == 0:
                open_requests.popleft()
            yield msg, fields

    async def _request(self, body: Mapping[str, object]) -> None:
        await self.nc.publish(self._next_subject, json.dumps(body).encode(), reply=self.inbox)
        if self._pulling is not None:
            self._pulling.set()

    def _status(self, msg: Msg) -> str | None:
        """None for a message; the status of a status message; ConsumerLost for a failure status."""
        status = msg.headers.get(_STATUS) if msg.headers else None
        if status is None or status == _HEARTBEAT or status in _END_OF_REQUEST:
            return status
        raise ConsumerLost(f"status {status} {(msg.headers or {}).get('Description', '')}".strip())

    def _checked(self, msg: Msg) -> AckFields:
        fields = ack_fields(msg.reply)
        if fields.consumer_seq != self._delivered + 1:
            raise ConsumerLost(f"consumer sequence jumped from {self._delivered} to {fields.consumer_seq}")
        self._delivered = fields.consumer_seq
        return fields

    async def _next(self, silence: float) -> Msg:
        if self.nc.is_closed:
            raise ConsumerLost("the connection is closed")
        try:
            async with asyncio.timeout(silence):
                return await self._inbox.get()
        except TimeoutError:
            raise ConsumerLost(f"no message or heartbeat for {silence:g}s") from None

    async def close(self) -> None:
        """Unsubscribe and delete the consumer; best effort (the server drops it when inactive)."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self.nc.is_connected:
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(self.stream, self.name)


async def read_messages(
    nc: Client,
    js: JetStreamContext,
    stream: str,
    filter_subject: str,
    *,
    policy: api.DeliverPolicy,
    headers_only: bool = False,
    batch: int = 1024,
) -> tuple[int, list[tuple[Msg, AckFields]]]:
    """Every message a new consumer delivers, up to the stream's last sequence once it exists.

    Returns that sequence and the messages. With DeliverPolicy.ALL these are all the messages
    kept; with LAST_PER_SUBJECT, the last message of each subject when the consumer was made
    followed by any written until the sequence was read: folded in order (`read_latest`),
    they give each subject's last message at exactly that sequence.
    """
    consumer = await PullConsumer.create(
        nc, js, stream, filter_subject, policy=policy, headers_only=headers_only
    )
    try:
        cut = (await js.stream_info(stream)).state.last_seq
        messages: list[tuple[Msg, AckFields]] = []
        while True:
            count = 0
            async with contextlib.aclosing(consumer.fetch(batch)) as fetched:
                async for msg, fields in fetched:
                    if fields.stream_seq > cut:
                        return cut, messages
                    messages.append((msg, fields))
                    count += 1
            if count < batch:
                return cut, messages
    finally:
        await consumer.close()


async def read_latest(
    nc: Client, js: JetStreamContext, stream: str, filter_subject: str, *, headers_only: bool = False
) -> tuple[int, list[tuple[Msg, AckFields]]]:
    """The last message of every subject under `filter_subject` at one stream sequence (a cut)."""
    cut, messages = await read_messages(
        nc, js, stream, filter_subject, policy=api.DeliverPolicy.LAST_PER_SUBJECT, headers_only=headers_only
    )
    latest = {msg.subject: (msg, fields) for msg, fields in messages}
    return cut, sorted(latest.values(), key=lambda item: item[1].stream_seq)
