"""`client.state`: shared, versioned state from a program.

    async with await Client.connect() as client:
        state = client.state
        revision = await state.set("app.version", "1.0.0")
        entry = await state.get("app.version")            # entry.value, entry.revision
        await state.set("app.version", "1.1.0", expected_revision=entry.revision)  # or ConflictError
        async with await state.subscribe("app.*") as changes:
            async for change in changes:                   # key, old_value, new_value, revision, ...
                ...

Three ways in:

* `StateClient` methods are requests to the state service (`<prefix>.state.<verb>`); errors
  come back as the typed exception of their code (ValidationError, NotFoundError,
  ConflictError, UnavailableError, CallTimeoutError).
* `state.direct` reads and writes the state bucket itself, one JetStream round trip per
  call, with the same key and value checks: for hot paths, and usable while no state
  service runs (the bucket must exist: the service creates it on its first start).
* `subscribe` follows the bucket directly too; a watch survives reconnects and nats-server
  restarts without missing or repeating a change (see `corral.state.watch`).

`set_state`, `get_state`, `get_state_versions`, `restore_state_version`, `create_snapshot`,
`restore_snapshot` are StateManager-style names for the same calls.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Final, TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient

from corral.bus import request
from corral.errors import (
    CallTimeoutError,
    ConflictError,
    NotFoundError,
    UnavailableError,
    ValidationError,
    error_from_payload,
)
from corral.state.changes import Change
from corral.state.errors import jetstream_errors
from corral.state.keys import validate_key, validate_pattern
from corral.state.messages import (
    DeleteReply,
    Entry,
    GetManyReply,
    HistoryReply,
    KeysReply,
    SetReply,
    SnapshotDeleteReply,
    Version,
)
from corral.state.settings import StateSettings
from corral.state.snapshots import RestoreReport, SnapshotInfo
from corral.state.store import StateStore
from corral.state.values import check_size, decode_value, encode_value
from corral.state.watch import ChangeStream
from corral.subjects import DEFAULT_PREFIX, Subjects

__all__ = ["Change", "DirectState", "Entry", "StateClient", "StateManager", "Version", "Watch"]

log = logging.getLogger("corral.sdk.state")

T = TypeVar("T")
ChangeCallback = Callable[[Change], Awaitable[None] | None]

_encode = msgspec.json.Encoder().encode
_WATCH_BUFFER: Final = 1024  # changes a watch holds for a slow reader before it stops pulling
_UPDATE_ATTEMPTS: Final = 1000
_BACKOFF_MAX: Final = 0.05  # seconds, between attempts of `update`


class _Reply(msgspec.Struct):
    success: bool
    payload: msgspec.Raw = msgspec.Raw(b"null")


class _Snapshots(msgspec.Struct):
    snapshots: list[SnapshotInfo]


def _check_value(key: str, value: Any, limit: int) -> bytes:
    try:
        return check_size(encode_value(value), limit, key)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


def _check_key(key: str) -> str:
    try:
        return validate_key(key)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


class StateClient:
    """The state service's verbs, the direct KV path (`direct`) and watches (`subscribe`)."""

    def __init__(
        self,
        nc: NatsClient,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 10.0,
        settings: StateSettings | None = None,
    ) -> None:
        self.nc = nc
        self.subjects = Subjects(prefix)
        self.timeout = timeout
        self.settings = settings or StateSettings.from_env()
        self.direct = DirectState(nc, self.subjects.state_bucket, self.settings)

    async def _call(self, verb: str, body: dict[str, Any] | None, reply_type: type[T]) -> T:
        subject = self.subjects.service("state", verb)
        try:
            msg = await request(
                self.nc, subject, _encode(body) if body is not None else b"", timeout=self.timeout
            )
        except nats.errors.NoRespondersError:
            raise UnavailableError(
                f"no state service answers {subject}: is the system up (corral up)?"
            ) from None
        except nats.errors.TimeoutError:
            raise CallTimeoutError(f"no reply to {subject} within {self.timeout}s") from None
        reply = msgspec.json.decode(msg.data, type=_Reply)
        if not reply.success:
            raise error_from_payload(msgspec.json.decode(reply.payload))
        return msgspec.json.decode(reply.payload, type=reply_type)

    # --- keys -----------------------------------------------------------------------------------
    async def set(
        self, key: str, value: Any, *, expected_revision: int | None = None, ttl: float | None = None
    ) -> int:
        """Store `value` (any JSON value); returns the new revision.

        `expected_revision`: only if the key is still at that revision (0: only if it has no
        value), else ConflictError. `ttl`: seconds (at least 1) until the value expires.
        """
        data = _check_value(_check_key(key), value, self.settings.max_value_bytes)
        body: dict[str, Any] = {"key": key, "value": msgspec.Raw(data)}  # encoded once, as checked
        if expected_revision is not None:
            body["expected_revision"] = expected_revision
        if ttl is not None:
            body["ttl"] = ttl
        return (await self._call("set", body, SetReply)).revision

    async def get(self, key: str) -> Entry:
        """The current value and its revision; NotFoundError when the key has none."""
        return await self._call("get", {"key": key}, Entry)

    async def get_many(self, keys: list[str]) -> dict[str, Entry]:
        """The keys that have a value, with their entries; missing keys are left out."""
        reply = await self._call("get_many", {"keys": keys}, GetManyReply)
        return {entry.key: entry for entry in reply.entries}

    async def keys(self, pattern: str = ">") -> list[str]:
        """The keys with a value under a NATS pattern (`app.*`, `app.>`), sorted."""
        return (await self._call("keys", {"pattern": pattern}, KeysReply)).keys

    async def delete(self, key: str, *, expected_revision: int | None = None) -> bool:
        """Delete the value (history is kept); False if the key had none."""
        body: dict[str, Any] = {"key": key}
        if expected_revision is not None:
            body["expected_revision"] = expected_revision
        return (await self._call("delete", body, DeleteReply)).deleted

    async def update(self, key: str, change: Callable[[Any], Any], *, default: Any = None) -> tuple[Any, int]:
        """Read, apply `change` to the value (or `default`), write back with compare-and-set; retry
        on conflict. Returns the value written and its revision."""
        for attempt in range(_UPDATE_ATTEMPTS):
            try:
                entry = await self.get(key)
                current, expected = entry.value, entry.revision
            except NotFoundError:
                current, expected = default, 0
            new = change(current)
            try:
                return new, await self.set(key, new, expected_revision=expected)
            except ConflictError:
                # Jittered backoff: writers that lost together do not all retry together.
                await asyncio.sleep(random.uniform(0, min(_BACKOFF_MAX, 0.001 * 2**attempt)))
        raise ConflictError(f"key {key!r} kept changing: {_UPDATE_ATTEMPTS} attempts to update it lost")

    # --- versions -------------------------------------------------------------------------------
    async def history(self, key: str) -> list[Version]:
        """The kept revisions of `key`, oldest first (up to the service's max_versions)."""
        return (await self._call("history", {"key": key}, HistoryReply)).versions

    async def restore(self, key: str, revision: int) -> int:
        """Write the value `key` had at `revision` back as a new revision; returns it."""
        return (await self._call("restore", {"key": key, "revision": revision}, SetReply)).revision

    # --- snapshots ------------------------------------------------------------------------------
    async def create_snapshot(self, metadata: dict[str, Any] | None = None) -> SnapshotInfo:
        return await self._call("snapshot.create", {"metadata": metadata or {}}, SnapshotInfo)

    async def list_snapshots(self) -> list[SnapshotInfo]:
        return (await self._call("snapshot.list", None, _Snapshots)).snapshots

    async def restore_snapshot(self, snapshot_id: str) -> RestoreReport:
        """Make the store equal to the snapshot; reports what was rewritten, recreated and deleted."""
        return await self._call("snapshot.restore", {"id": snapshot_id}, RestoreReport)

    async def delete_snapshot(self, snapshot_id: str) -> bool:
        return (await self._call("snapshot.delete", {"id": snapshot_id}, SnapshotDeleteReply)).deleted

    # --- watching -------------------------------------------------------------------------------
    async def subscribe(
        self,
        pattern: str = ">",
        callback: ChangeCallback | None = None,
        *,
        from_current: bool = False,
        since: int | None = None,
        heartbeat: float = 1.0,
    ) -> Watch:
        """Every change under `pattern`, in order, from now (or first the current values with
        `from_current`, or every change after revision `since`). With `callback` (sync or
        async) changes are pushed to it; otherwise iterate the returned Watch."""
        try:
            validate_pattern(pattern)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        watch = Watch(
            self.nc,
            self.subjects.state_bucket,
            pattern,
            callback,
            from_current=from_current,
            since=since,
            heartbeat=heartbeat,
        )
        await watch.start()
        return watch

    # --- StateManager-style names ---------------------------------------------------------------
    async def set_state(self, key: str, value: Any, *, ttl: float | None = None) -> int:
        return await self.set(key, value, ttl=ttl)

    async def get_state(self, key: str, default: Any = None) -> Any:
        """The value of `key`, or `default` when it has none."""
        try:
            return (await self.get(key)).value
        except NotFoundError:
            return default

    async def get_state_versions(self, key: str) -> list[Version]:
        return await self.history(key)

    async def restore_state_version(self, key: str, revision: int) -> int:
        return await self.restore(key, revision)


StateManager = StateClient  # the name other state libraries use for the same object


class DirectState:
    """The state bucket without the state service: one JetStream round trip per call."""

    def __init__(self, nc: NatsClient, bucket: str, settings: StateSettings) -> None:
        self.settings = settings
        self.store = StateStore(nc, nc.jetstream(), bucket, settings)

    @jetstream_errors
    async def get(self, key: str) -> Entry:
        entry = await self.store.get(_check_key(key))
        if entry is None:
            raise NotFoundError(f"key {key!r} has no value (never set, deleted, or expired)")
        return Entry(entry.key, decode_value(entry.value), entry.revision, entry.time)

    @jetstream_errors
    async def set(
        self, key: str, value: Any, *, expected_revision: int | None = None, ttl: float | None = None
    ) -> int:
        data = _check_value(_check_key(key), value, self.settings.max_value_bytes)
        if ttl is not None and ttl < 1:
            raise ValidationError(f"ttl {ttl} is under 1 second, the shortest JetStream keeps a value")
        return await self.store.put(key, data, expected_revision=expected_revision, ttl=ttl)

    @jetstream_errors
    async def delete(self, key: str, *, expected_revision: int | None = None) -> bool:
        return await self.store.delete(_check_key(key), expected_revision) is not None


class Watch:
    """A running subscription: iterate it, or let it call the callback; `stop()` ends it."""

    _END: Final = object()

    def __init__(
        self,
        nc: NatsClient,
        bucket: str,
        pattern: str,
        callback: ChangeCallback | None,
        *,
        from_current: bool,
        since: int | None,
        heartbeat: float,
    ) -> None:
        self.pattern = pattern
        self.callback = callback
        self._queue: asyncio.Queue[Change | object] = asyncio.Queue(_WATCH_BUFFER)
        self._stream = ChangeStream(
            nc,
            nc.jetstream(),
            bucket,
            pattern,
            self._deliver,
            since=since,
            include_current=from_current,
            heartbeat=heartbeat,
        )
        self._stopped = False

    @property
    def last_revision(self) -> int:
        return self._stream.last_revision

    @property
    def resumes(self) -> int:
        """How often the watch had to make a new consumer (after a reconnect or server restart)."""
        return max(0, self._stream.feed.consumers - 1)

    async def start(self) -> None:
        await jetstream_errors(self._stream.start)()

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self._stream.stop()
        while True:  # make room for the end marker even if nobody reads
            try:
                self._queue.put_nowait(self._END)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()

    async def _deliver(self, change: Change) -> None:
        if self.callback is None:
            await self._queue.put(change)
            return
        try:
            result = self.callback(change)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception(
                "watch %s: the callback failed on %s at revision %d",
                self.pattern,
                change.key,
                change.revision,
            )

    def __aiter__(self) -> AsyncIterator[Change]:
        return self._changes()

    async def _changes(self) -> AsyncIterator[Change]:
        while True:
            item = await self._queue.get()
            if item is self._END:
                return
            assert isinstance(item, Change)
            yield item

    async def next(self, timeout: float | None = None) -> Change:
        """The next change; TimeoutError after `timeout` seconds, StopAsyncIteration once stopped."""
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if item is self._END:
            self._queue.put_nowait(self._END)
            raise StopAsyncIteration
        assert isinstance(item, Change)
        return item

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
