"""One WebAssembly module version: compiled once, instantiated per worker, run within its sandbox.

`WasmEngine` is a wasmtime Engine configured from a sandbox (epoch interruption always, fuel
when asked, the stack limit) plus the ticker that advances its epoch while calls run.
`WasmProgram` is a compiled module (with its linker) on that engine; `WasmInstance` is one
store and instance of it with its WasmBridge, and runs `compute` requests (blocking: call it
off the loop).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import wasmtime

from corral.adapters.wasm.abi import Signature
from corral.adapters.wasm.bridge import WasmBridge
from corral.adapters.wasm.errors import NEAR_CAP, GuestBudgetExceeded, GuestOutOfMemory, GuestTrap
from corral.adapters.wasm.messages import ComputeReply, ComputeRequest
from corral.adapters.wasm.sandbox import WasmSandbox
from corral.errors import ConfigError, ModuleError

__all__ = ["EpochTicker", "WasmEngine", "WasmInstance", "WasmLoadError", "WasmProgram"]

log = logging.getLogger("corral.adapters.wasm")

WASI_MODULE = "wasi_snapshot_preview1"


class WasmLoadError(ModuleError):
    """A module file could not be read, compiled, linked or instantiated."""


class EpochTicker:
    """Advances an engine's epoch every `interval` seconds while calls run.

    Deadlines are set in ticks relative to the epoch when a call starts, so pausing while idle
    is harmless; ticks are never bunched up to catch up, so a call is never stopped early. The
    ticker parks only after `linger` seconds without calls: waking it costs a thread switch,
    which a busy module should not pay on every call.
    """

    def __init__(self, engine: wasmtime.Engine, interval: float, linger: float = 1.0) -> None:
        self.engine = engine
        self.interval = interval
        self.linger = linger
        self._cond = threading.Condition()
        self._active = 0
        self._last_call = 0.0
        self._parked = False
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="wasm-epoch", daemon=True)
        self._thread.start()

    @contextmanager
    def running(self) -> Iterator[None]:
        with self._cond:
            self._active += 1
            if self._parked:
                self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._last_call = time.monotonic()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join()

    def _loop(self) -> None:
        with self._cond:
            next_tick = time.monotonic() + self.interval
            while not self._stopped:
                now = time.monotonic()
                if self._active == 0 and now - self._last_call > self.linger:
                    self._parked = True
                    self._cond.wait()
                    self._parked = False
                    next_tick = time.monotonic() + self.interval
                elif now < next_tick:
                    self._cond.wait(next_tick - now)
                else:
                    self.engine.increment_epoch()
                    next_tick = time.monotonic() + self.interval


class WasmEngine:
    """An Engine with the sandbox's CPU and stack limits compiled in, and its epoch ticker."""

    def __init__(self, sandbox: WasmSandbox) -> None:
        self.sandbox = sandbox
        if not isinstance(getattr(wasmtime.Config, "max_wasm_stack", None), property):
            # Older wasmtime-py would accept the attribute and silently not limit the stack.
            raise ConfigError("this wasmtime cannot limit the wasm stack: install wasmtime>=45")
        config = wasmtime.Config()
        config.epoch_interruption = True
        config.consume_fuel = sandbox.fuel is not None
        config.max_wasm_stack = sandbox.max_stack_bytes
        self.engine = wasmtime.Engine(config)
        self.ticker = EpochTicker(self.engine, sandbox.tick_ms / 1000)

    def close(self) -> None:
        self.ticker.stop()


def read_source(path: Path, name: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise WasmLoadError(f"cannot read the file of wasm module {name}: {path}: {exc.strerror}") from exc


@dataclass(eq=False)
class WasmProgram:
    """A compiled module and its linker: `instantiate()` gives each worker an instance of its own."""

    name: str
    path: Path
    engine: WasmEngine
    module: wasmtime.Module
    linker: wasmtime.Linker
    sha256: str
    version: int = 1
    signatures: dict[str, Signature] = field(default_factory=dict)
    # Workers instantiate on their own threads; one at a time through the shared linker.
    _linking: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def sandbox(self) -> WasmSandbox:
        return self.engine.sandbox

    @classmethod
    def load(cls, name: str, path: Path, engine: WasmEngine, version: int = 1) -> WasmProgram:
        """Read and compile `path` (.wasm binary or .wat text). Blocking: compiling takes time."""
        source = read_source(path, name)
        wasm: bytes | str = source
        if source[:4] != b"\0asm":  # not a binary: WebAssembly text
            try:
                wasm = source.decode()
            except UnicodeDecodeError:
                raise WasmLoadError(f"{path} is neither a .wasm binary nor UTF-8 .wat text") from None
        try:
            module = wasmtime.Module(engine.engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise WasmLoadError(f"cannot compile wasm module {name} from {path}: {exc}") from exc
        _check_imports(name, module, engine.sandbox)
        linker = wasmtime.Linker(engine.engine)
        if engine.sandbox.wasi is not None:
            linker.define_wasi()
        digest = hashlib.sha256(source).hexdigest()
        return cls(name, path, engine, module, linker, digest, version, _signatures(module))

    def describe_exports(self) -> list[str]:
        return [f"{name}{sig}" for name, sig in sorted(self.signatures.items())]

    def instantiate(self) -> WasmInstance:
        """A new store and instance with the sandbox's limits. Blocking (start functions run)."""
        sandbox = self.sandbox
        store = wasmtime.Store(self.engine.engine)
        store.set_limits(memory_size=sandbox.memory_bytes)
        if sandbox.wasi is not None:
            store.set_wasi(_wasi_config(sandbox))
        instance = WasmInstance(self, store)
        instance.arm()
        try:
            with self._linking, self.engine.ticker.running():
                raw = self.linker.instantiate(store, self.module)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            raise WasmLoadError(f"cannot instantiate wasm module {self.name} ({self.path}): {exc}") from exc
        instance.attach(raw)
        return instance


class WasmInstance:
    """One store and instance of a program; runs one call at a time."""

    def __init__(self, program: WasmProgram, store: wasmtime.Store) -> None:
        self.program = program
        self.store = store
        self.trapped = False
        self.exhausted = False
        self._bridge: WasmBridge | None = None

    @property
    def bridge(self) -> WasmBridge:
        if self._bridge is None:
            raise RuntimeError("instance is not attached")
        return self._bridge

    def attach(self, instance: wasmtime.Instance) -> None:
        program = self.program
        self._bridge = WasmBridge(
            self.store, instance, name=program.name, sandbox=program.sandbox, before_cleanup=self.arm
        )

    def arm(self) -> None:
        """Give the next entry into the guest a full budget: a fresh epoch deadline, and fuel."""
        sandbox = self.program.sandbox
        self.store.set_epoch_deadline(sandbox.deadline_ticks)
        if sandbox.fuel is not None:
            self.store.set_fuel(sandbox.fuel)

    @property
    def needs_replacing(self) -> bool:
        """A free failed (the guest heap may be corrupt), a failed call left memory near the cap,
        or it trapped and the sandbox says to recycle."""
        return (
            self.bridge.poisoned or self.exhausted or (self.trapped and self.program.sandbox.recycle_on_trap)
        )

    def compute(self, request: ComputeRequest) -> ComputeReply:
        """Run one compute request within the sandbox. Blocking."""
        self.arm()
        try:
            with self.program.engine.ticker.running():
                out = self.bridge.call_with_arrays(
                    request.function, request.arrays, request.args, request.result
                )
        except (GuestTrap, GuestBudgetExceeded, GuestOutOfMemory) as exc:
            self.trapped = True
            # Memory never shrinks: an instance that ran into its cap would fail every later call.
            self.exhausted = self.bridge.memory_size() >= NEAR_CAP * self.program.sandbox.memory_bytes
            log.warning("%s", exc, extra={"wasm_module": self.program.name, "function": request.function})
            raise
        return ComputeReply(out.returns, out.result)


def _check_imports(name: str, module: wasmtime.Module, sandbox: WasmSandbox) -> None:
    for imp in module.imports:
        what = f"{imp.module}.{imp.name}"
        if imp.module != WASI_MODULE:
            raise WasmLoadError(
                f"wasm module {name} imports {what}, which the adapter does not provide: "
                f"a hosted module may import only WASI ({WASI_MODULE})"
            )
        if sandbox.wasi is None:
            raise WasmLoadError(
                f"wasm module {name} imports WASI ({what}) but WASI is off for it: add "
                f"[modules.{name}.sandbox.wasi] naming the dirs and env it may see"
            )


def _signatures(module: wasmtime.Module) -> dict[str, Signature]:
    found = {}
    for export in module.exports:
        ty = export.type
        if isinstance(ty, wasmtime.FuncType):
            found[export.name] = Signature(tuple(map(str, ty.params)), tuple(map(str, ty.results)))
    return found


def _wasi_config(sandbox: WasmSandbox) -> wasmtime.WasiConfig:
    """Only what the sandbox names: its dirs (read-only unless writable), env and args."""
    assert sandbox.wasi is not None
    wasi = sandbox.wasi
    config = wasmtime.WasiConfig()
    config.argv = ["wasm", *wasi.args]
    config.env = list(wasi.env.items())
    for guest, host in wasi.dirs.items():
        _preopen(config, host, guest, wasi.writable)
    if wasi.inherit_stdio:
        config.inherit_stdout()
        config.inherit_stderr()
    return config


def _preopen(config: wasmtime.WasiConfig, host: str, guest: str, writable: bool) -> None:
    """wasmtime-py 50 takes one `fs_mutable` flag; 45 to 49 take directory and file permissions."""
    dir_perms: Any = getattr(wasmtime, "DirPerms", None)
    file_perms: Any = getattr(wasmtime, "FilePerms", None)
    if dir_perms is None or file_perms is None:
        config.preopen_dir(host, guest, writable)
        return
    access = "READ_WRITE" if writable else "READ_ONLY"
    preopen: Any = config.preopen_dir
    preopen(host, guest, getattr(dir_perms, access), getattr(file_perms, access))
