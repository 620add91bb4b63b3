"""`corral breakers`, `corral breaker reset <module>` and the call-statistics part of `corral status`."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient
from rich.table import Table

from corral.bus import BusSettings, connect, request
from corral.cli.output import err, out
from corral.subjects import Subjects

__all__ = ["ask", "breaker_reset", "breakers", "call_stats_table"]


async def ask(nc: NatsClient, subject: str, body: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
    """Request a corral endpoint; return the success payload or raise RuntimeError with its errors."""
    data = msgspec.json.encode(body) if body is not None else b""
    try:
        msg = await request(nc, subject, data, timeout=timeout)
    except nats.errors.NoRespondersError:
        raise RuntimeError(
            f"nobody answers {subject}: is the system up (corral up), and the prefix right?"
        ) from None
    except nats.errors.TimeoutError:
        raise RuntimeError(f"no answer on {subject} within {timeout:g}s") from None
    reply = msgspec.json.decode(msg.data)
    if not reply.get("success"):
        payload = reply.get("payload") or {}
        raise RuntimeError(f"{payload.get('code', 'ERROR')}: {'; '.join(payload.get('errors', []))}")
    return reply["payload"]


def call_stats_table(stats: dict[str, Any]) -> Table:
    table = Table(title=f"calls through the orchestrator ({stats['routed']} routed)")
    for column in (
        "module",
        "calls",
        "ok",
        "errors",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "in flight",
        "queued",
        "breaker",
    ):
        table.add_column(column)
    for name, m in stats["modules"].items():
        errors = ", ".join(f"{code} {count}" for code, count in sorted(m["errors"].items())) or "-"
        table.add_row(
            name,
            str(m["calls"]),
            str(m["successes"]),
            errors,
            f"{m['p50_ms']:.2f}",
            f"{m['p95_ms']:.2f}",
            f"{m['p99_ms']:.2f}",
            str(m["in_flight"]),
            str(m["queued"]),
            m["breaker"],
        )
    return table


async def breakers(bus: BusSettings, prefix: str) -> int:
    nc = await connect(bus)
    try:
        snapshots = await ask(nc, Subjects(prefix).service("orchestrator", "breakers"))
    except RuntimeError as exc:
        err.print(f"[red]{exc}[/]")
        return 1
    finally:
        await nc.close()
    if not snapshots:
        out.print("no breakers yet: no module has been called through the orchestrator")
        return 0
    table = Table(title="circuit breakers")
    for column in ("module", "state", "since", "next probe", "failure rate", "reason"):
        table.add_column(column)
    now = time.time()
    for s in snapshots:
        probe = f"in {s['retry_at'] - now:.1f}s" if s["state"] == "open" else "-"
        since = f"{now - s['since']:.0f}s ago"
        rate = f"{s['failure_rate']:.0%} of {s['calls_in_window']}"
        table.add_row(s["module"], s["state"], since, probe, rate, s["reason"])
    out.print(table)
    return 0


async def breaker_reset(bus: BusSettings, prefix: str, module: str) -> int:
    nc = await connect(bus)
    try:
        snapshot = await ask(
            nc, Subjects(prefix).service("orchestrator", "breaker.reset"), {"module": module}
        )
    except RuntimeError as exc:
        err.print(f"[red]{exc}[/]")
        return 1
    finally:
        await nc.close()
    out.print(f"breaker of {snapshot['module']} is {snapshot['state']}")
    return 0
