"""Helpers for the lifecycle tests: a system of probe modules (tests/fixtures/modules/probe.py)
run by an in-process orchestrator on the session nats-server, and ways to watch it."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client

from corral.config import ModuleConfig, SystemConfig
from corral.orchestrator.service import OrchestratorService
from corral.runtime import ServiceSettings

PROBE = str(Path(__file__).parent / "fixtures" / "modules" / "probe.py")


def probe(depends_on: list[str] | None = None, **fields: Any) -> ModuleConfig:
    """A probe module descriptor; `env=` and other ModuleConfig fields pass through."""
    body = {
        "command": [sys.executable, PROBE],
        "depends_on": depends_on or [],
        "startup_timeout": 20.0,
        **fields,
    }
    return msgspec.convert(body, ModuleConfig)


def journal(path: Path) -> list[list[str]]:
    """The probe modules' journal: one [module, event, pid, time] per line."""
    if not path.exists():
        return []
    return [line.split(" ", 3) for line in path.read_text().splitlines()]


def system(tmp_path: Path, modules: dict[str, ModuleConfig], **fields: Any) -> SystemConfig:
    config = SystemConfig(modules=modules, log_dir=str(tmp_path / "logs"), **fields)
    config.root = str(tmp_path)
    return config


@asynccontextmanager
async def orchestrator(settings: ServiceSettings, config: SystemConfig) -> AsyncIterator[OrchestratorService]:
    """An orchestrator that stops every module it launched on the way out."""
    service = OrchestratorService(settings, config=config)
    await service.start()
    try:
        yield service
    finally:
        if service.lifecycle is not None and service.lifecycle.active:
            await service.lifecycle.stop_system(timeout=3.0)
        await service.stop()


async def call(nc: Client, subject: str, body: Any = None, timeout: float = 60.0) -> dict[str, Any]:
    data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    for attempt in range(3):
        try:
            msg = await nc.request(subject, data, timeout=timeout)
            break
        except nats.errors.NoRespondersError:
            # nats-server now and then answers "no responders" to the first request after
            # another connection's SUB + flush (see tests/integration/test_leader.py).
            if attempt == 2:
                raise
            await asyncio.sleep(0.1)
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


class EventLog:
    """Every lifecycle event of a prefix, as decoded dicts, in arrival order."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []
        self.changed = asyncio.Event()

    async def attach(self, nc: Client, prefix: str) -> None:
        async def on_event(msg: Any) -> None:
            body = json.loads(msg.data)
            if "module" not in body:
                return  # a leadership event
            (self.alerts if msg.subject.endswith(".alert") else self.events).append(body)
            self.changed.set()

        await nc.subscribe(f"{prefix}.evt.lifecycle.>", cb=on_event)
        await nc.flush()

    def of(self, module: str) -> list[tuple[str, str]]:
        return [(e["old"], e["new"]) for e in self.events if e["module"] == module]

    def became(self, state: str) -> list[str]:
        return [e["module"] for e in self.events if e["new"] == state]

    def reasons(self, module: str) -> list[str]:
        return [e["reason"] for e in self.events if e["module"] == module]

    def state(self, module: str) -> str | None:
        states = [e["new"] for e in self.events if e["module"] == module]
        return states[-1] if states else None

    async def wait_for(self, predicate: Any, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


async def unhealthy(nc: Client, prefix: str, module: str, instance: str) -> None:
    """The verdict event the health service publishes for an instance it judges unhealthy."""
    event = {"module": module, "instance": instance, "old": "healthy", "new": "unhealthy",
             "reason": "2 failed check rounds in a row: db", "time": time.time()}  # fmt: skip
    await nc.publish(f"{prefix}.evt.health.{module}", json.dumps(event).encode())
