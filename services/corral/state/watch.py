"""ChangeStream: every change to the keys under a pattern, in revision order, with old values.

Where it starts:

* `since=None` (the default): from now. It starts following the bucket, then reads a cut -
  each key's last message at one revision R (`consumer.read_latest`) - to learn the current
  values, and reports every message after R. Nothing written once `start()` has returned is
  missed, nothing in the cut is reported as a change, and every old value is exact. With
  `include_current`, the cut's values come first as `initial` changes.
* `since=N`: every change after revision N still kept in the bucket. It replays the bucket
  from its first kept message, silently up to N to learn the values there, so the first
  changes after N carry their old values too. The event forwarder resumes this way.

Limits: a bucket keeps `max_versions` revisions per key. The feed reads ahead of its handler,
but a change superseded by that many newer ones while the stream could not read at all (cut
off from the server) is gone: it is not reported, and the next change of that key carries
the last value the stream saw as its old value.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from corral.component import Component
from corral.state.changes import Change, ChangeTracker
from corral.state.consumer import AckFields, read_latest
from corral.state.entries import KVEntry, entry_from_parts, kv_prefix
from corral.state.feed import Feed

__all__ = ["ChangeStream", "OnChange", "kv_stream"]

OnChange = Callable[[Change], Awaitable[None]]


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


class ChangeStream(Component):
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        bucket: str,
        pattern: str,
        on_change: OnChange,
        *,
        since: int | None = None,
        include_current: bool = False,
        heartbeat: float = 1.0,
        name: str = "watch",
    ) -> None:
        self.nc = nc
        self.js = js
        self.pattern = pattern
        self.on_change = on_change
        self.since = since
        self.include_current = include_current
        self._prefix = kv_prefix(bucket)
        self._stream = kv_stream(bucket)
        self._tracker = ChangeTracker()
        self._quiet_until = 0  # revisions up to this one only teach the tracker (since=N)
        self._in_cut = 0  # revisions up to this one are in the cut already (since=None)
        self._seeded = asyncio.Event()  # no message is handled before the tracker knows the cut
        self._feed = Feed(
            nc, js, self._stream, self._prefix + pattern, self._on_message, heartbeat=heartbeat, name=name
        )

    @property
    def feed(self) -> Feed:
        return self._feed

    @property
    def last_revision(self) -> int:
        """The revision of the last message this stream has processed."""
        return self._feed.last_seq

    async def start(self) -> None:
        if self.since is not None:
            self._quiet_until = self.since
            self._seeded.set()
            await self._feed.start(after=0)
            return
        # The feed's consumer is in place before the cut is read, so a write that lands between
        # the two is in the cut or in the feed (or both: the feed then skips it), never in neither.
        start = (await self.js.stream_info(self._stream)).state.last_seq
        await self._feed.start(after=start)
        try:
            cut, messages = await read_latest(self.nc, self.js, self._stream, self._prefix + self.pattern)
        except BaseException:
            await self._feed.stop()
            raise
        self._in_cut = cut
        initial = self._tracker.seed(self._entry(msg, fields) for msg, fields in messages)
        if self.include_current:
            for change in initial:
                await self.on_change(change)
        self._seeded.set()

    async def stop(self) -> None:
        await self._feed.stop()

    async def _on_message(self, msg: Msg, fields: AckFields) -> None:
        await self._seeded.wait()
        if fields.stream_seq <= self._in_cut:
            return
        entry = self._entry(msg, fields)
        if entry.revision <= self._quiet_until:
            self._tracker.seed([entry])
            return
        await self.on_change(self._tracker.apply(entry))

    def _entry(self, msg: Msg, fields: AckFields) -> KVEntry:
        return entry_from_parts(
            self._prefix, msg.subject, msg.data, msg.headers, fields.stream_seq, fields.timestamp
        )
