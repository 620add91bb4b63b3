"""`corral recurring list | add | remove`: recurring tasks from a shell.

    corral recurring list
    corral recurring add cleanup echo --every 5m [--payload '{"days": 7}'] [--priority low]
    corral recurring add report echo --cron '0 * * * *' [--timezone Europe/Paris] [--max-cpu 90]
    corral recurring remove cleanup

Schedules added here are stored by the scheduler (KV `corral_recurring`); those of corral.toml
are listed too, and can only be changed there. Errors go to stderr with their code (a bad
schedule names the field), exit status 1; 2 for a payload that is not JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from typing import Any

from rich.table import Table

from corral.bus import BusSettings
from corral.cli.output import err, out
from corral.cli.tasks import run_with_client
from corral.sdk.client import Client

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    recurring = sub.add_parser("recurring", help="list, add and remove recurring tasks")
    verbs = recurring.add_subparsers(dest="recurring_command", required=True, metavar="VERB")
    verbs.add_parser("list", help="every recurring task: schedule, next tick, last outcome, counts")
    add = verbs.add_parser("add", help="submit a task on an interval or a cron expression")
    add.add_argument("name", help="letters, digits, '_' and '-'")
    add.add_argument("type", help="the task type to submit")
    when = add.add_mutually_exclusive_group(required=True)
    when.add_argument("--every", help="an interval: seconds, or 30s, 5m, 1h30m, 1d")
    when.add_argument("--cron", help="a cron expression: 5 fields, or 6 with seconds first")
    add.add_argument("--timezone", help="the zone cron fields are read in (default UTC)")
    add.add_argument("--payload", default="{}", help="JSON payload of each task (default {})")
    add.add_argument("--priority", help="0-4 or critical|high|normal|low|background")
    add.add_argument("--capability", action="append", default=[], help="a capability tasks need")
    add.add_argument("--max-cpu", type=float, help="skip a tick while the machine's CPU %% is over this")
    add.add_argument("--max-memory", type=float, help="skip a tick while its memory use %% is over this")
    add.add_argument("--grace", type=float, help="seconds a tick may be late and still run (default 30)")
    add.add_argument("--disabled", action="store_true", help="store it without submitting it")
    remove = verbs.add_parser("remove", help="remove a recurring task added through the API")
    remove.add_argument("name")


async def run(args: argparse.Namespace, bus: BusSettings, prefix: str) -> int:
    return await run_with_client(_dispatch, args, bus, prefix)


async def _dispatch(args: argparse.Namespace, client: Client) -> int:
    verb = args.recurring_command
    if verb == "list":
        reply = await client._scheduler("recurring.list", None)
        out.print(_table(reply["schedules"]))
        return 0
    if verb == "remove":
        await client._scheduler("recurring.remove", {"name": args.name})
        print(f"removed {args.name}")
        return 0
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as exc:
        err.print(f"[red]--payload is not valid JSON:[/] {exc.msg} at line {exc.lineno}, column {exc.colno}")
        return 2
    body = {
        "name": args.name, "type": args.type, "payload": payload, "every": _number_or_text(args.every),
        "cron": args.cron, "timezone": args.timezone, "priority": args.priority,
        "capabilities": args.capability or None, "max_cpu_percent": args.max_cpu,
        "max_memory_percent": args.max_memory, "grace": args.grace, "enabled": not args.disabled,
    }  # fmt: skip
    reply = await client._scheduler("recurring.add", {k: v for k, v in body.items() if v is not None})
    schedule = reply["schedule"]
    verb_done = "replaced" if reply["replaced"] else "added"
    print(f"{verb_done} {schedule['name']}; next tick {_when(schedule['next_tick'])}")
    return 0


def _number_or_text(value: str | None) -> float | str | None:
    """`--every 30` is 30 seconds; `--every 5m` is passed on as a duration."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return value


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(schedules: list[dict[str, Any]]) -> Table:
    instance = schedules[0]["instance"] if schedules else ""
    table = Table(title=f"recurring tasks ({len(schedules)}; counts of scheduler {instance})")
    for column in ("name", "source", "type", "schedule", "priority", "next tick", "last", "counts"):
        table.add_column(column)
    now = time.time()
    for s in schedules:
        config = s["schedule"]
        when = f"every {config['every']:g}s" if config.get("every") else f"cron {config['cron']}"
        if config.get("cron") and config.get("timezone", "UTC") != "UTC":
            when += f" ({config['timezone']})"
        next_tick = f"in {s['next_tick'] - now:.0f}s" if s.get("next_tick") else "disabled"
        last = s.get("last_outcome") or "-"
        if s.get("last_reason"):
            last += f": {s['last_reason']}"
        counts = ", ".join(f"{k} {v}" for k, v in s["counts"].items()) or "-"
        table.add_row(
            s["name"], s["source"], config["type"], when, str(config["priority"]), next_tick, last, counts
        )
    return table
