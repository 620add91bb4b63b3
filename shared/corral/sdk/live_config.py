"""What an SDK module instance does with live configuration, from before it serves until it stops.

1. It records the JSON Schema of its config type in KV `corral_config` (key `<module>.schema`),
   so the orchestrator can check a change even while no instance runs.
2. It applies the stored config (key `<module>`) before serving, so an instance that starts or
   restarts runs the current live version, not just its defaults or corral.toml.
3. It keeps following that key. A version committed while the instance was starting, and so
   missed by the orchestrator's `config` broadcast, is applied when it lands. A version the
   broadcast already brought (the same version number) is not applied twice, and an older one
   never replaces a newer one.

It follows the key with a plain subscription to the key's subject, which KV writes are published
on, and reads the key again every RECHECK_EVERY seconds for a version published while it was
disconnected. A KV watch would do both, but it is an ordered consumer, whose flow-control check
wakes the process four times a second: more than all of health monitoring costs an idle module.

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
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
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
RECHECK_EVERY = 30.0  # seconds between reads of the key, for versions missed while disconnected


class LiveConfigFollower(Component):
    def __init__(self, service: ModuleService) -> None:
        self.service = service
        self.module = service.module
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._newest = 0  # the newest stored version seen, so an older one never wins

    async def start(self) -> None:
        name = self.module.name
        updates: asyncio.Queue[Msg] = asyncio.Queue()
        try:
            kv = await _bucket(self.service)
            await _record_schema(kv, self.service)
            # Subscribed before the read, so no version lands between the two unseen.
            subject = f"$KV.{self.service.subjects.config_bucket}.{name}"
            self._sub = await self.service.nc.subscribe(subject, cb=updates.put)
            async with asyncio.timeout(INITIAL_READ_TIMEOUT):
                await self._read(kv)
        except Exception as exc:
            log.warning("module %s: cannot read its stored config (%r); using its defaults", name, exc)
            return
        self._task = asyncio.create_task(self._follow(kv, updates), name=f"{name}-config-follow")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _follow(self, kv: KeyValue, updates: asyncio.Queue[Msg]) -> None:
        while True:
            try:
                async with asyncio.timeout(RECHECK_EVERY):
                    msg = await updates.get()
            except TimeoutError:
                try:
                    await self._read(kv)
                except Exception as exc:  # NATS down: the next read tries again
                    log.debug("module %s: config re-read failed: %r", self.module.name, exc)
                continue
            await self._adopt(msg.data)

    async def _read(self, kv: KeyValue) -> None:
        try:
            entry = await kv.get(self.module.name)
        except nats.js.errors.KeyNotFoundError:
            return
        await self._adopt(entry.value or b"")

    async def _adopt(self, value: bytes) -> None:
        module = self.module
        if not value:
            self._newest = 0  # deleted: the instance keeps what it runs; numbering may start over
            return
        try:
            document = msgspec.json.decode(value, type=ConfigDocument)
        except msgspec.DecodeError as exc:
            log.error(
                "module %s: the stored config is not a config document (%s); ignoring it", module.name, exc
            )
            return
        if document.version <= self._newest:
            return  # seen already, or older than what was seen (a re-read racing an update)
        self._newest = document.version
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
