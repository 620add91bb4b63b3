"""The limits one hosted WebAssembly module runs under, as read from `corral.toml`.

    [modules.physics.sandbox]
    timeout_ms = 1000          # wall-clock budget of one call (epoch deadline); always on
    fuel = 50_000_000          # optional: deterministic instruction budget per call
    memory_mb = 64             # linear memory cap per instance (store limit)
    max_stack_bytes = 524288   # wasm stack per call
    pool_size = 2              # instances, each on a worker thread of its own
    max_waiting = 1000         # calls queued for a free instance before OVERLOADED
    recycle_on_trap = false    # replace an instance after any trap instead of reusing it

    [modules.physics.sandbox.wasi]   # absent: no WASI at all
    dirs = { "/data" = "var/physics" }   # guest path -> host dir; nothing else is visible
    env = { "MODE" = "fast" }            # the only environment the guest sees
    writable = false                      # dirs are read-only unless this is true

Pure data (no wasmtime here): the limits and their checks are unit-tested alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import msgspec

from corral.errors import ConfigError

__all__ = ["WasiSandbox", "WasmModuleSpec", "WasmSandbox", "load_sandbox", "specs_from_toml"]

MIB = 1024 * 1024
# Worker threads get this much stack beyond the wasm limit, for the host frames around a call.
HOST_STACK_MARGIN = 2 * MIB


class WasiSandbox(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """What a WASI guest may see: only the named directories and environment variables."""

    dirs: dict[str, str] = {}  # guest path -> host directory
    env: dict[str, str] = {}
    args: list[str] = []
    writable: bool = False  # preopened directories are read-only unless set
    inherit_stdio: bool = False  # guest stdout/stderr go to the adapter's log instead of nowhere

    def __post_init__(self) -> None:
        for guest in self.dirs:
            if not guest.startswith("/"):
                raise ValueError(f"WASI guest path {guest!r} must be absolute, like '/data' - at `$.dirs`")


class WasmSandbox(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Per-module limits; every call runs within them or fails with a clear error."""

    timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=3_600_000)] = 1000
    fuel: Annotated[int, msgspec.Meta(ge=1)] | None = None
    memory_mb: Annotated[int, msgspec.Meta(ge=1, le=4095)] = 64
    max_stack_bytes: Annotated[int, msgspec.Meta(ge=16 * 1024, le=64 * MIB)] = 512 * 1024
    pool_size: Annotated[int, msgspec.Meta(ge=1, le=256)] = 2
    max_waiting: Annotated[int, msgspec.Meta(ge=0)] = 1000
    recycle_on_trap: bool = False
    wasi: WasiSandbox | None = None

    @property
    def memory_bytes(self) -> int:
        return self.memory_mb * MIB

    @property
    def tick_ms(self) -> float:
        """How often the epoch advances: a tenth of the budget, between 1 and 10 ms."""
        return min(10.0, max(1.0, self.timeout_ms / 10))

    @property
    def deadline_ticks(self) -> int:
        """Epoch ticks per call; one extra so a call is never stopped before its budget."""
        return math.ceil(self.timeout_ms / self.tick_ms) + 1

    @property
    def thread_stack_bytes(self) -> int:
        """Stack of a worker thread: the wasm limit plus room for host frames, 64 KiB aligned."""
        size = self.max_stack_bytes + HOST_STACK_MARGIN
        return -(-size // (64 * 1024)) * (64 * 1024)

    def resolve_dirs(self, root: Path) -> WasmSandbox:
        """Make WASI host directories absolute (relative to `root`) and check they exist."""
        if self.wasi is None or not self.wasi.dirs:
            return self
        dirs = {}
        for guest, host in self.wasi.dirs.items():
            path = Path(host) if Path(host).is_absolute() else root / host
            if not path.is_dir():
                raise ConfigError(
                    f"WASI directory {host!r} (guest path {guest!r}) is not a directory: {path}"
                )
            dirs[guest] = str(path.resolve())
        return msgspec.structs.replace(self, wasi=msgspec.structs.replace(self.wasi, dirs=dirs))


def load_sandbox(raw: Mapping[str, Any] | None, where: str) -> WasmSandbox:
    """Validate a `[modules.<name>.sandbox]` table; raise ConfigError naming `where` and the field."""
    try:
        return msgspec.convert(dict(raw or {}), WasmSandbox)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid sandbox in {where}: {exc}") from exc


class WasmModuleSpec(msgspec.Struct, frozen=True):
    """One module the adapter hosts: its name, its .wasm or .wat file, its sandbox."""

    name: str
    file: Path
    sandbox: WasmSandbox = msgspec.field(default_factory=WasmSandbox)


class _TomlModule(msgspec.Struct):
    """The keys of a `[modules.<name>]` table the adapter reads; corral.config checks the rest."""

    kind: str = "process"
    file: str = ""
    sandbox: dict[str, Any] = {}


class _TomlFile(msgspec.Struct):
    modules: dict[str, _TomlModule] = {}


def specs_from_toml(path: Path, only: Sequence[str] = ()) -> list[WasmModuleSpec]:
    """The `kind = "wasm"` modules of a corral.toml (those in `only`, when given)."""
    try:
        raw = msgspec.toml.decode(path.read_bytes(), type=_TomlFile)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    root = path.resolve().parent
    wasm = {name: m for name, m in raw.modules.items() if m.kind == "wasm"}
    missing = [name for name in only if name not in wasm]
    if missing:
        known = ", ".join(wasm) or "none"
        raise ConfigError(f"{path} has no wasm module named {', '.join(missing)} (wasm modules: {known})")
    specs = []
    for name, module in wasm.items():
        if only and name not in only:
            continue
        if not module.file:
            raise ConfigError(f"{path}: wasm module {name} has no file - at `$.modules.{name}.file`")
        sandbox = load_sandbox(module.sandbox, f"{path} [modules.{name}.sandbox]").resolve_dirs(root)
        specs.append(WasmModuleSpec(name, root / module.file, sandbox))
    return specs
