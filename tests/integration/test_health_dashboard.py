"""Every metric the Grafana dashboard queries is exported by a running system (health,
orchestrator and a module in-process, after one call through the orchestrator); the live
dashboard shows the circuit breakers the orchestrators share."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
from nats.aio.client import Client

from corral.health.service import HealthService
from corral.health.settings import HealthSettings
from corral.orchestrator.service import OrchestratorService
from corral.policy import BreakerConfig, CallPolicy
from corral.runtime import ServiceSettings
from corral.sdk import Module
from corral.subjects import Subjects
from tests.conftest import REPO

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
METRIC = re.compile(r"\b((?:corral|process)_[a-z0-9_]+)\b")


def dashboard_metrics() -> set[str]:
    dashboard = json.loads((REPO / "deploy/grafana/corral.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return {name for expr in exprs for name in METRIC.findall(expr)}


async def test_every_dashboard_metric_is_exported(settings: ServiceSettings, nc: Client, prefix: str) -> None:
    module = Module("graphed")

    @module.handler("echo")
    async def echo(payload: dict[str, int]) -> dict[str, int]:
        return payload

    health = HealthService(settings, health=HealthSettings(check_interval=0.2), modules={})
    orchestrator = OrchestratorService(settings)
    async with health, orchestrator, module.service(settings) as service:
        reply = json.loads(
            (
                await nc.request(
                    f"{prefix}.send.graphed", b'{"type": "echo", "payload": {"a": 1}}', timeout=5
                )
            ).data
        )
        assert reply["success"], reply
        await nc.request(f"{prefix}.health.status", b"", timeout=5)  # judges every instance now
        exported = ""
        async with aiohttp.ClientSession() as http:
            for url in (health.metrics_url, orchestrator.metrics_url, service.metrics_url):
                async with http.get(f"{url}/metrics") as response:
                    exported += await response.text()
    names = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", exported, re.MULTILINE))
    # A labelled family with no samples yet (violations: none happened) is declared by `# TYPE`.
    for family, kind in re.findall(r"^# TYPE (\S+) (\S+)", exported, re.MULTILINE):
        names.add(family)
        names.update(f"{family}{suffix}" for suffix in SUFFIXES.get(kind, ()))
    wanted = dashboard_metrics()
    assert len(wanted) >= 10
    assert sorted(wanted - names) == []


async def test_the_live_dashboard_shows_shared_breaker_state(
    settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    # A declared module with no running instance: each call is UNAVAILABLE, a module fault.
    policy = CallPolicy(timeout=1.0, breaker=BreakerConfig(consecutive_failures=2, wait_open=30.0))
    health = HealthService(settings, health=HealthSettings(check_interval=0.2), modules={})
    orchestrator = OrchestratorService(settings, policies={"absent": policy})
    async with health, orchestrator, aiohttp.ClientSession() as http:
        async with http.get(f"{health.metrics_url}/api/breakers") as response:
            assert response.status == 200
            assert await response.json() == []  # nothing called yet
        for _ in range(2):
            body = json.loads(
                (await nc.request(f"{prefix}.send.absent", b'{"type": "ping"}', timeout=5)).data
            )
            assert body["payload"]["code"] == "UNAVAILABLE"
        # Someone else's unreadable entry in the bucket is skipped, not an error.
        await (await nc.jetstream().key_value(Subjects(prefix).breakers_bucket)).put("junk", b"not json")
        for _ in range(50):
            async with http.get(f"{health.metrics_url}/api/breakers") as response:
                assert response.status == 200
                breakers = await response.json()
            if breakers:
                break
            await asyncio.sleep(0.05)
        assert [b["module"] for b in breakers] == ["absent"]
        (absent,) = breakers
        assert absent["state"] == "open"
        assert absent["retry_at"] > absent["since"]
        assert absent["replica"]
        assert absent["reason"].startswith("2 consecutive failures")
        async with http.get(f"{health.metrics_url}/") as response:
            page = await response.text()
        assert "circuit breakers" in page
        assert 'fetch("api/breakers")' in page
