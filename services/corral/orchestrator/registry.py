"""The module registry in KV `corral_modules`: records and recovery histories.

The leader keeps the records in memory and writes each change through; any replica reads the
bucket (`load`), so a standby answers reads and a new leader starts from the same truth.
"""

from __future__ import annotations

import contextlib
import logging
import time

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from corral.bus import KVSpec, ensure_kv, kv_values
from corral.orchestrator.records import HISTORY_KEEP, ModuleRecord, RecoveryEntry, history_key, module_key
from corral.subjects import Subjects

__all__ = ["ModuleRegistry"]

log = logging.getLogger("corral.orchestrator.registry")

_encode = msgspec.json.Encoder().encode
_decode_record = msgspec.json.Decoder(ModuleRecord).decode
_decode_history = msgspec.json.Decoder(list[RecoveryEntry]).decode


class ModuleRegistry:
    def __init__(self, js: JetStreamContext, subjects: Subjects) -> None:
        self.js = js
        self.subjects = subjects
        self.records: dict[str, ModuleRecord] = {}
        self.histories: dict[str, list[RecoveryEntry]] = {}
        self._kv: KeyValue | None = None

    async def open(self) -> None:
        if self._kv is None:
            self._kv = await ensure_kv(self.js, KVSpec(bucket=self.subjects.modules_bucket, history=5))

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("the module registry is not open")
        return self._kv

    async def load(self) -> dict[str, ModuleRecord]:
        """Every record in the bucket (what a standby answers, and where a new leader starts)."""
        records: dict[str, ModuleRecord] = {}
        for key, value in (
            await kv_values(self.js, self.subjects.modules_bucket, "module.*", self.kv)
        ).items():
            try:
                records[key.removeprefix("module.")] = _decode_record(value)
            except msgspec.DecodeError as exc:
                log.warning("skipping unreadable registry entry %s: %s", key, exc)
        return records

    async def load_history(self, name: str) -> list[RecoveryEntry]:
        try:
            entry = await self.kv.get(history_key(name))
        except KeyNotFoundError:
            return []
        return _decode_history(entry.value) if entry.value else []

    async def save(self, record: ModuleRecord, leader: str) -> None:
        record.leader = leader
        record.updated = time.time()
        self.records[record.name] = record
        await self.kv.put(module_key(record.name), _encode(record))

    async def remove(self, name: str) -> None:
        self.records.pop(name, None)
        self.histories.pop(name, None)
        for key in (module_key(name), history_key(name)):
            with contextlib.suppress(KeyNotFoundError):
                await self.kv.delete(key)

    async def append_history(self, name: str, entry: RecoveryEntry) -> None:
        history = self.histories.setdefault(name, [])
        if not any(e is entry for e in history):  # entries are updated in place, then saved again
            history.append(entry)
        del history[:-HISTORY_KEEP]
        await self.save_history(name)

    async def save_history(self, name: str) -> None:
        await self.kv.put(history_key(name), _encode(self.histories.get(name, [])))
