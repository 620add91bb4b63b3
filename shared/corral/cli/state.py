"""`corral state ...`: read, write, watch and snapshot shared state from a shell.

    corral state set app.version '"1.0.0"'       # values are JSON; --string stores the text as is
    corral state get app.version                  # "1.0.0"
    corral state keys 'app.*'
    corral state history app.version
    corral state restore app.version 3
    corral state watch 'app.>' [--current] [--count N]
    corral state snapshot create --meta reason=release | list | restore ID | delete ID

Output is for pipes: values as JSON on stdout, one key or change per line; errors go to
stderr with their code, and the exit status is 1 (2 for arguments that are not usable).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from corral.bus import BusSettings, connect
from corral.errors import CorralError
from corral.sdk.state import StateClient
from corral.state.snapshots import SnapshotInfo

__all__ = ["add_parser", "run"]

out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)  # an error stays on one line for grep


def add_parser(sub: Any) -> None:
    """Add `state` and its verbs to the `corral` parser's subcommands (`sub`)."""
    state = sub.add_parser("state", help="read, write, watch and snapshot shared state")
    verbs = state.add_subparsers(dest="state_command", required=True, metavar="VERB")
    get = verbs.add_parser("get", help="print a key's value as JSON")
    get.add_argument("key")
    get.add_argument("--full", action="store_true", help="print key, value, revision and time")
    set_ = verbs.add_parser("set", help="store a JSON value; prints the new revision")
    set_.add_argument("key")
    set_.add_argument("value", help="a JSON value ('\"text\"', 42, '{\"a\": 1}')")
    set_.add_argument("--string", action="store_true", help="store VALUE as a string, not as JSON")
    set_.add_argument("--expect-revision", type=int, help="only if the key is at this revision (0: absent)")
    set_.add_argument("--ttl", type=float, help="seconds until the value expires (at least 1)")
    delete = verbs.add_parser("delete", help="delete a key's value (its history is kept)")
    delete.add_argument("key")
    delete.add_argument("--expect-revision", type=int, help="only if the key is at this revision")
    keys = verbs.add_parser("keys", help="list the keys under a pattern")
    keys.add_argument("pattern", nargs="?", default=">", help="NATS pattern: app.*, app.> (default >)")
    history = verbs.add_parser("history", help="the kept revisions of a key")
    history.add_argument("key")
    restore = verbs.add_parser("restore", help="write a past revision's value back as a new revision")
    restore.add_argument("key")
    restore.add_argument("revision", type=int)
    watch = verbs.add_parser("watch", help="print every change under a pattern as JSON lines")
    watch.add_argument("pattern", nargs="?", default=">")
    watch.add_argument("--current", action="store_true", help="first print the current values")
    watch.add_argument("--since", type=int, help="start after this revision")
    watch.add_argument("--count", type=int, help="exit after this many changes")
    _add_snapshot_parser(verbs)


def _add_snapshot_parser(verbs: Any) -> None:
    snapshot = verbs.add_parser("snapshot", help="create, list, restore and delete snapshots")
    actions = snapshot.add_subparsers(dest="snapshot_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="capture every key; prints the snapshot id")
    create.add_argument(
        "--meta", action="append", default=[], metavar="KEY=VALUE", help="metadata, repeatable"
    )
    actions.add_parser("list", help="every snapshot, oldest first")
    for name, text in (("restore", "make the store equal to a snapshot"), ("delete", "delete a snapshot")):
        action = actions.add_parser(name, help=text)
        action.add_argument("id")


async def run(args: argparse.Namespace, bus: BusSettings, prefix: str) -> int:
    """Run one `corral state` verb; returns the exit status."""
    nc = await connect(bus)
    try:
        state = StateClient(nc, prefix=prefix)
        try:
            return await _dispatch(state, args)
        except CorralError as exc:
            err.print(f"[red]{exc.code}[/]: {exc}")
            return 1
    finally:
        await nc.close()


async def _dispatch(state: StateClient, args: argparse.Namespace) -> int:
    verb = args.state_command
    if verb == "get":
        return await _get(state, args.key, args.full)
    if verb == "set":
        return await _set(state, args)
    if verb == "delete":
        deleted = await state.delete(args.key, expected_revision=args.expect_revision)
        print("deleted" if deleted else "no value to delete")
        return 0
    if verb == "keys":
        for key in await state.keys(args.pattern):
            print(key)
        return 0
    if verb == "history":
        return await _history(state, args.key)
    if verb == "restore":
        print(await state.restore(args.key, args.revision))
        return 0
    if verb == "watch":
        return await _watch(state, args)
    return await _snapshot(state, args)


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2 if isinstance(value, dict | list) and value else None)


async def _get(state: StateClient, key: str, full: bool) -> int:
    entry = await state.get(key)
    if full:
        print(
            _dumps(
                {"key": entry.key, "value": entry.value, "revision": entry.revision, "updated": entry.updated}
            )
        )
    else:
        print(_dumps(entry.value))
    return 0


async def _set(state: StateClient, args: argparse.Namespace) -> int:
    if args.string:
        value: Any = args.value
    else:
        try:
            value = json.loads(args.value)
        except json.JSONDecodeError as exc:
            err.print(
                f"[red]value is not JSON[/] ({exc.msg} at column {exc.colno}): quote a string as "
                f"'\"{args.value}\"' or pass --string"
            )
            return 2
    print(await state.set(args.key, value, expected_revision=args.expect_revision, ttl=args.ttl))
    return 0


async def _history(state: StateClient, key: str) -> int:
    table = Table(title=f"history of {key}")
    for column in ("revision", "time", "operation", "value"):
        table.add_column(column)
    for version in await state.history(key):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(version.time))
        value = "" if version.value is None and version.operation != "set" else json.dumps(version.value)
        table.add_row(str(version.revision), stamp, version.operation.value, value)
    out.print(table)
    return 0


async def _watch(state: StateClient, args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    seen = 0
    async with await state.subscribe(args.pattern, from_current=args.current, since=args.since) as watch:
        while not stop.is_set() and (args.count is None or seen < args.count):
            with contextlib.suppress(TimeoutError):
                change = await watch.next(timeout=0.5)
                print(json.dumps({f: getattr(change, f) for f in change.__struct_fields__}), flush=True)
                seen += 1
    return 0


async def _snapshot(state: StateClient, args: argparse.Namespace) -> int:
    action = args.snapshot_command
    if action == "create":
        metadata = {}
        for item in args.meta:
            name, sep, value = item.partition("=")
            if not sep or not name:
                err.print(f"[red]--meta {item!r} is not KEY=VALUE[/]")
                return 2
            metadata[name] = value
        print((await state.create_snapshot(metadata)).id)
    elif action == "list":
        _print_snapshots(await state.list_snapshots())
    elif action == "restore":
        report = await state.restore_snapshot(args.id)
        counts = report.counts
        print(
            f"restored {report.snapshot}: {counts.rewritten} rewritten, {counts.recreated} recreated, "
            f"{counts.deleted} deleted, {counts.unchanged} unchanged"
        )
        for label, keys in (
            ("rewritten", report.rewritten),
            ("recreated", report.recreated),
            ("deleted", report.deleted),
        ):
            for key in keys:
                print(f"  {label} {key}")
    else:
        await state.delete_snapshot(args.id)
        print(f"deleted {args.id}")
    return 0


def _print_snapshots(snapshots: list[SnapshotInfo]) -> None:
    table = Table(title="snapshots")
    for column in ("id", "created", "revision", "keys", "bytes", "metadata"):
        table.add_column(column)
    for info in snapshots:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.created))
        table.add_row(
            info.id, stamp, str(info.revision), str(info.keys), str(info.bytes), json.dumps(info.metadata)
        )
    out.print(table)
