"""The state bucket: JetStream KV `<prefix>_state` on file storage, one KV key per state key.

Keys are the dotted keys themselves and values their JSON bytes, so every NATS tool reads
the same store (`nats kv get corral_state app.version`). Writes are plain JetStream publishes
to `$KV.<bucket>.<key>` so that one request can carry both a compare-and-set
(`Nats-Expected-Last-Subject-Sequence`) and a per-key TTL (`Nats-TTL`), which nats-py's KV
methods do not combine; reads of one key are direct gets (`$JS.API.DIRECT.GET`), one round
trip that any replica answers.

`open()` makes sure the bucket allows what this needs: direct gets, per-message TTLs, and
server-placed delete markers when a TTL runs out, so watchers see an `expire` change. The
marker TTL is 1 s, the smallest JetStream has: a message TTL shorter than the marker TTL is
raised to it, so a longer marker TTL would lengthen every short TTL a caller asks for.
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from typing import Final

import msgspec
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from corral.bus import KVSpec, ensure_kv
from corral.errors import ConflictError
from corral.state.consumer import read_latest, read_messages
from corral.state.entries import KVEntry, Operation, entry_from_parts, kv_prefix
from corral.state.settings import StateSettings
from corral.state.watch import kv_stream

__all__ = ["StateStore", "parse_time"]

EXPIRY_MARKER_TTL: Final = 1.0
HEADER_SLACK: Final = 1024  # the bucket's message limit leaves room for headers beside the value
_WRONG_LAST_SEQUENCE: Final = (10071, 10164)
_LAST_SEQUENCE = re.compile(r"(\d+)\s*$")
_DELETE_ATTEMPTS: Final = 20


def parse_time(stamp: str | None) -> float:
    """Seconds since the epoch from JetStream's RFC 3339 time stamps (nanoseconds are cut)."""
    return datetime.fromisoformat(stamp).timestamp() if stamp else 0.0


class StateStore:
    def __init__(self, nc: Client, js: JetStreamContext, bucket: str, settings: StateSettings) -> None:
        self.nc = nc
        self.js = js
        self.bucket = bucket
        self.settings = settings
        self.stream = kv_stream(bucket)
        self.prefix = kv_prefix(bucket)

    async def open(self) -> None:
        """Create the bucket, or bring an existing one to this service's settings."""
        spec = KVSpec(
            bucket=self.bucket,
            history=self.settings.max_versions,
            max_value_size=self.settings.max_value_bytes + HEADER_SLACK,
            replicas=self.settings.replicas,
        )
        await ensure_kv(self.js, spec)
        config = (await self.js.stream_info(self.stream)).config
        if not (
            config.allow_direct
            and config.allow_msg_ttl
            and config.subject_delete_marker_ttl == EXPIRY_MARKER_TTL
        ):
            config.allow_direct = True
            config.allow_msg_ttl = True
            config.subject_delete_marker_ttl = EXPIRY_MARKER_TTL
            await self.js.update_stream(config)

    # --- writes ---------------------------------------------------------------------------------
    async def put(
        self, key: str, data: bytes, *, expected_revision: int | None = None, ttl: float | None = None
    ) -> int:
        """Store `data` as the new value of `key`; returns its revision.

        With `expected_revision`, only if the key is still at that revision (0: only if it has
        no value, including after a delete); ConflictError otherwise.
        """
        headers: dict[str, str] = {}
        if ttl is not None:
            headers[api.Header.MSG_TTL] = f"{round(ttl * 1000)}ms"
        if expected_revision == 0:
            return await self._create(key, data, headers)
        if expected_revision is not None:
            headers[api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(expected_revision)
        return await self._publish(key, data, headers, expected_revision)

    async def _create(self, key: str, data: bytes, headers: dict[str, str]) -> int:
        # A deleted key still has messages (the delete marker), so "no value" means: last
        # sequence 0, or the sequence of the marker that removed it.
        marker = await self._last_message(key)
        if marker is not None and marker.operation is Operation.SET:
            raise self._conflict(key, 0, marker.revision)
        expected = marker.revision if marker else 0
        headers[api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(expected)
        return await self._publish(key, data, headers, 0)

    async def _publish(self, key: str, data: bytes, headers: dict[str, str], expected: int | None) -> int:
        try:
            ack = await self.js.publish(self.prefix + key, data, headers=headers or None)
        except nats.js.errors.APIError as exc:
            if exc.err_code in _WRONG_LAST_SEQUENCE and expected is not None:
                match = _LAST_SEQUENCE.search(exc.description or "")
                raise self._conflict(key, expected, int(match.group(1)) if match else None) from None
            raise
        return int(ack.seq)

    def _conflict(self, key: str, expected: int, current: int | None) -> ConflictError:
        wanted = "to have no value" if expected == 0 else f"at revision {expected}"
        now = "it has a value" if expected == 0 else "another writer changed it"
        at = f" (now at revision {current})" if current else ""
        return ConflictError(f"key {key!r} was expected {wanted}, but {now}{at}: read it again and retry")

    async def delete(self, key: str, expected_revision: int | None = None) -> int | None:
        """Place a delete marker (history is kept, so `restore` can bring the value back).

        Returns the marker's revision, or None when the key had no value.
        """
        if expected_revision is not None:
            return await self._delete_at(key, expected_revision)
        for _ in range(_DELETE_ATTEMPTS):
            current = await self.get(key)
            if current is None:
                return None
            try:
                return await self._delete_at(key, current.revision)
            except ConflictError:
                continue  # written in between: delete what is there now
        raise ConflictError(f"key {key!r} kept changing while it was being deleted; retry")

    async def _delete_at(self, key: str, revision: int) -> int:
        headers = {"KV-Operation": "DEL", api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(revision)}
        return await self._publish(key, b"", headers, revision)

    # --- reads ----------------------------------------------------------------------------------
    async def get(self, key: str) -> KVEntry | None:
        """The current value of `key`; None when it has none (never set, deleted or expired)."""
        entry = await self._last_message(key)
        return entry if entry is not None and entry.operation is Operation.SET else None

    async def get_many(self, keys: list[str]) -> list[KVEntry | None]:
        return list(await asyncio.gather(*(self.get(key) for key in keys)))

    async def _last_message(self, key: str) -> KVEntry | None:
        subject = self.prefix + key
        msg = await self.nc.request(f"$JS.API.DIRECT.GET.{self.stream}.{subject}", b"", timeout=5.0)
        return self._direct_entry(msg, subject)

    async def entry_at(self, key: str, revision: int) -> KVEntry | None:
        """The message of `key` at `revision`; None if that revision is not one of this key's."""
        body = msgspec.json.encode({"seq": revision})
        msg = await self.nc.request(f"$JS.API.DIRECT.GET.{self.stream}", body, timeout=5.0)
        return self._direct_entry(msg, self.prefix + key)

    def _direct_entry(self, msg: Msg, subject: str) -> KVEntry | None:
        headers = msg.headers or {}
        status = headers.get("Status")
        if status == "404":
            return None
        if status:
            raise nats.js.errors.APIError(code=int(status), description=headers.get("Description"))
        if headers.get("Nats-Subject") != subject:
            return None
        return entry_from_parts(
            self.prefix,
            subject,
            msg.data,
            headers,
            int(headers["Nats-Sequence"]),
            parse_time(headers.get("Nats-Time-Stamp")),
        )

    async def keys(self, pattern: str) -> list[str]:
        """The keys with a value under `pattern`, sorted."""
        _, messages = await read_latest(
            self.nc, self.js, self.stream, self.prefix + pattern, headers_only=True
        )
        found = (self._entry(msg, fields.stream_seq, fields.timestamp) for msg, fields in messages)
        return sorted(entry.key for entry in found if entry.operation is Operation.SET)

    async def history(self, key: str) -> list[KVEntry]:
        """Every revision of `key` the bucket keeps, oldest first (delete markers included)."""
        _, messages = await read_messages(
            self.nc, self.js, self.stream, self.prefix + key, policy=api.DeliverPolicy.ALL
        )
        return [self._entry(msg, fields.stream_seq, fields.timestamp) for msg, fields in messages]

    async def read_all(self) -> tuple[int, dict[str, bytes]]:
        """Every key's value at one revision, and that revision: what a snapshot holds."""
        cut, messages = await read_latest(self.nc, self.js, self.stream, self.prefix + ">")
        entries = (self._entry(msg, fields.stream_seq, fields.timestamp) for msg, fields in messages)
        return cut, {e.key: e.value for e in entries if e.operation is Operation.SET and e.value is not None}

    def _entry(self, msg: Msg, revision: int, time: float) -> KVEntry:
        return entry_from_parts(self.prefix, msg.subject, msg.data, msg.headers, revision, time)
