"""The state service process: `<prefix>.state.<verb>` endpoints over the state store.

Thin by design: requests are decoded into the Structs of `corral.state.messages` (so bad
keys, patterns and ids are VALIDATION replies before a handler runs), the handlers call
`StateStore` and `SnapshotStore`, and a JetStream that does not answer becomes UNAVAILABLE.

Startup order matters: the buckets are declared, then any restore a stopped instance left
running is finished, and only then are requests served, so no client reads a half-restored
store.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from corral.errors import NotFoundError, ValidationError
from corral.protocol import JSON, Codec
from corral.runtime import RequestContext, Service, ServiceSettings
from corral.state.entries import KVEntry, Operation
from corral.state.errors import jetstream_errors
from corral.state.events import EventForwarder
from corral.state.messages import (
    DeleteReply,
    DeleteRequest,
    Entry,
    GetManyReply,
    GetManyRequest,
    HistoryReply,
    KeyRequest,
    KeysReply,
    KeysRequest,
    RestoreRequest,
    SetReply,
    SetRequest,
    SnapshotCreateRequest,
    SnapshotDeleteReply,
    SnapshotIdRequest,
    Version,
)
from corral.state.settings import StateSettings
from corral.state.snapshot_store import SnapshotStore
from corral.state.snapshots import RestoreReport, SnapshotInfo
from corral.state.store import StateStore
from corral.state.values import check_json_value, check_size, decode_value, raw_json

__all__ = ["StateService"]

log = logging.getLogger("corral.state")


class StateService(Service):
    def __init__(self, settings: ServiceSettings | None = None, state: StateSettings | None = None) -> None:
        super().__init__("state", settings=settings, description="corral state: versioned key/value state")
        self.state_settings = state or StateSettings.from_env()
        self._store: StateStore | None = None
        self._snapshots: SnapshotStore | None = None
        self.events: EventForwarder | None = None

    @property
    def store(self) -> StateStore:
        if self._store is None:
            raise RuntimeError("the state service is not started")
        return self._store

    @property
    def snapshots(self) -> SnapshotStore:
        if self._snapshots is None:
            raise RuntimeError("the state service is not started")
        return self._snapshots

    async def setup(self) -> None:
        settings, bucket = self.state_settings, self.subjects.state_bucket
        self._store = StateStore(self.nc, self.js, bucket, settings)
        await self._store.open()
        self._snapshots = SnapshotStore(
            self.nc,
            self.js,
            self.subjects.snapshots_bucket,
            self._store,
            instance=self.instance,
            replicas=settings.replicas,
        )
        await self._snapshots.open()
        if (report := await self._snapshots.resume()) is not None:
            log.warning("finished the restore of snapshot %s: %s", report.snapshot, report.counts)
        if settings.events:
            self.events = EventForwarder(self.nc, self.js, self.subjects, bucket)
            await self.events.start()
        for verb, payload_type, handler in (
            ("status", None, self._status),
            ("set", SetRequest, self._set),
            ("get", KeyRequest, self._get),
            ("get_many", GetManyRequest, self._get_many),
            ("keys", KeysRequest, self._keys),
            ("delete", DeleteRequest, self._delete),
            ("history", KeyRequest, self._history),
            ("restore", RestoreRequest, self._restore),
            ("snapshot.create", SnapshotCreateRequest, self._snapshot_create),
            ("snapshot.list", None, self._snapshot_list),
            ("snapshot.restore", SnapshotIdRequest, self._snapshot_restore),
            ("snapshot.delete", SnapshotIdRequest, self._snapshot_delete),
        ):
            self.endpoint(verb, payload_type)(jetstream_errors(handler))

    async def teardown(self) -> None:
        if self.events is not None:
            await self.events.stop()

    # --- keys -----------------------------------------------------------------------------------
    async def _set(self, req: SetRequest, ctx: RequestContext) -> SetReply:
        data = self._stored_bytes(req, ctx.codec)
        revision = await self.store.put(req.key, data, expected_revision=req.expected_revision, ttl=req.ttl)
        return SetReply(req.key, revision)

    def _stored_bytes(self, req: SetRequest, codec: Codec) -> bytes:
        """The JSON to store: a JSON request's bytes as they came, a msgpack value converted."""
        try:
            if codec is JSON:
                data = bytes(req.value)
            else:
                value = msgspec.msgpack.decode(req.value)
                check_json_value(value)
                data = msgspec.json.encode(value)
            return check_size(data, self.state_settings.max_value_bytes, req.key)
        except ValueError as exc:
            raise ValidationError(f"invalid request body: {exc}") from None

    async def _get(self, req: KeyRequest, ctx: RequestContext) -> Entry:
        entry = await self.store.get(req.key)
        if entry is None:
            raise NotFoundError(f"key {req.key!r} has no value (never set, deleted, or expired)")
        return _wire_entry(entry, ctx.codec)

    async def _get_many(self, req: GetManyRequest, ctx: RequestContext) -> GetManyReply:
        found = await self.store.get_many(req.keys)
        entries = [_wire_entry(e, ctx.codec) for e in found if e is not None]
        missing = [key for key, e in zip(req.keys, found, strict=True) if e is None]
        return GetManyReply(entries, missing)

    async def _keys(self, req: KeysRequest, ctx: RequestContext) -> KeysReply:
        return KeysReply(req.pattern, await self.store.keys(req.pattern))

    async def _delete(self, req: DeleteRequest, ctx: RequestContext) -> DeleteReply:
        revision = await self.store.delete(req.key, req.expected_revision)
        return DeleteReply(req.key, revision is not None, revision)

    # --- versions -------------------------------------------------------------------------------
    async def _history(self, req: KeyRequest, ctx: RequestContext) -> HistoryReply:
        entries = await self.store.history(req.key)
        if not entries:
            raise NotFoundError(f"key {req.key!r} has no history: it was never set")
        return HistoryReply(req.key, [_version(e, ctx.codec) for e in entries])

    async def _restore(self, req: RestoreRequest, ctx: RequestContext) -> SetReply:
        entry = await self.store.entry_at(req.key, req.revision)
        if entry is None:
            kept = [e.revision for e in await self.store.history(req.key)]
            listed = ", ".join(map(str, kept)) if kept else "none"
            raise NotFoundError(
                f"key {req.key!r} has no revision {req.revision}: the revisions kept are {listed} "
                f"(the last {self.state_settings.max_versions}, CORRAL_STATE_MAX_VERSIONS)"
            )
        if entry.operation is not Operation.SET or entry.value is None:
            raise ValidationError(
                f"revision {req.revision} of {req.key!r} is a {entry.operation.value}, not a value: "
                "restore a revision that holds one (see history)"
            )
        return SetReply(req.key, await self.store.put(req.key, entry.value))

    # --- snapshots ------------------------------------------------------------------------------
    async def _snapshot_create(self, req: SnapshotCreateRequest, ctx: RequestContext) -> SnapshotInfo:
        return await self.snapshots.create(req.metadata)

    async def _snapshot_list(self, _: None, ctx: RequestContext) -> dict[str, list[SnapshotInfo]]:
        return {"snapshots": await self.snapshots.list()}

    async def _snapshot_restore(self, req: SnapshotIdRequest, ctx: RequestContext) -> RestoreReport:
        return await self.snapshots.restore(req.id)

    async def _snapshot_delete(self, req: SnapshotIdRequest, ctx: RequestContext) -> SnapshotDeleteReply:
        if not await self.snapshots.delete(req.id):
            raise NotFoundError(f"no snapshot {req.id!r}: snapshot.list shows the ids there are")
        return SnapshotDeleteReply(req.id, True)

    async def _status(self, _: None, ctx: RequestContext) -> dict[str, Any]:
        return {
            **self.identity(),
            "bucket": self.subjects.state_bucket,
            "max_versions": self.state_settings.max_versions,
            "max_value_bytes": self.state_settings.max_value_bytes,
            "events_published": self.events.published if self.events else 0,
        }


def _wire_value(data: bytes | None, codec: Codec) -> Any:
    """A stored value for a reply: embedded as raw JSON, or decoded for msgpack."""
    if data is None:
        return None
    return raw_json(data) if codec is JSON else decode_value(data)


def _wire_entry(entry: KVEntry, codec: Codec) -> Entry:
    return Entry(entry.key, _wire_value(entry.value, codec), entry.revision, entry.time)


def _version(entry: KVEntry, codec: Codec) -> Version:
    return Version(entry.revision, entry.operation, _wire_value(entry.value, codec), entry.time)
