"""`corral config ...`: read and change modules' live configuration.

    corral config get compiler                      # the current values, as JSON
    corral config set compiler max_depth=64 mode=fast
    corral config set compiler '{"max_depth": 64}'  # a whole document replaces the config
    corral config history compiler
    corral config rollback compiler 3

In `key=value`, the value is read as JSON when it parses as JSON (64, true, "64", [1, 2]), and
as a string otherwise (fast). The pairs are merged over the current config; `--replace` makes
them the whole config. Errors go to stderr with their code, and the exit status is 1 (2 for
arguments that are not usable).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from rich.table import Table

from corral.bus import BusSettings, connect
from corral.cli.calls import ask
from corral.cli.output import err, out
from corral.subjects import Subjects

__all__ = ["add_parser", "parse_assignments", "run"]


def add_parser(sub: Any) -> None:
    """Add `config` and its verbs to the `corral` parser's subcommands (`sub`)."""
    config = sub.add_parser("config", help="read and change modules' live configuration")
    verbs = config.add_subparsers(dest="config_command", required=True, metavar="VERB")
    get = verbs.add_parser("get", help="print a module's current config as JSON")
    get.add_argument("module")
    get.add_argument("--full", action="store_true", help="also the version, schema and each instance")
    set_ = verbs.add_parser("set", help="validate, apply in the running module, then store")
    set_.add_argument("module")
    set_.add_argument("values", nargs="+", metavar="KEY=VALUE", help="key=value pairs, or one JSON object")
    set_.add_argument("--replace", action="store_true", help="the pairs are the whole config, not a change")
    set_.add_argument("--expect-version", type=int, help="only if the config is at this version (0: none)")
    history = verbs.add_parser("history", help="the kept versions of a module's config")
    history.add_argument("module")
    rollback = verbs.add_parser("rollback", help="apply and store an earlier version again")
    rollback.add_argument("module")
    rollback.add_argument("version", type=int)


def parse_assignments(args: list[str]) -> tuple[dict[str, Any], bool]:
    """(values, is_whole_document) from `key=value ...` or a single JSON object."""
    if len(args) == 1 and args[0].lstrip().startswith("{"):
        try:
            document = json.loads(args[0])
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON object: {exc}") from None
        if not isinstance(document, dict):
            raise ValueError("a whole config must be a JSON object")
        return document, True
    values: dict[str, Any] = {}
    for arg in args:
        key, sep, text = arg.partition("=")
        if not sep or not key:
            raise ValueError(f"{arg!r} is not key=value (or give one JSON object)")
        try:
            values[key] = json.loads(text)
        except json.JSONDecodeError:
            values[key] = text
    return values, False


async def run(args: argparse.Namespace, bus: BusSettings, prefix: str) -> int:
    """Run one `corral config` verb; returns the exit status."""
    subjects = Subjects(prefix)
    verb = args.config_command
    body: dict[str, Any] = {"module": args.module}
    if verb == "set":
        try:
            values, whole = parse_assignments(args.values)
        except ValueError as exc:
            err.print(f"corral config set: {exc}")
            return 2
        body |= {"values": values, "replace": whole or args.replace}
        if args.expect_version is not None:
            body["expected_version"] = args.expect_version
    elif verb == "rollback":
        body["version"] = args.version
    nc = await connect(bus)
    try:
        reply = await ask(nc, subjects.service("orchestrator", f"config.{verb}"), body, timeout=15.0)
    except RuntimeError as exc:
        err.print(f"[red]{exc}[/]")
        return 1
    finally:
        await nc.close()
    if verb == "get":
        print(json.dumps(reply if args.full else reply["values"], indent=2, sort_keys=True))
    elif verb == "history":
        _print_history(reply)
    else:
        _print_change(reply)
    return 0


def _print_change(change: dict[str, Any]) -> None:
    where = (
        f"applied to {len(change['applied_to'])} instance(s)"
        if change["applied_to"]
        else "stored; the module applies it when it starts"
    )
    changed = ", ".join(change["changed"]) or "nothing"
    note = f" ({change['note']})" if change["note"] else ""
    out.print(f"{change['module']}: config version {change['version']}{note} {where}; changed: {changed}")


def _print_history(versions: list[dict[str, Any]]) -> None:
    table = Table(title=f"config of {versions[-1]['module']}" if versions else "config")
    for column in ("version", "when", "source", "note", "instances", "values"):
        table.add_column(column)
    now = time.time()
    for doc in versions:
        table.add_row(
            str(doc["version"]),
            f"{now - doc['time']:.0f}s ago",
            doc["source"],
            doc["note"] or "-",
            str(len(doc["applied_to"])),
            json.dumps(doc["values"], sort_keys=True),
        )
    out.print(table)
    sys.stdout.flush()
