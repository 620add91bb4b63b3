"""The versions of every module's config in KV `corral_config` (see corral.live_config).

Every write is a compare-and-set on the key's revision, so two orchestrator replicas changing
the same module's config cannot interleave: the second one gets CONFLICT.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from corral.bus import ensure_kv
from corral.errors import ConflictError
from corral.live_config import ConfigDocument, SchemaRecord, config_bucket_spec, schema_key
from corral.subjects import Subjects

__all__ = ["ConfigStore"]

_encode = msgspec.json.Encoder().encode
_decode_document = msgspec.json.Decoder(ConfigDocument).decode
_decode_schema = msgspec.json.Decoder(SchemaRecord).decode


class ConfigStore:
    def __init__(self, js: JetStreamContext, subjects: Subjects) -> None:
        self.js = js
        self.subjects = subjects
        self._kv: KeyValue | None = None

    async def start(self) -> None:
        self._kv = await ensure_kv(self.js, config_bucket_spec(self.subjects))

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("ConfigStore is not started")
        return self._kv

    async def current(self, module: str) -> tuple[int, ConfigDocument | None]:
        """(revision, document) of the module's config; (0, None) when it has none."""
        try:
            entry = await self.kv.get(module)
        except nats.js.errors.KeyNotFoundError:
            return 0, None
        revision = entry.revision or 0
        return revision, _decode_document(entry.value) if entry.value else None

    async def history(self, module: str) -> list[ConfigDocument]:
        """The kept versions, oldest first (the bucket keeps the last CONFIG_HISTORY)."""
        try:
            entries = await self.kv.history(module)
        except nats.js.errors.NoKeysError:
            return []
        return [_decode_document(entry.value) for entry in entries if entry.value]

    async def version(self, module: str, version: int) -> ConfigDocument | None:
        return next((doc for doc in await self.history(module) if doc.version == version), None)

    async def schema(self, module: str) -> SchemaRecord | None:
        try:
            entry = await self.kv.get(schema_key(module))
        except nats.js.errors.KeyNotFoundError:
            return None
        return _decode_schema(entry.value) if entry.value else None

    async def commit(self, document: ConfigDocument, last_revision: int) -> int:
        """Write `document` if the key is still at `last_revision` (0: absent); else ConflictError."""
        try:
            if last_revision == 0:
                return int(await self.kv.create(document.module, _encode(document)))
            return int(await self.kv.update(document.module, _encode(document), last=last_revision))
        except nats.js.errors.KeyWrongLastSequenceError:
            raise ConflictError(
                f"the config of {document.module!r} changed while this change was applied; "
                "read it again (corral config get) and retry"
            ) from None

    async def seed(self, module: str, values: dict[str, Any]) -> ConfigDocument | None:
        """Store `values` as version 1 when the module has no config yet; the new document or None."""
        document = ConfigDocument(
            module=module, version=1, values=values, time=time.time(), source="corral.toml"
        )
        try:
            await self.commit(document, 0)
        except ConflictError:
            return None  # it has a config already: live changes win over the file
        return document
