"""The health service against a real nats-server: verdicts from heartbeats, a module's own
checks and resource limits (with throttling), events, /metrics, /api/status and SSE."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import msgspec
import psutil
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from corral.cli import events as events_cli
from corral.cli.main import _parser
from corral.config import ModuleConfig, ResourceLimits
from corral.health.service import HealthService
from corral.health.settings import HealthSettings
from corral.runtime import ServiceSettings
from corral.sdk import Module

FAST = HealthSettings(
    check_interval=0.2, check_timeout=0.5, unhealthy_threshold=3, violation_window=0.5, unhealthy_window=60
)


async def call(nc: Client, subject: str, body: Any = None) -> Any:
    msg = await nc.request(subject, b"" if body is None else json.dumps(body).encode(), timeout=5)
    reply = json.loads(msg.data)
    assert reply["success"], reply
    return reply["payload"]


async def eventually(probe: Callable[[], Awaitable[Any]], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if last := await probe():
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout}s; last: {last!r}")


class Events:
    """Every event on `<prefix>.evt.>` since subscribing."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    async def on(self, msg: Msg) -> None:
        self.seen.append((msg.subject, json.loads(msg.data)))

    def verdicts(self, module: str, instance: str = "") -> list[str]:
        return [
            e["new"] for s, e in self.seen if s.endswith(f".health.{module}") and e["instance"] == instance
        ]


@pytest.fixture
async def events(nc: Client, prefix: str) -> AsyncIterator[Events]:
    events = Events()
    sub = await nc.subscribe(f"{prefix}.evt.>", cb=events.on)
    yield events
    await sub.unsubscribe()


def verdict_of(name: str) -> Callable[[Client, str], Awaitable[str]]:
    async def read(nc: Client, prefix: str) -> str:
        picture = await call(nc, f"{prefix}.health.status")
        entry = picture["modules"].get(name)
        return str(entry["verdict"]) if entry else "absent"

    return read


async def test_a_module_that_stops_heartbeating_becomes_unhealthy(
    settings: ServiceSettings, nc: Client, prefix: str, events: Events
) -> None:
    module = Module("quiet")
    async with HealthService(settings, health=FAST, modules={}):
        service = module.service(settings)
        await service.start()
        await eventually(lambda: _is(verdict_of("quiet"), nc, prefix, "healthy"))
        await service.stop()
        await eventually(lambda: _is(verdict_of("quiet"), nc, prefix, "unhealthy"))
        picture = await call(nc, f"{prefix}.health.status")
        assert picture["status"] == "unhealthy"
        entry = picture["modules"]["quiet"]
        assert entry["last_heartbeat_seconds"] > 0.6
        assert "no heartbeat" in entry["instances"][0]["reason"]
    assert events.verdicts("quiet")[-2:] == ["healthy", "unhealthy"]
    assert "unhealthy" in events.verdicts("quiet", settings.instance)


async def test_a_module_that_beats_less_often_is_judged_by_its_own_interval(
    settings: ServiceSettings, nc: Client, prefix: str, events: Events
) -> None:
    """Health's interval is 0.2 s (silent for 0.6 s: unhealthy); a module that says it beats
    every 1.5 s stays healthy between its beats."""
    module = Module("slowbeat")
    slow = msgspec.structs.replace(settings, heartbeat_interval=1.5)
    async with HealthService(settings, health=FAST, modules={}):
        service = module.service(slow)
        await service.start()
        await eventually(lambda: _is(verdict_of("slowbeat"), nc, prefix, "healthy"))
        await asyncio.sleep(3.5)  # two gaps between its beats, each far past health's 0.6 s
        assert events.verdicts("slowbeat") == ["healthy"]
        picture = await call(nc, f"{prefix}.health.status")
        assert picture["modules"]["slowbeat"]["verdict"] == "healthy"
        await service.stop()  # gone: its check rounds fail at once, its beats stop
        await eventually(lambda: _is(verdict_of("slowbeat"), nc, prefix, "unhealthy"), timeout=10)


async def test_a_failing_own_check_degrades_then_makes_unhealthy_then_recovers(
    settings: ServiceSettings, nc: Client, prefix: str, events: Events
) -> None:
    module = Module("dbuser")
    db = {"up": True}

    @module.health_check("db")
    async def db_reachable() -> bool:
        if not db["up"]:
            raise ConnectionError("db is down")
        return True

    async with HealthService(settings, health=FAST, modules={}), module.service(settings):
        reply = await call(nc, f"{prefix}.modctl.dbuser.health")
        assert reply["checks"] == {"db": {"ok": True, "error": ""}}
        await eventually(lambda: _is(verdict_of("dbuser"), nc, prefix, "healthy"))
        db["up"] = False
        await eventually(lambda: _is(verdict_of("dbuser"), nc, prefix, "unhealthy"))
        picture = await call(nc, f"{prefix}.health.status")
        entry = picture["modules"]["dbuser"]
        assert entry["failing_checks"] == ["check:db"]
        assert entry["instances"][0]["checks"]["db"] == {"ok": False, "error": "ConnectionError: db is down"}
        db["up"] = True
        await eventually(lambda: _is(verdict_of("dbuser"), nc, prefix, "healthy"))
    assert events.verdicts("dbuser") == ["healthy", "degraded", "unhealthy", "healthy"]


@pytest.mark.slow
async def test_a_module_over_its_memory_limit_is_throttled_then_released(
    settings: ServiceSettings, nc: Client, prefix: str, events: Events
) -> None:
    module = Module("hog")
    held: list[bytearray] = []

    @module.handler("grow")
    async def grow(payload: dict[str, int]) -> int:
        held.append(bytearray(b"\x01") * (payload["mb"] * 2**20))  # touched, so resident
        return len(held)

    @module.handler("free")
    async def free(payload: dict[str, Any]) -> int:
        held.clear()
        return 0

    async with module.service(settings) as service:
        limits = ResourceLimits(memory_mb=_rss_mb() + 60)  # the module runs in this process
        async with HealthService(
            settings, health=FAST, modules={"hog": ModuleConfig(kind="external", limits=limits)}
        ):
            await eventually(lambda: _is(verdict_of("hog"), nc, prefix, "healthy"))
            await call(nc, f"{prefix}.mod.hog.grow", {"mb": 150})
            await eventually(lambda: _true(service.throttle.limit == 1))
            await eventually(lambda: _is(verdict_of("hog"), nc, prefix, "degraded"))
            picture = await call(nc, f"{prefix}.health.status")
            assert picture["modules"]["hog"]["throttled"] is True
            assert picture["modules"]["hog"]["instances"][0]["over_limits"] == ["memory_mb"]
            await call(nc, f"{prefix}.mod.hog.free")
            await eventually(lambda: _true(service.throttle.limit is None))
            await eventually(lambda: _is(verdict_of("hog"), nc, prefix, "healthy"))
    resource = [e for s, e in events.seen if s == f"{prefix}.evt.resource.hog"]
    assert [e["event"] for e in resource] == ["violation", "recovered"]
    assert resource[0]["limits"] == ["memory_mb"]
    assert events.verdicts("hog")[-3:] == ["healthy", "degraded", "healthy"]


async def test_metrics_status_api_sse_and_event_history(
    settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    module = Module("watched")
    async with HealthService(settings, health=FAST, modules={}) as health, aiohttp.ClientSession() as http:
        service = module.service(settings)
        await service.start()
        async with http.get(f"{health.metrics_url}/api/events") as stream:
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            assert await stream.content.readline() == b": connected\n"
            await eventually(lambda: _is(verdict_of("watched"), nc, prefix, "healthy"))
            data = await asyncio.wait_for(_next_sse(stream, f"{prefix}.evt.health.watched"), 5)
            assert data["data"]["new"] == "healthy"
        async with http.get(f"{health.metrics_url}/api/status") as response:
            picture = await response.json()
        assert picture["modules"]["watched"]["verdict"] == "healthy"
        async with http.get(f"{health.metrics_url}/") as response:
            assert "EventSource" in await response.text()
        async with http.get(f"{health.metrics_url}/metrics") as response:
            text = await response.text()
        assert 'corral_health_verdict{module="watched"} 0.0' in text
        assert (
            f'corral_health_heartbeat_age_seconds{{instance="{settings.instance}",service="watched"}}' in text
        )
        assert "# TYPE corral_health_limit_violations_total counter" in text
        await service.stop()

        history = await call(
            nc, f"{prefix}.health.events", {"source": "health", "kind": "health", "since": 60}
        )
        assert {e["kind"] for e in history} == {"health"}
        assert any(e["data"]["module"] == "watched" and e["data"]["new"] == "healthy" for e in history)
        assert await call(nc, f"{prefix}.health.events", {"source": "scheduler"}) == []
        last = await call(nc, f"{prefix}.health.events", {"limit": 1})
        assert len(last) == 1
        assert last[0]["seq"] >= history[-1]["seq"]
        bad = json.loads((await nc.request(f"{prefix}.health.events", b'{"kind": "nope"}', timeout=5)).data)
        assert bad["payload"]["code"] == "VALIDATION"
        assert "unknown event kind 'nope'" in bad["payload"]["errors"][0]


async def _next_sse(stream: aiohttp.ClientResponse, subject: str) -> dict[str, Any]:
    while True:
        line = await stream.content.readline()
        if line.startswith(b"data: "):
            data: dict[str, Any] = json.loads(line[6:])
            if data["subject"] == subject:
                return data


async def _is(read: Callable[[Client, str], Awaitable[str]], nc: Client, prefix: str, want: str) -> bool:
    return await read(nc, prefix) == want


async def _true(value: bool) -> bool:
    return value


def _rss_mb() -> float:
    return float(psutil.Process().memory_info().rss / 2**20)


async def test_corral_events_cli_prints_filtered_history(
    settings: ServiceSettings, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with HealthService(settings, health=FAST, modules={}) as health:
        # A status request judges at once; health is healthy once its own first heartbeat is in.
        await eventually(lambda: _is(verdict_of("health"), health.nc, prefix, "healthy"))
        argv = ["events", "--since", "10m", "--source", "health", "--kind", "health", "--json"]
        args = _parser().parse_args(argv)
        assert args.since == 600.0
        assert await events_cli.run(args, settings.bus, prefix) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines
    assert {(r["source"], r["kind"]) for r in lines} == {("health", "health")}
    assert any(r["data"]["module"] == "health" and r["data"]["new"] == "healthy" for r in lines)
