"""Every change of the state bucket, published on `<prefix>.evt.state.changed` for the event history.

The forwarder follows the bucket itself rather than the service's own writes, so it also
reports changes made around the service: by the SDK's direct KV path, by `nats kv put`, by
a TTL running out. Each event is a Change (`{key, old_value, new_value, revision, operation,
time}`), published to the events stream with `Nats-Msg-Id: <bucket>:<revision>`:

* after a restart the forwarder resumes after the revision of the last event in the stream
  (header `Corral-State-Revision`), so changes made while no state service ran are
  published when one comes back;
* several replicas may all forward: the stream's duplicate window keeps one copy of each.

The events stream (`<PREFIX>_EVENTS`, one subject tree per event source) is declared with
the same spec the orchestrator declares it with, so whichever service starts first creates
it and neither changes what the other made.
"""

from __future__ import annotations

import logging
from typing import Final

import msgspec
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from corral.bus import ensure_stream, events_stream_spec, publish_durable
from corral.component import Component
from corral.state.changes import Change
from corral.state.watch import ChangeStream, kv_stream
from corral.subjects import Subjects

__all__ = ["REVISION_HEADER", "EventForwarder"]

log = logging.getLogger("corral.state.events")

REVISION_HEADER: Final = "Corral-State-Revision"
PUBLISH_DEADLINE: Final = 5.0  # seconds of retrying one event before it is logged and skipped
_encode = msgspec.json.Encoder().encode


class EventForwarder(Component):
    def __init__(
        self, nc: Client, js: JetStreamContext, subjects: Subjects, bucket: str, *, heartbeat: float = 1.0
    ) -> None:
        self.nc = nc
        self.js = js
        self.subjects = subjects
        self.bucket = bucket
        self.subject = subjects.event("state", "changed")
        self.heartbeat = heartbeat
        self.published = 0
        self._changes: ChangeStream | None = None

    async def start(self) -> None:
        await self._ensure_stream()
        since = await self._last_forwarded()
        self._changes = ChangeStream(
            self.nc,
            self.js,
            self.bucket,
            ">",
            self._publish,
            since=since,
            heartbeat=self.heartbeat,
            name="state-events",
        )
        await self._changes.start()

    async def stop(self) -> None:
        if self._changes is not None:
            await self._changes.stop()

    async def _ensure_stream(self) -> None:
        await ensure_stream(self.js, events_stream_spec(self.subjects))

    async def _last_forwarded(self) -> int | None:
        """The revision of the last event published, if the stream and the bucket agree on one."""
        try:
            last = await self.js.get_last_msg(self.subjects.events_stream, self.subject)
        except nats.js.errors.NotFoundError:
            return None
        revision = int((last.headers or {}).get(REVISION_HEADER, "0"))
        newest = (await self.js.stream_info(kv_stream(self.bucket))).state.last_seq
        return revision if 0 < revision <= newest else None  # a recreated bucket starts over

    async def _publish(self, change: Change) -> None:
        try:
            await publish_durable(
                self.js,
                self.subject,
                _encode(change),
                msg_id=f"{self.bucket}:{change.revision}",
                headers={REVISION_HEADER: str(change.revision)},
                deadline=PUBLISH_DEADLINE,
            )
        except (TimeoutError, nats.js.errors.Error) as exc:
            log.warning(
                "could not publish the change of %s at revision %d: %s", change.key, change.revision, exc
            )
            return
        self.published += 1
