"""`python -m corral.adapters.wasm`: host WebAssembly modules as corral modules.

    python -m corral.adapters.wasm --module physics=examples/wasm/physics.wat
    python -m corral.adapters.wasm --module physics=physics.wat --sandbox 'physics={"timeout_ms": 200}'
    python -m corral.adapters.wasm --config corral.toml [--only physics]

`--config` hosts the `kind = "wasm"` modules of a corral.toml with their `[modules.X.sandbox]`.
Every module is compiled and instantiated before anything connects, so a bad file or sandbox
fails at once with a message naming it (exit code 2; 1 when NATS cannot be reached). Then each
module registers as a service of its own and serves until SIGTERM, when all of them drain.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec

from corral.adapters.wasm.host import WasmModuleService, open_pool
from corral.adapters.wasm.pool import InstancePool
from corral.adapters.wasm.sandbox import WasmModuleSpec, WasmSandbox, load_sandbox, specs_from_toml
from corral.errors import ConfigError, CorralError
from corral.runtime import ServiceSettings, run_main
from corral.runtime.logs import configure_logging
from corral.subjects import validate_token


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m corral.adapters.wasm", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", type=Path, help='a corral.toml: host its kind = "wasm" modules')
    parser.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="with --config: only these"
    )
    parser.add_argument(
        "--module", action="append", default=[], metavar="NAME=FILE", help="a .wasm or .wat file"
    )
    parser.add_argument(
        "--sandbox",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="the sandbox of a --module, as JSON",
    )
    return parser.parse_args(argv)


def _pairs(values: Sequence[str], flag: str) -> dict[str, str]:
    found = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not rest:
            raise ConfigError(f"{flag} {value!r}: expected NAME=VALUE")
        try:
            validate_token(name, "module name")
        except ValueError as exc:
            raise ConfigError(f"{flag} {value!r}: {exc}") from None
        if name in found:
            raise ConfigError(f"{flag} {name}=... is given more than once")
        found[name] = rest
    return found


def specs_from_args(args: argparse.Namespace) -> list[WasmModuleSpec]:
    """The modules to host, from --config and --module; ConfigError when there are none or a clash."""
    specs = specs_from_toml(args.config, args.only) if args.config else []
    sandboxes = _pairs(args.sandbox, "--sandbox")
    modules = _pairs(args.module, "--module")
    for name in sandboxes.keys() - modules.keys():
        raise ConfigError(f"--sandbox {name}=...: no --module {name}=FILE to apply it to")
    for name, file in modules.items():
        try:
            raw = msgspec.json.decode(sandboxes.get(name, "{}"))
        except msgspec.DecodeError as exc:
            raise ConfigError(f"--sandbox {name}=...: not JSON: {exc}") from None
        sandbox: WasmSandbox = load_sandbox(raw, f"--sandbox {name}").resolve_dirs(Path.cwd())
        specs.append(WasmModuleSpec(name, Path(file), sandbox))
    names = [spec.name for spec in specs]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(f"module {', '.join(duplicates)} is given more than once")
    if not specs:
        raise ConfigError("no wasm module to host: give --module NAME=FILE or --config corral.toml")
    return specs


def settings_for(settings: ServiceSettings, index: int) -> ServiceSettings:
    """Each hosted module serves its own /metrics: a fixed port is shifted by the module's index."""
    if settings.metrics_port > 0 and index:
        return msgspec.structs.replace(settings, metrics_port=settings.metrics_port + index)
    return settings


async def open_pools(specs: Sequence[WasmModuleSpec]) -> list[InstancePool]:
    pools: list[InstancePool] = []
    try:
        for spec in specs:
            pools.append(await open_pool(spec))
    except BaseException:
        for pool in pools:
            await pool.stop()
        raise
    return pools


async def serve(specs: Sequence[WasmModuleSpec], settings: ServiceSettings) -> None:
    """Start every module, serve until SIGTERM or SIGINT, then drain them in reverse order."""
    pools = await open_pools(specs)
    services = [WasmModuleService(pool, settings_for(settings, i)) for i, pool in enumerate(pools)]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started: list[WasmModuleService] = []
    try:
        for service in services:
            await service.start()
            started.append(service)
        await stop.wait()
    finally:
        for service in reversed(started):
            await service.stop()
        for pool in pools:
            await pool.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = ServiceSettings.from_env()
    try:
        specs = specs_from_args(args)
    except ConfigError as exc:
        print(f"wasm adapter: {exc}", file=sys.stderr)
        return 2
    name = specs[0].name if len(specs) == 1 else "wasm-adapter"
    configure_logging(name, settings.instance, settings.log_level)
    try:
        run_main(lambda: serve(specs, settings))
    except (ConfigError, CorralError) as exc:
        print(f"wasm adapter: {exc}", file=sys.stderr)
        return 2
    except ConnectionError as exc:  # NATS unreachable after the bounded retries
        print(f"wasm adapter: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
