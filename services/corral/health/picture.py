"""The system picture `<prefix>.health.status` and `/api/status` answer. Pure: no NATS."""

from __future__ import annotations

import time
from typing import Any

from corral.config import ModuleConfig
from corral.health.board import HealthBoard
from corral.health.verdicts import Verdict, system_verdict

__all__ = ["picture"]


def picture(board: HealthBoard, modules: dict[str, ModuleConfig]) -> dict[str, Any]:
    """`{status, checked_at, modules: {name: {...}}, services: {name: {...}}}`.

    `modules` has every service and module seen (and every module of the system file): its
    verdict, whether it is required, its instances with their own verdicts and figures, the
    age of its freshest heartbeat, its failing checks, and cpu and memory summed over its
    instances. `services` keeps the older per-name counts (instances, alive, ready)."""
    entries: dict[str, dict[str, Any]] = {}
    counts: dict[str, dict[str, Any]] = {}
    for name, verdict in board.modules.items():
        config = modules.get(name)
        entries[name] = {
            "verdict": verdict.label,
            "required": config.required if config else True,
            "role": "module" if config else "",
            "throttled": name in board.throttled,
            "last_heartbeat_seconds": None,
            "failing_checks": [],
            "cpu_percent": 0.0,
            "memory_mb": 0.0,
            "instances": [],
        }
    for view in board.views:
        health = board.health_of(view.service, view.instance)
        entry = entries[view.service]
        entry["role"] = view.role
        memory = round(view.rss_bytes / 2**20, 1)
        entry["instances"].append(
            {
                "instance": view.instance,
                "verdict": health.verdict.label,
                "reason": health.reason,
                "alive": view.alive,
                "ready": view.ready,
                "last_heartbeat_seconds": view.last_seen_seconds,
                "cpu_percent": view.cpu_percent,
                "memory_mb": memory,
                "threads": view.threads,
                "open_files": view.open_fds,
                "in_flight": view.in_flight,
                "failing": list(health.failing),
                "checks": health.checks,
                "over_limits": list(health.over_limits),
                "metrics_url": view.metrics_url,
            }
        )
        last = entry["last_heartbeat_seconds"]
        entry["last_heartbeat_seconds"] = (
            view.last_seen_seconds if last is None else min(last, view.last_seen_seconds)
        )
        entry["failing_checks"] = sorted({*entry["failing_checks"], *health.failing})
        entry["cpu_percent"] = round(entry["cpu_percent"] + view.cpu_percent, 1)
        entry["memory_mb"] = round(entry["memory_mb"] + memory, 1)
        count = counts.setdefault(
            view.service,
            {"role": view.role, "instances": 0, "alive": 0, "ready": 0, "cpu_percent": 0.0, "rss_bytes": 0},
        )
        count["instances"] += 1
        count["alive"] += view.alive
        count["ready"] += view.alive and view.ready
        count["cpu_percent"] = round(count["cpu_percent"] + view.cpu_percent, 1)
        count["rss_bytes"] += view.rss_bytes
    required = [Verdict[e["verdict"].upper()] for e in entries.values() if e["required"]]
    return {
        "status": system_verdict(required).label,
        "checked_at": time.time(),
        "modules": entries,
        "services": counts,
    }
