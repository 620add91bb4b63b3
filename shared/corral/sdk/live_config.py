"""What an SDK module instance does with live configuration, from before it serves until it stops.

1. It records the JSON Schema of its config type in KV `corral_config` (key `<module>.schema`),
   so the orchestrator can check a change even while no instance runs.
2. It applies the stored config (key `<module>`) before serving, so an instance that starts or
   restarts runs the current live version, not just its defaults or corral.toml.
3. It keeps watching that key. A version committed while the instance was starting, and so
   missed by the orchestrator's `config` broadcast, is applied when it lands. A version the
   broadcast already brought (the same version number) is not applied twice.

A stored config the module refuses (a newer module version changed the type, say) is logged,
and the instance keeps what it runs; `status` shows its `config_version`. Without JetStream the
module starts anyway, with its defaults, and still takes `config` verbs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec
import nats.js.errors
from nats.js.kv import KeyValue

from corral.bus import ensure_kv
from corral.component import Component, cancel_and_wait
from corral.errors import CorralError
from corral.live_config import ConfigDocument, SchemaRecord, config_bucket_spec, schema_key
from corral.sdk.control import apply_config, config_schema

if TYPE_CHECKING:
    from corral.sdk.service import ModuleService

__all__ = ["LiveConfigFollower"]

log = logging.getLogger("corral.sdk")

_encode = msgspec.json.Encoder().encode
INITIAL_READ_TIMEOUT = 5.0  # seconds start() waits for the stored config before serving without it


class LiveConfigFollower(Component):
    def __init__(self, service: ModuleService) -> None:
        self.service = service
        self.module = service.module
        self._watcher: KeyValue.KeyWatcher | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        name = self.module.name
        try:
            kv = await _bucket(self.service)
            await _record_schema(kv, self.service)
            self._watcher = await kv.watch(name)
            async with asyncio.timeout(INITIAL_READ_TIMEOUT):
                while (entry := await self._watcher.updates(timeout=None)) is not None:  # type: ignore[no-untyped-call]
                    await self._adopt(entry)
        except Exception as exc:
            log.warning("module %s: cannot read its stored config (%r); using its defaults", name, exc)
        if self._watcher is not None:
            self._task = asyncio.create_task(self._follow(self._watcher), name=f"{name}-config-watch")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()  # type: ignore[no-untyped-call]
            self._watcher = None

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is not None:
                await self._adopt(entry)

    async def _adopt(self, entry: KeyValue.Entry) -> None:
        module = self.module
        if not entry.value:
            return  # deleted: the instance keeps what it runs
        try:
            document = msgspec.json.decode(entry.value, type=ConfigDocument)
        except msgspec.DecodeError as exc:
            log.error(
                "module %s: the stored config is not a config document (%s); ignoring it", module.name, exc
            )
            return
        if document.version == module.config_version:
            return  # already running it: the broadcast brought it, or an in-process restart
        try:
            config: Any = document.values
            if module.config_type is not None:
                config = msgspec.convert(document.values, module.config_type)
            await apply_config(module, config, document.version)
        except (msgspec.ValidationError, CorralError) as exc:
            log.error(
                "module %s refuses its stored config version %d: %s; it runs config version %d",
                module.name,
                document.version,
                exc,
                module.config_version,
            )


async def _bucket(service: ModuleService) -> KeyValue:
    try:
        return await service.js.key_value(service.subjects.config_bucket)
    except nats.js.errors.BucketNotFoundError:
        kv: KeyValue = await ensure_kv(service.js, config_bucket_spec(service.subjects))
        return kv


async def _record_schema(kv: KeyValue, service: ModuleService) -> None:
    """Write the schema unless the bucket already holds the same one (most starts change nothing)."""
    declared = config_schema(service)
    key = schema_key(service.module.name)
    try:
        stored = msgspec.json.decode((await kv.get(key)).value or b"", type=SchemaRecord)
        if (stored.schema, stored.typed, stored.module_version) == (
            declared.schema,
            declared.typed,
            declared.module_version,
        ):
            return
    except (nats.js.errors.KeyNotFoundError, msgspec.DecodeError):
        pass
    record = SchemaRecord(
        module=declared.module, schema=declared.schema, typed=declared.typed,
        module_version=declared.module_version, instance=declared.instance, time=time.time(),
    )  # fmt: skip
    await kv.put(key, _encode(record))
