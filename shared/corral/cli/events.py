"""`corral events [--since 10m] [--source S] [--kind K] [--limit N] [--follow]`: the event history
(`<prefix>.health.events`), then, with `--follow`, live events as they are published."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import time
from typing import Any

import msgspec
from nats.aio.msg import Msg

from corral.bus import BusSettings, connect
from corral.cli.calls import ask
from corral.cli.output import err, out
from corral.subjects import EVENT_OWNERS, EVENT_SOURCES, Subjects

__all__ = ["add_parser", "parse_since", "run"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> float:
    """`90s`, `10m`, `2h`, `1d` or plain seconds -> seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"--since {text!r}: use a duration such as 90s, 10m, 2h or 1d")
    return float(match[1]) * _UNITS[match[2] or "s"]


def add_parser(sub: Any) -> None:
    events = sub.add_parser("events", help="the event history (lifecycle, breaker, health, ...), or --follow")
    events.add_argument(
        "--since", type=parse_since, default=0.0, help="how far back, e.g. 10m (default: all)"
    )
    events.add_argument("--source", choices=sorted(set(EVENT_OWNERS.values())), default="")
    events.add_argument("--kind", choices=EVENT_SOURCES, default="")
    events.add_argument("--limit", type=int, default=100, help="at most this many, the latest (default 100)")
    events.add_argument("--follow", "-f", action="store_true", help="then print live events until Ctrl-C")
    events.add_argument("--json", action="store_true", help="one JSON object per line")


async def run(args: argparse.Namespace, bus: BusSettings, prefix: str) -> int:
    subjects = Subjects(prefix)
    nc = await connect(bus)
    try:
        query = {"since": args.since, "source": args.source, "kind": args.kind, "limit": args.limit}
        try:
            history = await ask(nc, subjects.service("health", "events"), query)
        except RuntimeError as exc:
            err.print(f"[red]{exc}[/]")
            return 1
        for record in history:
            _print(record, args.json)
        if args.follow:
            await _follow(nc, subjects, args)
    finally:
        await nc.close()
    return 0


async def _follow(nc: Any, subjects: Subjects, args: argparse.Namespace) -> None:
    kinds = [k for k in EVENT_SOURCES if (not args.kind or k == args.kind)]
    kinds = [k for k in kinds if not args.source or EVENT_OWNERS[k] == args.source]

    async def on_event(msg: Msg) -> None:
        kind = msg.subject[len(subjects.prefix) + 1 :].split(".")[1]
        try:
            data: Any = msgspec.json.decode(msg.data)
        except msgspec.DecodeError:
            data = msg.data.decode(errors="replace")
        record = {"time": time.time(), "subject": msg.subject, "source": EVENT_OWNERS[kind], "kind": kind}
        _print({**record, "data": data}, args.json)

    for kind in kinds:
        await nc.subscribe(f"{subjects.prefix}.evt.{kind}.>", cb=on_event)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()  # until Ctrl-C


def _print(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(record), flush=True)
        return
    when = time.strftime("%H:%M:%S", time.localtime(record["time"]))
    out.print(
        f"{when} [bold]{record['source']}/{record['kind']}[/] {record['subject']} "
        f"{json.dumps(record['data'])}",
        soft_wrap=True,
        markup=True,
    )
