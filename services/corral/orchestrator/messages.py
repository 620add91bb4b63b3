"""Request bodies of the orchestrator's lifecycle endpoints. A wrong shape is a VALIDATION reply
naming the field (`$.module`, `$.descriptor.restart.max_attempts`, ...)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from corral.config import ModuleConfig

__all__ = [
    "Deregister",
    "HistoryRequest",
    "ModuleRef",
    "Registration",
    "StartSystem",
    "StopModule",
    "StopSystem",
]

ModuleName = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_\-]+$")]
Timeout = Annotated[float, msgspec.Meta(gt=0, le=3600)]


class ModuleRef(msgspec.Struct, forbid_unknown_fields=True):
    """`start`, `restart`, `module`: one module by name."""

    module: ModuleName


class StopModule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    module: ModuleName
    cascade: bool = False  # also stop the modules that depend on it (dependents first)
    timeout: Timeout | None = None  # seconds to drain before the kill (default: its stop_timeout)


class StartSystem(msgspec.Struct, forbid_unknown_fields=True):
    """`start_system`: an empty body or `{}`; it starts every module of the registry."""


class StopSystem(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    timeout: Timeout | None = None  # seconds each module gets to drain (default: its stop_timeout)


class Registration(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`register`: an SDK instance waiting for its dependencies (module + instance, what the SDK
    sends), and/or a descriptor that adds the module to the registry (`descriptor`)."""

    module: ModuleName
    instance: Annotated[str, msgspec.Meta(max_length=256)] = ""
    version: str = ""
    depends_on: list[ModuleName] = []
    types: list[str] = []
    descriptor: ModuleConfig | None = None


class Deregister(msgspec.Struct, forbid_unknown_fields=True):
    module: ModuleName


class HistoryRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    module: ModuleName
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 50
