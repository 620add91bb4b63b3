"""`corral start|stop|restart <module>`, `corral modules`, `corral status --module X` and
`corral logs <module> [-f]`: the orchestrator's lifecycle from the command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import sys
import time
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from corral.bus import BusSettings, connect
from corral.cli import commands
from corral.cli.calls import ask
from corral.cli.output import err, out
from corral.config import load_config
from corral.errors import ConfigError
from corral.subjects import Subjects

__all__ = ["COMMANDS", "add_parsers", "logs", "module_status", "modules", "run", "run_verb"]

LONG = 600.0  # seconds: a start waits for the module's startup_timeout, a stop for its drain

_STATE_COLOURS = {"running": "green", "degraded": "yellow", "failed": "red", "starting": "cyan"}


def add_parsers(sub: Any) -> None:
    for verb, text in (
        ("start", "start a module (its dependencies must be running)"),
        ("restart", "stop and start a module again"),
    ):
        parser = sub.add_parser(verb, help=text)
        parser.add_argument("module")
    stop = sub.add_parser("stop", help="drain and stop a module (refused while others need it)")
    stop.add_argument("module")
    stop.add_argument("--cascade", action="store_true", help="also stop the modules that depend on it")
    stop.add_argument("--timeout", type=float, default=None, help="seconds to drain before the kill")
    sub.add_parser("modules", help="every module in the registry with its lifecycle state")
    logs_parser = sub.add_parser("logs", help="a module's output (.corral/logs/<module>.log)")
    logs_parser.add_argument("module")
    logs_parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs_parser.add_argument("-n", "--lines", type=int, default=50, help="lines to show first (default 50)")
    logs_parser.add_argument("-c", "--config", default="corral.toml", help="the system file (for log_dir)")


COMMANDS = frozenset({"start", "stop", "restart", "modules", "logs", "status"})


async def run(args: argparse.Namespace, bus: BusSettings, prefix: str) -> int:
    if args.command == "modules":
        return await modules(bus, prefix)
    if args.command == "logs":
        return await logs(args)
    if args.command == "status":
        if args.module:
            return await module_status(bus, prefix, args.module)
        return await commands.status(bus, prefix)
    return await run_verb(bus, prefix, args)


def _state(state: str) -> str:
    colour = _STATE_COLOURS.get(state)
    return f"[{colour}]{state}[/]" if colour else state


async def run_verb(bus: BusSettings, prefix: str, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"module": args.module}
    if args.command == "stop":
        body["cascade"] = args.cascade
        if args.timeout is not None:
            body["timeout"] = args.timeout
    nc = await connect(bus)
    try:
        result = await ask(nc, Subjects(prefix).service("orchestrator", args.command), body, timeout=LONG)
    except RuntimeError as exc:
        err.print(f"[red]{escape(str(exc))}[/]")
        return 1
    finally:
        await nc.close()
    for item in result if isinstance(result, list) else [result]:
        pids = ", ".join(map(str, item["pids"])) or "-"
        detail = f" ({escape(item['detail'])})" if item.get("detail") else ""
        out.print(f"{item['module']}: {_state(item['state'])} (pid {pids}){detail}")
    return 0


async def modules(bus: BusSettings, prefix: str) -> int:
    nc = await connect(bus)
    try:
        records = await ask(nc, Subjects(prefix).service("orchestrator", "registry"))
    except RuntimeError as exc:
        err.print(f"[red]{escape(str(exc))}[/]")
        return 1
    finally:
        await nc.close()
    if not records:
        out.print("no modules in the registry")
        return 0
    table = Table(title=f"modules (prefix {prefix})")
    for column in ("module", "kind", "state", "since", "pids", "attempts", "depends on", "reason"):
        table.add_column(column)
    for r in records:
        status = r["status"]
        table.add_row(
            r["name"], r["descriptor"].get("kind", "process"), _state(status["state"]), _ago(status["since"]),
            ", ".join(str(i["pid"]) for i in r["instances"] if i["pid"]) or "-", str(status["attempts"]),
            ", ".join(r["descriptor"].get("depends_on", [])) or "-", escape(status["reason"]),
        )  # fmt: skip
    out.print(table)
    return 0


async def module_status(bus: BusSettings, prefix: str, module: str) -> int:
    nc = await connect(bus)
    try:
        found = await ask(nc, Subjects(prefix).service("orchestrator", "module"), {"module": module})
    except RuntimeError as exc:
        err.print(f"[red]{escape(str(exc))}[/]")
        return 1
    finally:
        await nc.close()
    record, history = found["record"], found["history"]
    status = record["status"]
    since, reason = _ago(status["since"]), escape(status["reason"])
    out.print(f"module {module}: {_state(status['state'])} since {since} ({reason})")
    if status["error"]:
        out.print(f"error: {escape(status['error'])} (attempts: {status['attempts']})")
    policy = record["descriptor"].get("restart", {})
    chain = " -> ".join([policy.get("strategy", "restart"), *policy.get("escalation", [])])
    out.print(
        f"restart policy: {chain}, at most {policy.get('max_attempts', 5)} in {policy.get('window', 60):g}s"
    )
    for inst in record["instances"]:
        out.print(f"instance {inst['instance']} pid {inst['pid'] or '-'} started {_ago(inst['started'])}")
    if not history:
        out.print("recovery history: none")
        return 0
    table = Table(title=f"recovery history of {module}")
    for column in ("time", "failure", "action", "attempt", "delay s", "outcome"):
        table.add_column(column)
    for e in history:
        stamp = datetime.datetime.fromtimestamp(e["time"]).strftime("%H:%M:%S")
        attempt = f"{e['attempt']}/{e['max_attempts']}" if e["attempt"] else "-"
        table.add_row(
            stamp, escape(e["failure"]), e["action"], attempt, f"{e['delay']:.2f}", escape(e["outcome"])
        )
    out.print(table)
    return 0


def _ago(when: float) -> str:
    if not when:
        return "-"
    seconds = max(0.0, time.time() - when)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    return f"{seconds / 60:.0f}m ago"


def _log_dir(config_path: str) -> Path:
    try:
        config = load_config(config_path)
    except ConfigError:
        return Path(".corral/logs")
    return config.resolve(config.log_dir)


async def logs(args: argparse.Namespace) -> int:
    """Print the last lines of the module's log; with --follow, keep printing, across rotations."""
    path = _log_dir(args.config) / f"{args.module}.log"
    if not path.exists():
        err.print(f"no log for module {args.module!r} at {path} (has it run under this corral.toml?)")
        return 1
    with path.open("rb") as f:
        lines = f.read().decode(errors="replace").splitlines()[-args.lines :] if args.lines > 0 else []
        for line in lines:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
        if not args.follow:
            return 0
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                chunk = f.read()
                if chunk:
                    sys.stdout.write(chunk.decode(errors="replace"))
                    sys.stdout.flush()
                    continue
                with contextlib.suppress(OSError):
                    if path.stat().st_size < f.tell():  # rotated (copied, then truncated)
                        f.seek(0)
                await asyncio.sleep(0.2)
    return 0
