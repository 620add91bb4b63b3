"""Live configuration: the documents kept in KV `corral_config`. The orchestrator writes them,
and SDK modules read them when they start.

Keys in the bucket (module names are one subject token, so the two kinds never collide):

* `<module>`: the module's config, a ConfigDocument. Each change is a new revision. The
  bucket keeps the last `CONFIG_HISTORY` of them, which are what history and rollback read.
* `<module>.schema`: the JSON Schema of the module's `@module.on_config` type (a
  SchemaRecord). Every SDK instance writes it when it starts, so a change can still be checked
  while no instance runs.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from corral.bus import KVSpec
from corral.subjects import Subjects

__all__ = [
    "CONFIG_HISTORY",
    "CONFIG_VERSION_HEADER",
    "ConfigDocument",
    "ConfigSchema",
    "SchemaRecord",
    "config_bucket_spec",
    "schema_key",
]

CONFIG_HISTORY: Final = 64  # versions kept per module (the most JetStream KV allows)
# Sent with the `config` control verb so every instance reports the stored version number.
CONFIG_VERSION_HEADER: Final = "Corral-Config-Version"


def config_bucket_spec(subjects: Subjects) -> KVSpec:
    """The one declaration of the config bucket, whoever creates it first."""
    return KVSpec(bucket=subjects.config_bucket, history=CONFIG_HISTORY)


def schema_key(module: str) -> str:
    return f"{module}.schema"


class ConfigDocument(msgspec.Struct, kw_only=True):
    """One version of a module's config (the value of key `<module>`)."""

    module: str
    version: int  # 1, 2, 3, ... per module
    values: dict[str, Any]
    time: float
    source: str  # "corral.toml", "set" or "rollback"
    note: str = ""  # e.g. "rollback to version 3"
    applied_to: list[str] = []  # the instances that were running it when it was committed


class SchemaRecord(msgspec.Struct, kw_only=True):
    """The config schema a module declared (the value of key `<module>.schema`)."""

    module: str
    schema: dict[str, Any]
    typed: bool  # False: the module has no @module.on_config, so any object is accepted
    module_version: str
    instance: str
    time: float


class ConfigSchema(msgspec.Struct, kw_only=True):
    """The reply of the `schema` control verb: one instance's config type and current config."""

    module: str
    instance: str
    module_version: str
    typed: bool
    schema: dict[str, Any]
    config_version: int
    config: Any
