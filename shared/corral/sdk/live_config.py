"""What an SDK module instance does with live configuration when it starts, before it serves.

1. It records the JSON Schema of its config type in KV `corral_config` (key `<module>.schema`),
   so the orchestrator can check a change even while no instance runs.
2. It applies the stored config (key `<module>`), so an instance that starts or restarts runs
   the current live version, not just its defaults or corral.toml.

A stored config the module refuses (a newer module version changed the type, say) is logged.
The instance then keeps its defaults, and `status` shows `config_version` 0, or the version it
still runs. Without JetStream the module starts anyway, with its defaults.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec
import nats.js.errors
from nats.js.kv import KeyValue

from corral.bus import ensure_kv
from corral.errors import CorralError
from corral.live_config import ConfigDocument, SchemaRecord, config_bucket_spec, schema_key
from corral.sdk.control import apply_config, config_schema

if TYPE_CHECKING:
    from corral.sdk.service import ModuleService

__all__ = ["adopt_stored_config"]

log = logging.getLogger("corral.sdk")

_encode = msgspec.json.Encoder().encode


async def adopt_stored_config(service: ModuleService) -> None:
    module = service.module
    try:
        kv = await _bucket(service)
        await _record_schema(kv, service)
        entry = await kv.get(module.name)
    except nats.js.errors.KeyNotFoundError:
        return  # never configured: the defaults stand
    except Exception as exc:
        log.warning("module %s: cannot read its stored config (%r); using its defaults", module.name, exc)
        return
    try:
        document = msgspec.json.decode(entry.value or b"", type=ConfigDocument)
    except msgspec.DecodeError as exc:
        log.error("module %s: the stored config is not a config document (%s); ignoring it", module.name, exc)
        return
    if document.version == module.config_version:
        return  # already running it (an in-process restart keeps the module object)
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
