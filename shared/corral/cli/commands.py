"""`corral send`, `corral status` and `corral run`: clients of a running system."""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

import msgspec
from rich.table import Table

from corral.bus import BusSettings, connect
from corral.cli.calls import ask, call_stats_table
from corral.cli.output import err, out
from corral.discovery import discover
from corral.errors import CorralError
from corral.sdk.client import Client
from corral.subjects import SERVICES, Subjects

__all__ = ["run_service", "send", "status"]


async def send(
    bus: BusSettings, prefix: str, module: str, type_: str, payload_json: str, timeout: float, priority: str
) -> int:
    try:
        payload = json.loads(payload_json) if payload_json else {}
    except json.JSONDecodeError as exc:
        err.print(f"[red]payload is not valid JSON:[/] {exc.msg} at line {exc.lineno}, column {exc.colno}")
        return 2
    async with await Client.connect(bus, prefix=prefix) as client:
        try:
            result = await client.send(module, type_, payload, timeout=timeout, priority=priority)
        except (CorralError, ValueError) as exc:
            code = getattr(exc, "code", "VALIDATION")
            err.print(f"[red]{code}[/]: {exc}")
            return 1
    print(json.dumps(result, indent=None if _is_scalar(result) else 2))
    return 0


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, dict | list)


async def status(bus: BusSettings, prefix: str) -> int:
    nc = await connect(bus)
    try:
        instances = await discover(nc, prefix, wait=0.5)
        figures: dict[str, dict[str, Any]] = {}
        system = ""
        try:
            msg = await nc.request(Subjects(prefix).service("health", "status"), b"", timeout=2)
            reply = msgspec.json.decode(msg.data)
            if reply.get("success"):
                system = reply["payload"]["status"]
                figures = {
                    i["instance"]: i for m in reply["payload"]["modules"].values() for i in m["instances"]
                }
        except Exception:  # the health service may be down; status still lists what answers
            err.print("[yellow]the health service did not answer; verdicts and figures are missing[/]")
        try:
            call_stats = await ask(nc, Subjects(prefix).service("orchestrator", "stats"), timeout=2)
        except Exception:
            call_stats = None
            err.print("[yellow]the orchestrator did not answer; call statistics are missing[/]")
    finally:
        await nc.close()
    if not instances:
        err.print(f"nothing is running under prefix {prefix!r} (is `corral up` running? is NATS_URL right?)")
        return 1
    title = f"corral status (prefix {prefix})" + (f": {system}" if system else "")
    table = Table(title=title)
    columns = ("name", "role", "instance", "version", "verdict", "cpu %", "rss MB", "endpoints", "metrics")
    for column in columns:
        table.add_column(column)
    for info in sorted(instances, key=lambda i: (i.role != "service", i.name)):
        f = figures.get(info.metadata.get("instance", ""), {})
        table.add_row(
            info.name,
            info.role,
            info.metadata.get("instance", info.id),
            info.version,
            _verdict(f),
            f"{f['cpu_percent']:.1f}" if f else "",
            f"{f['memory_mb']:.1f}" if f else "",
            str(len(info.endpoints)),
            info.metrics_url,
        )
    out.print(table)
    if call_stats and call_stats["modules"]:
        out.print(call_stats_table(call_stats))
    missing = [s for s in SERVICES if s not in {i.name for i in instances}]
    if missing:
        err.print(f"[yellow]not running:[/] {', '.join(missing)}")
    return 0


_COLOURS = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}


def _verdict(figures: dict[str, Any]) -> str:
    if not figures:
        return "?"
    verdict = str(figures["verdict"])
    failing = ", ".join(figures.get("failing") or figures.get("over_limits") or [])
    shown = f"{verdict} ({failing})" if failing else verdict
    colour = _COLOURS.get(verdict)
    return f"[{colour}]{shown}[/]" if colour else shown


def run_service(name: str) -> int:
    if name not in SERVICES:
        err.print(f"unknown service {name!r}: choose one of {', '.join(SERVICES)}")
        return 2
    main = importlib.import_module(f"corral.{name}.__main__").main
    main()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `corral` command")
