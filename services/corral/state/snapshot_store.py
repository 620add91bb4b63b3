"""Snapshots on JetStream, and restores that survive the service dying halfway.

Where things live (both named `<prefix>_snapshots`, one KV bucket and one object store):

* object store: one object per snapshot, named by its id, holding a SnapshotBody (JSON);
  objects are chunked, so a snapshot may be larger than a NATS message;
* KV `snapshot.<id>`: its SnapshotInfo, so `snapshot.list` reads no bodies; written after
  the body, deleted before it, so the index never names a missing body;
* KV `restore`: the restore journal.

Restores are resumable, not atomic. Before the first write, the journal records which
snapshot is being restored (status `running`) and the report of what will change. The
restore then computes what differs between the store and the snapshot and writes and
deletes exactly that. If the service dies midway, the next one to start finds the journal
`running` and, before it serves any request, computes the difference again - from what the
store holds now, so what was already applied is not applied twice - and finishes, then
marks the journal `done`. Asking to restore the same snapshot again also resumes it.

Why not JetStream's atomic batch publish (nats-server 2.12+): a batch holds at most 1000
messages by default, and a restore must work for any number of keys. A resumable restore
works for all sizes with one code path; readers may see a restore in progress, but never
one left half done.

Not covered: writers are not paused while a restore runs (a write racing it may survive
it), and a snapshot holds values, not their TTLs (a restored value does not expire).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Final

import msgspec
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.object_store import ObjectStore

from corral.errors import ConflictError, NotFoundError
from corral.state.settings import StateSettings
from corral.state.snapshots import (
    RestoreJournal,
    RestoreReport,
    RestoreStatus,
    SnapshotBody,
    SnapshotInfo,
    new_snapshot_id,
    plan_restore,
    report_of,
)
from corral.state.store import StateStore
from corral.state.values import raw_json

__all__ = ["SnapshotStore"]

log = logging.getLogger("corral.state.snapshots")

JOURNAL_KEY: Final = "restore"
INDEX_PREFIX: Final = "snapshot."
RESTORE_CONCURRENCY: Final = 64  # writes in flight while restoring
_encode = msgspec.json.Encoder().encode
_body = msgspec.json.Decoder(SnapshotBody)
_info = msgspec.json.Decoder(SnapshotInfo)
_journal = msgspec.json.Decoder(RestoreJournal)


class SnapshotStore:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        bucket: str,
        state: StateStore,
        *,
        instance: str,
        replicas: int = 1,
    ) -> None:
        self.js = js
        self.bucket = bucket
        self.state = state
        self.instance = instance
        self.replicas = replicas
        # The index and the journal: small JSON values, a few revisions kept for inspection.
        self.index = StateStore(
            nc, js, bucket, StateSettings(max_versions=5, max_value_bytes=1000 * 1000, replicas=replicas)
        )
        self._objects: ObjectStore | None = None

    async def open(self) -> None:
        await self.index.open()
        try:
            self._objects = await self.js.object_store(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            config = api.ObjectStoreConfig(storage=api.StorageType.FILE, replicas=self.replicas)
            self._objects = await self.js.create_object_store(self.bucket, config=config)

    @property
    def objects(self) -> ObjectStore:
        if self._objects is None:
            raise RuntimeError("SnapshotStore is not open: call `await snapshots.open()` first")
        return self._objects

    # --- snapshots ------------------------------------------------------------------------------
    async def create(self, metadata: dict[str, Any]) -> SnapshotInfo:
        """Capture every key at one revision of the state bucket."""
        revision, values = await self.state.read_all()
        raw = {key: raw_json(data) for key, data in values.items()}
        size = sum(len(v) for v in raw.values())
        info = SnapshotInfo(new_snapshot_id(), time.time(), revision, len(raw), size, metadata)
        await self.objects.put(info.id, _encode(SnapshotBody(info, raw)))
        await self.index.put(INDEX_PREFIX + info.id, _encode(info))
        return info

    async def list(self) -> list[SnapshotInfo]:
        """Every snapshot, oldest first."""
        _, values = await self.index.read_all()
        infos = [_info.decode(data) for key, data in values.items() if key.startswith(INDEX_PREFIX)]
        return sorted(infos, key=lambda info: (info.created, info.id))

    async def load(self, snapshot_id: str) -> SnapshotBody:
        try:
            result = await self.objects.get(snapshot_id)
        except nats.js.errors.NotFoundError:
            raise _unknown(snapshot_id) from None
        return _body.decode(result.data or b"")

    async def delete(self, snapshot_id: str) -> bool:
        """Delete a snapshot; False if there was none by that id."""
        journal, _ = await self._journal()
        if (
            journal is not None
            and journal.status is RestoreStatus.RUNNING
            and journal.snapshot == snapshot_id
        ):
            raise ConflictError(
                f"snapshot {snapshot_id!r} is being restored: delete it once the restore has finished"
            )
        indexed = await self.index.delete(INDEX_PREFIX + snapshot_id) is not None
        try:
            await self.objects.delete(snapshot_id)
        except nats.js.errors.NotFoundError:
            return indexed
        return True

    # --- restores -------------------------------------------------------------------------------
    async def restore(self, snapshot_id: str) -> RestoreReport:
        """Make the store equal to the snapshot; see the module docstring for what a crash does."""
        body = await self.load(snapshot_id)
        journal, revision = await self._journal()
        if journal is not None and journal.status is RestoreStatus.RUNNING:
            if journal.snapshot != snapshot_id:
                raise ConflictError(
                    f"snapshot {journal.snapshot!r} is being restored (started by {journal.instance} at "
                    f"{time.strftime('%H:%M:%S', time.localtime(journal.started))}); wait for it to finish, "
                    f"or restore {journal.snapshot!r} again to finish it"
                )
            return await self._finish(journal, body, resumed=True)
        _, current = await self.state.read_all()
        report = report_of(snapshot_id, plan_restore(current, _values(body)))
        journal = RestoreJournal(snapshot_id, RestoreStatus.RUNNING, time.time(), self.instance, report)
        # (no journal | DONE) -> RUNNING; the CAS makes two concurrent restores a CONFLICT.
        await self.index.put(JOURNAL_KEY, _encode(journal), expected_revision=revision or 0)
        return await self._finish(journal, body, resumed=False)

    async def resume(self) -> RestoreReport | None:
        """Finish a restore a stopped service left running; None if there is none."""
        journal, _ = await self._journal()
        if journal is None or journal.status is not RestoreStatus.RUNNING:
            return None
        log.warning("resuming the restore of snapshot %s started by %s", journal.snapshot, journal.instance)
        try:
            body = await self.load(journal.snapshot)
        except NotFoundError:
            # RUNNING -> ABANDONED: its snapshot is gone (deleted by hand; snapshot.delete refuses)
            log.error("cannot finish the restore of snapshot %s: it no longer exists", journal.snapshot)
            abandoned = msgspec.structs.replace(journal, status=RestoreStatus.ABANDONED, finished=time.time())
            await self.index.put(JOURNAL_KEY, _encode(abandoned))
            return None
        return await self._finish(journal, body, resumed=True)

    async def restore_status(self) -> RestoreJournal | None:
        return (await self._journal())[0]

    async def _journal(self) -> tuple[RestoreJournal | None, int]:
        entry = await self.index.get(JOURNAL_KEY)
        if entry is None or entry.value is None:
            return None, 0
        return _journal.decode(entry.value), entry.revision

    async def _finish(self, journal: RestoreJournal, body: SnapshotBody, *, resumed: bool) -> RestoreReport:
        await self._apply(body)
        report = msgspec.structs.replace(journal.report, resumed=resumed or journal.report.resumed)
        done = msgspec.structs.replace(
            journal, status=RestoreStatus.DONE, finished=time.time(), report=report
        )
        # RUNNING -> DONE
        await self.index.put(JOURNAL_KEY, _encode(done))
        return report

    async def _apply(self, body: SnapshotBody) -> None:
        """Write and delete what differs now; applying twice is the same as applying once."""
        _, current = await self.state.read_all()
        plan = plan_restore(current, _values(body))
        limit = asyncio.Semaphore(RESTORE_CONCURRENCY)

        async def write(key: str, data: bytes) -> None:
            async with limit:
                await self.state.put(key, data)

        async def delete(key: str) -> None:
            async with limit:
                await self.state.delete(key)

        await asyncio.gather(
            *(write(k, v) for k, v in plan.writes.items()), *(delete(k) for k in plan.deletes)
        )


def _values(body: SnapshotBody) -> dict[str, bytes]:
    return {key: bytes(raw) for key, raw in body.values.items()}


def _unknown(snapshot_id: str) -> NotFoundError:
    return NotFoundError(f"no snapshot {snapshot_id!r}: snapshot.list shows the ids there are")
