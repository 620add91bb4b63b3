"""`corral submit | tasks | task | workers | dlq ...`: the scheduler from a shell.

    corral submit echo '{"x": 1}' [--priority high] [--wait]   # prints the id, or the result
    corral tasks [--status failed] [--type echo] [--limit 20]
    corral task <id>                                           # the record, as JSON
    corral cancel <id>
    corral workers
    corral dlq list | show <id> | retry <id> | purge [<id>]

Results go to stdout (JSON where a program may read them), errors to stderr with their code;
the exit status is 1 for an error reply or a task that did not succeed, 2 for unusable arguments.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rich.table import Table

from corral.bus import BusSettings
from corral.cli.output import err, out
from corral.errors import CorralError
from corral.scheduling.messages import Status
from corral.sdk.client import Client
from corral.sdk.tasks import TaskError

__all__ = ["COMMANDS", "add_parsers", "run"]

COMMANDS = frozenset({"submit", "tasks", "task", "cancel", "workers", "dlq"})


def add_parsers(sub: Any) -> None:
    submit = sub.add_parser("submit", help="queue a task on the scheduler; prints its id (or its result)")
    submit.add_argument("type", help="the task type, e.g. echo")
    submit.add_argument("payload", nargs="?", default="{}", help="JSON payload (default {})")
    submit.add_argument("--priority", default="normal", help="0-4 or critical|high|normal|low|background")
    submit.add_argument("--capability", action="append", default=[], help="a capability the worker needs")
    submit.add_argument("--depends-on", action="append", default=[], metavar="ID", help="a task to wait for")
    submit.add_argument("--max-retries", type=int, default=None)
    submit.add_argument("--timeout", type=float, default=None, help="seconds per attempt")
    submit.add_argument("--delay", type=float, default=None, help="seconds before it may start")
    submit.add_argument("--key", default=None, help="idempotency key: the same key runs once")
    submit.add_argument("--name", default=None)
    submit.add_argument("--wait", action="store_true", help="wait for the result and print it")
    submit.add_argument(
        "--wait-timeout", type=float, default=None, help="seconds to --wait (default: forever)"
    )

    tasks = sub.add_parser("tasks", help="task records, newest first")
    tasks.add_argument("--status", choices=[s.value for s in Status], default=None)
    tasks.add_argument("--type", default=None)
    tasks.add_argument("--limit", type=int, default=50)
    task = sub.add_parser("task", help="one task's record as JSON")
    task.add_argument("id")
    cancel = sub.add_parser("cancel", help="cancel a task (queued: never runs; running: told to stop)")
    cancel.add_argument("id")
    cancel.add_argument("--reason", default="")
    sub.add_parser("workers", help="live workers: capabilities and load")

    dlq = sub.add_parser("dlq", help="the dead-letter queue: tasks whose every attempt failed")
    verbs = dlq.add_subparsers(dest="dlq_command", required=True, metavar="VERB")
    listing = verbs.add_parser("list", help="dead letters, oldest first")
    listing.add_argument("--limit", type=int, default=100)
    for name, text in (("show", "one dead letter, as JSON"), ("retry", "queue the task again")):
        verbs.add_parser(name, help=text).add_argument("id")
    purge = verbs.add_parser("purge", help="delete one dead letter, or all of them")
    purge.add_argument("id", nargs="?", default=None)


async def run(args: argparse.Namespace, bus: BusSettings, prefix: str) -> int:
    return await run_with_client(_dispatch, args, bus, prefix)


async def run_with_client(
    dispatch: Callable[[argparse.Namespace, Client], Awaitable[int]],
    args: argparse.Namespace,
    bus: BusSettings,
    prefix: str,
) -> int:
    """Run a subcommand that talks through the SDK client; a corral error is printed, exit 1."""
    async with await Client.connect(bus, prefix=prefix) as client:
        try:
            return await dispatch(args, client)
        except CorralError as exc:
            err.print(f"[red]{exc.code}[/]: {exc}", soft_wrap=True)
            return 1


async def _dispatch(args: argparse.Namespace, client: Client) -> int:
    command = args.command
    if command == "submit":
        return await _submit(args, client)
    if command == "tasks":
        body = {"limit": args.limit, "status": args.status, "type": args.type}
        reply = await client._scheduler("list", {k: v for k, v in body.items() if v is not None})
        out.print(_tasks_table(reply["tasks"]))
        return 0
    if command == "task":
        _print_json(await client._scheduler("get", {"id": args.id}))
        return 0
    if command == "cancel":
        reply = await client._scheduler("cancel", {"id": args.id, "reason": args.reason})
        print("cancelled" if reply["cancelled"] else f"not cancelled: it is already {reply['status']}")
        return 0
    if command == "workers":
        reply = await client._scheduler("workers", None)
        out.print(_workers_table(reply["workers"]))
        return 0
    return await _dlq(args, client)


async def _submit(args: argparse.Namespace, client: Client) -> int:
    try:
        payload = json.loads(args.payload) if args.payload else {}
    except json.JSONDecodeError as exc:
        err.print(f"[red]payload is not valid JSON:[/] {exc.msg} at line {exc.lineno}, column {exc.colno}")
        return 2
    handle = await client.submit(
        args.type, payload, priority=args.priority, capabilities=args.capability,
        dependencies=args.depends_on, max_retries=args.max_retries, timeout=args.timeout,
        delay=args.delay, idempotency_key=args.key, name=args.name,
    )  # fmt: skip
    if not args.wait:
        print(handle.id)
        return 0
    err.print(f"task {handle.id} queued; waiting")
    try:
        result = await handle.result(timeout=args.wait_timeout)
    except TaskError as exc:
        err.print(f"[red]{exc.result.status.value}[/]: {exc}", soft_wrap=True)
        if exc.result.traceback:
            err.print(exc.result.traceback, soft_wrap=True)
        return 1
    print(json.dumps(result))
    return 0


async def _dlq(args: argparse.Namespace, client: Client) -> int:
    verb = args.dlq_command
    if verb == "list":
        reply = await client._scheduler("dlq.list", {"limit": args.limit})
        table = Table(title=f"dead letters ({reply['total']})")
        for column in ("id", "type", "attempts", "failed", "error"):
            table.add_column(column)
        for letter in reply["dead_letters"]:
            table.add_row(
                letter["task"]["id"], letter["task"]["type"], str(letter["attempts"]),
                _when(letter.get("failed")), letter["error"][:100],
            )  # fmt: skip
        out.print(table)
    elif verb == "show":
        _print_json(await client._scheduler("dlq.show", {"id": args.id}))
    elif verb == "retry":
        reply = await client._scheduler("dlq.retry", {"id": args.id})
        print(reply["id"])
    else:
        reply = await client._scheduler("dlq.purge", {"id": args.id} if args.id else {})
        print(f"purged {reply['purged']}")
    return 0


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _when(ts: float | None) -> str:
    if not ts:
        return ""
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _tasks_table(tasks: list[dict[str, Any]]) -> Table:
    table = Table(title=f"tasks ({len(tasks)}, newest first)")
    for column in ("id", "type", "name", "priority", "status", "attempts", "submitted", "worker", "error"):
        table.add_column(column)
    for task in tasks:
        table.add_row(
            task["id"], task["type"], task.get("name", ""), str(task.get("priority", 2)), task["status"],
            str(task.get("attempts", 0)), _when(task.get("submitted")), task.get("worker", ""),
            (task.get("error") or task.get("reason") or "")[:80],
        )  # fmt: skip
    return table


def _workers_table(workers: list[dict[str, Any]]) -> Table:
    table = Table(title=f"workers ({len(workers)})")
    for column in ("name", "instance", "types", "capabilities", "load", "completed", "failed", "pid", "seen"):
        table.add_column(column)
    now = time.time()
    for w in workers:
        table.add_row(
            w["name"], w["instance"], ", ".join(w["types"]), ", ".join(w.get("capabilities", [])),
            f"{w['running']}/{w['concurrency']}", str(w.get("completed", 0)), str(w.get("failed", 0)),
            str(w.get("pid", "")), f"{now - w['timestamp']:.1f}s ago",
        )  # fmt: skip
    return table
