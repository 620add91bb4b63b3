"""The Service runtime every corral process runs on, against the session's real nats-server.

Registration with the NATS Services API, heartbeats, the HTTP endpoint, concurrency, drain,
and what the health service and the orchestrator make of them. Services run in-process,
except for the last test, which runs `python -m corral.state` to check SIGTERM handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import msgspec
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from corral.errors import ConfigError
from corral.health.service import HealthService
from corral.orchestrator.service import OrchestratorService
from corral.protocol import Heartbeat
from corral.runtime import RequestContext, Service, ServiceSettings
from corral.runtime.logs import current_trace_id
from corral.sdk import Module, ValidationError
from corral.sdk.control import CONTROL_VERBS
from corral.sdk.module import ModuleService

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Check(msgspec.Struct):
    ok: bool


class Nap(msgspec.Struct):
    seconds: float


def make_module(name: str) -> Module:
    module = Module(name, version="1.2.3")

    @module.handler("check")
    async def check(req: Check) -> str:
        if not req.ok:
            raise ValidationError("not ok")
        return "fine"

    @module.handler("nap")
    async def nap(req: Nap) -> float:
        await asyncio.sleep(req.seconds)
        return req.seconds

    @module.handler("trace")
    async def trace(payload: Any, ctx: RequestContext) -> dict[str, Any]:
        return {
            "traceparent": ctx.headers.get("traceparent"),
            "tracestate": ctx.headers.get("tracestate"),
            "other": ctx.headers.get("X-Other"),
            "trace_id": current_trace_id(),
            "subject": ctx.subject,
        }

    return module


@pytest.fixture
def name(prefix: str) -> str:
    """A module name of this test's own: `$SRV.*.<name>` is not scoped by our prefix."""
    return f"rt_{prefix}"


@pytest.fixture
async def module(name: str, settings: ServiceSettings) -> AsyncIterator[ModuleService]:
    async with make_module(name).service(settings) as service:
        await service.nc.flush()
        assert isinstance(service, ModuleService)
        yield service


async def call(nc: Client, subject: str, body: Any = None, **kwargs: Any) -> dict[str, Any]:
    data = b"" if body is None else json.dumps(body).encode()
    msg = await nc.request(subject, data, timeout=kwargs.pop("timeout", 5.0), **kwargs)
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


async def send_checks(nc: Client, prefix: str, name: str, ok: int, failed: int) -> None:
    for _ in range(ok):
        reply = await call(nc, f"{prefix}.mod.{name}.check", {"ok": True})
        assert reply["payload"] == "fine"
    for _ in range(failed):
        reply = await call(nc, f"{prefix}.mod.{name}.check", {"ok": False})
        assert reply["payload"] == {"code": "VALIDATION", "errors": ["not ok"]}


async def eventually(
    probe: Callable[[], Awaitable[Any]], timeout: float = 3.0, interval: float = 0.05
) -> Any:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"not within {timeout}s; last: {last!r}")


# --- NATS Services API -----------------------------------------------------------------------------


async def test_srv_info_describes_the_instance(
    module: ModuleService, nc: Client, name: str, prefix: str
) -> None:
    info = json.loads((await nc.request(f"$SRV.INFO.{name}", b"", timeout=2)).data)
    assert info["type"] == "io.nats.micro.v1.info_response"
    assert info["name"] == name
    assert info["version"] == "1.2.3"
    assert info["metadata"] == {
        "corral_prefix": prefix,
        "corral_role": "module",
        "instance": module.instance,
        "metrics_url": module.metrics_url,
    }
    assert module.metrics_url.startswith("http://127.0.0.1:")
    # Handlers share the module's queue group; control verbs reach every instance (a group each).
    own_group = f"{prefix}.{name}-{module.instance}"
    assert {(e["name"], e["subject"], e["queue_group"]) for e in info["endpoints"]} == {
        ("check", f"{prefix}.mod.{name}.check", f"{prefix}.{name}"),
        ("nap", f"{prefix}.mod.{name}.nap", f"{prefix}.{name}"),
        ("trace", f"{prefix}.mod.{name}.trace", f"{prefix}.{name}"),
        *((f"modctl-{verb}", f"{prefix}.modctl.{name}.{verb}", own_group) for verb in CONTROL_VERBS),
    }


async def test_a_plain_service_registers_with_role_service(
    settings: ServiceSettings, nc: Client, name: str
) -> None:
    service = Service(name, settings=settings, version="0.9.0")

    @service.endpoint("echo", dict)
    async def echo(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        return payload

    async with service:
        await service.nc.flush()
        info = json.loads((await nc.request(f"$SRV.INFO.{name}", b"", timeout=2)).data)
        assert info["metadata"]["corral_role"] == "service"
        assert info["version"] == "0.9.0"
        assert [e["subject"] for e in info["endpoints"]] == [f"{settings.prefix}.{name}.echo"]
        reply = await call(nc, f"{settings.prefix}.{name}.echo", {"a": [1, 2]})
        assert reply["type"] == "echo:success"
        assert reply["payload"] == {"a": [1, 2]}


async def test_srv_ping_answers(module: ModuleService, nc: Client, name: str) -> None:
    info = json.loads((await nc.request(f"$SRV.INFO.{name}", b"", timeout=2)).data)
    ping = json.loads((await nc.request(f"$SRV.PING.{name}", b"", timeout=2)).data)
    assert ping["type"] == "io.nats.micro.v1.ping_response"
    assert ping["name"] == name
    assert ping["id"] == info["id"]
    assert ping["metadata"]["instance"] == module.instance

    # `$SRV.PING` without a name reaches every service on the server; ours is among them.
    replies: list[dict[str, Any]] = []

    async def collect(msg: Msg) -> None:
        replies.append(json.loads(msg.data))

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish("$SRV.PING", b"", reply=inbox)
        await eventually(lambda: asyncio.sleep(0, [r for r in replies if r["name"] == name]), timeout=2)
    finally:
        await sub.unsubscribe()
    assert [r["id"] for r in replies if r["name"] == name] == [info["id"]]


async def test_srv_stats_counts_requests_and_errors(
    module: ModuleService, nc: Client, name: str, prefix: str
) -> None:
    await send_checks(nc, prefix, name, ok=3, failed=2)
    stats = json.loads((await nc.request(f"$SRV.STATS.{name}", b"", timeout=2)).data)
    assert stats["type"] == "io.nats.micro.v1.stats_response"
    by_name = {e["name"]: e for e in stats["endpoints"]}
    check = by_name["check"]
    assert check["num_requests"] == 5
    assert check["num_errors"] == 2
    assert check["last_error"] == "VALIDATION"
    assert check["processing_time"] > 0
    assert check["average_processing_time"] == check["processing_time"] // 5
    assert check["data"] == {"in_flight": 0}
    assert by_name["nap"]["num_requests"] == 0
    assert by_name["nap"]["num_errors"] == 0


# --- heartbeats ------------------------------------------------------------------------------------


async def test_heartbeats_carry_process_figures(settings: ServiceSettings, nc: Client, name: str) -> None:
    beats: asyncio.Queue[tuple[str, Heartbeat]] = asyncio.Queue()

    async def on_beat(msg: Msg) -> None:
        await beats.put((msg.subject, msgspec.json.decode(msg.data, type=Heartbeat)))

    subject = f"{settings.prefix}.hb.{name}.{settings.instance}"
    sub = await nc.subscribe(f"{settings.prefix}.hb.>", cb=on_beat)
    await nc.flush()
    try:
        async with make_module(name).service(settings) as service:
            got, first = await asyncio.wait_for(beats.get(), 2)
            assert got == subject
            assert first.service == name
            assert first.instance == settings.instance
            assert first.role == "module"
            assert first.version == "1.2.3"
            assert first.pid == os.getpid()
            assert first.host == socket.gethostname()
            assert first.started == service.started_at
            assert first.rss_bytes > 0
            assert first.threads >= 1
            assert first.open_fds > 0
            assert first.ready is True
            assert first.in_flight == 0
            assert first.handled == 0
            assert first.metrics_url == service.metrics_url
            assert first.interval == settings.heartbeat_interval  # so a watcher knows when one is late

            _, second = await asyncio.wait_for(beats.get(), 2)
            _, third = await asyncio.wait_for(beats.get(), 2)
            # The first beat goes out at start, the next on the first shared boundary (which may be
            # near), the third on the boundary after (0.2 s on): not a burst, not a stall. A beat
            # can be late on a loaded machine, never early.
            assert 0.0 < second.timestamp - first.timestamp < 1.0
            assert 0.0 < third.timestamp - second.timestamp < 1.0
            assert third.timestamp - first.timestamp >= 0.19

            await send_checks(nc, settings.prefix, name, ok=2, failed=1)
            service.ready = False

            async def not_ready_beat() -> Heartbeat | None:
                _, beat = await asyncio.wait_for(beats.get(), 2)
                return None if beat.ready else beat

            later = await eventually(not_ready_beat, timeout=3, interval=0)
            assert later.handled == 3
    finally:
        await sub.unsubscribe()


# --- HTTP: /metrics, /healthz, /readyz -------------------------------------------------------------


async def fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, await response.text()


async def test_metrics_count_requests_by_endpoint_and_outcome(
    module: ModuleService, nc: Client, name: str, prefix: str
) -> None:
    await send_checks(nc, prefix, name, ok=3, failed=2)
    metric = f"corral_{name}"
    async with aiohttp.ClientSession() as session:
        status, text = await fetch(session, f"{module.metrics_url}/metrics")
    assert status == 200
    lines = text.splitlines()
    assert f'{metric}_requests_total{{endpoint="check",outcome="ok"}} 3.0' in lines
    assert f'{metric}_requests_total{{endpoint="check",outcome="VALIDATION"}} 2.0' in lines
    assert f'{metric}_request_duration_seconds_bucket{{endpoint="check",le="+Inf"}} 5.0' in lines
    assert f'{metric}_request_duration_seconds_count{{endpoint="check"}} 5.0' in lines
    assert f"{metric}_in_flight_requests 0.0" in lines
    assert any(line.startswith(f"{metric}_uptime_seconds ") for line in lines)
    assert any(line.startswith(f"{metric}_heartbeats_total ") for line in lines)
    assert any(line.startswith("process_resident_memory_bytes ") for line in lines)
    assert not any(line.startswith(f"{metric}_requests_total") and 'endpoint="nap"' in line for line in lines)


async def test_a_handler_that_blocks_the_loop_is_reported_and_counted(
    settings: ServiceSettings, nc: Client, name: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    module = Module(name)

    @module.handler("crunch")
    async def crunch(req: Nap) -> float:
        time.sleep(req.seconds)  # noqa: ASYNC251 - blocking in an async handler: the mistake reported
        return req.seconds

    watched = msgspec.structs.replace(settings, stall_warning=0.2)
    async with module.service(watched) as service:
        with caplog.at_level(logging.WARNING, logger="corral.runtime"):
            reply = await call(nc, f"{prefix}.mod.{name}.crunch", {"seconds": 0.8})
            assert reply["payload"] == 0.8
            await asyncio.sleep(0.3)  # the loop has run again: the stall is counted
        async with aiohttp.ClientSession() as session:
            _, text = await fetch(session, f"{service.metrics_url}/metrics")
    blocked, resumed = [
        r.getMessage() for r in caplog.records if r.name == "corral.runtime" and r.levelno >= logging.WARNING
    ]
    assert blocked.startswith(f"module {name}: the event loop is blocked (at least ")
    assert "in crunch\n    time.sleep(req.seconds)" in blocked
    assert resumed.startswith(f"module {name}: the event loop ran again; it had been blocked for at least ")
    lines = text.splitlines()
    assert f"corral_{name}_event_loop_stalls_total 1.0" in lines
    (seconds,) = [
        line for line in lines if line.startswith(f"corral_{name}_event_loop_blocked_seconds_total ")
    ]
    assert float(seconds.split()[1]) >= 0.5


def test_a_negative_stall_warning_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        ServiceSettings.from_env({"CORRAL_STALL_WARNING": "-1"})
    assert "invalid service setting from the environment" in str(caught.value)
    assert "$.stall_warning" in str(caught.value)
    assert ServiceSettings.from_env({"CORRAL_STALL_WARNING": "0"}).stall_warning == 0.0


async def test_healthz_and_readyz(module: ModuleService) -> None:
    async with aiohttp.ClientSession() as session:
        assert await fetch(session, f"{module.metrics_url}/healthz") == (200, '{"alive": true}')
        status, text = await fetch(session, f"{module.metrics_url}/readyz")
        assert (status, json.loads(text)) == (200, {"ready": True, "reason": "ok"})

        module.ready = False
        status, text = await fetch(session, f"{module.metrics_url}/readyz")
        assert (status, json.loads(text)) == (503, {"ready": False, "reason": module.waiting_message()})
        assert "is waiting for the orchestrator to tell it to serve" in module.waiting_message()
        # Not ready is not dead.
        assert (await fetch(session, f"{module.metrics_url}/healthz"))[0] == 200

        module.ready = True
        assert (await fetch(session, f"{module.metrics_url}/readyz"))[0] == 200

        url = module.metrics_url
        await module.stop()
        with pytest.raises(aiohttp.ClientConnectionError):
            await fetch(session, f"{url}/healthz")


async def test_metrics_port_minus_one_turns_http_off(
    settings: ServiceSettings, nc: Client, name: str
) -> None:
    quiet = msgspec.structs.replace(settings, metrics_port=-1)
    async with make_module(name).service(quiet) as service:
        await service.nc.flush()
        assert service.metrics_url == ""
        reply = await call(nc, f"{settings.prefix}.mod.{name}.check", {"ok": True})
        assert reply["success"] is True


# --- concurrency and drain -------------------------------------------------------------------------


async def test_requests_are_served_concurrently(
    module: ModuleService, nc: Client, name: str, prefix: str
) -> None:
    subject = f"{prefix}.mod.{name}.nap"
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, module.in_flight)
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    started = time.monotonic()
    try:
        replies = await asyncio.gather(*(call(nc, subject, {"seconds": 1.0}) for _ in range(20)))
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    elapsed = time.monotonic() - started
    assert [r["payload"] for r in replies] == [1.0] * 20
    # One after another would take 20 * 1 = 20 s.
    assert elapsed < 10.0
    assert peak == 20


async def test_stop_drains_in_flight_requests_and_refuses_new_ones(
    module: ModuleService, nc: Client, name: str, prefix: str
) -> None:
    slow = asyncio.create_task(call(nc, f"{prefix}.mod.{name}.nap", {"seconds": 2.0}))
    await eventually(lambda: asyncio.sleep(0, module.in_flight == 1), timeout=2, interval=0.01)

    stopping = asyncio.create_task(module.stop())
    await eventually(
        lambda: asyncio.sleep(0, module.readiness() == (False, "draining")), timeout=2, interval=0.01
    )
    await asyncio.sleep(0.05)
    try:
        late = await call(nc, f"{prefix}.mod.{name}.check", {"ok": True}, timeout=2)
    except nats.errors.NoRespondersError:
        pass  # the endpoint subscription is already gone (what usually happens)
    else:
        # It arrived between `_draining = True` and the unsubscribe.
        assert late["success"] is False
        assert late["type"] == "check:error"
        assert late["payload"] == {
            "code": "UNAVAILABLE",
            "errors": [
                f"{name} instance {module.instance} is shutting down; retry to reach another instance"
            ],
        }
    assert not stopping.done()  # still waiting for the slow request

    reply = await asyncio.wait_for(slow, 5)
    assert reply["success"] is True
    assert reply["type"] == "nap:success"
    assert reply["payload"] == 2.0
    await asyncio.wait_for(stopping, 3)

    # Idempotent: a second and concurrent stops return at once.
    started = time.monotonic()
    await module.stop()
    await asyncio.gather(module.stop(), module.stop())
    assert time.monotonic() - started < 0.5
    await asyncio.wait_for(module.wait_stopped(), 1)
    assert module.readiness() == (False, "draining")


async def test_stop_gives_up_on_requests_longer_than_drain_timeout(
    settings: ServiceSettings, nc: Client, name: str
) -> None:
    hasty = msgspec.structs.replace(settings, drain_timeout=0.3)
    service = make_module(name).service(hasty)
    await service.start()
    try:
        await service.nc.flush()
        stuck = asyncio.create_task(call(nc, f"{settings.prefix}.mod.{name}.nap", {"seconds": 30}, timeout=1))
        await eventually(lambda: asyncio.sleep(0, service.in_flight == 1), timeout=2, interval=0.01)
        started = time.monotonic()
        await service.stop()
        assert 0.3 <= time.monotonic() - started < 5.0  # not the 30 s the request would take
        with pytest.raises(nats.errors.TimeoutError):
            await stuck
    finally:
        await service.stop()


async def test_stop_before_start_is_harmless(settings: ServiceSettings, name: str) -> None:
    service = make_module(name).service(settings)
    await service.stop()
    await asyncio.wait_for(service.wait_stopped(), 1)
    with pytest.raises(RuntimeError, match=f"{name} is not started"):
        _ = service.nc


# --- the health service and the orchestrator -------------------------------------------------------


async def test_health_reports_instances_seen_through_heartbeats(
    settings: ServiceSettings, nc: Client, name: str
) -> None:
    prefix = settings.prefix
    async with HealthService(settings) as health:
        await health.nc.flush()
        service = make_module(name).service(settings)
        await service.start()
        try:

            async def both_seen() -> list[dict[str, Any]]:
                reply = await call(nc, f"{prefix}.health.instances")
                views: list[dict[str, Any]] = reply["payload"]
                return views if {v["service"] for v in views} == {"health", name} else []

            views = await eventually(both_seen)
            mine = next(v for v in views if v["service"] == name)
            assert mine["instance"] == settings.instance
            assert mine["role"] == "module"
            assert mine["version"] == "1.2.3"
            assert mine["pid"] == os.getpid()
            assert mine["alive"] is True
            assert mine["ready"] is True
            assert mine["rss_bytes"] > 0
            assert mine["metrics_url"] == service.metrics_url
            # Ordered by role, then service: "module" before "service".
            assert [v["role"] for v in views] == ["module", "service"]

            # A malformed heartbeat is ignored, not fatal.
            await nc.publish(f"{prefix}.hb.junk.x", b"not a heartbeat")

            status = await call(nc, f"{prefix}.health.status")
            assert status["type"] == "status:success"
            assert status["payload"]["status"] == "healthy"
            assert set(status["payload"]["services"]) == {"health", name}
            entry = status["payload"]["services"][name]
            assert (entry["role"], entry["instances"], entry["alive"], entry["ready"]) == ("module", 1, 1, 1)
            assert entry["rss_bytes"] > 0
        finally:
            await service.stop()

        # Silent for 3 intervals (0.6 s): no longer alive, and the system is unhealthy.
        async def unhealthy() -> dict[str, Any] | None:
            payload: dict[str, Any] = (await call(nc, f"{prefix}.health.status"))["payload"]
            return payload if payload["status"] == "unhealthy" else None

        payload = await eventually(unhealthy, timeout=3, interval=0.1)
        assert payload["services"][name]["alive"] == 0
        assert payload["services"]["health"]["alive"] == 1


async def test_orchestrator_lists_running_modules_with_their_types(
    settings: ServiceSettings, nc: Client, name: str
) -> None:
    second = msgspec.structs.replace(settings, instance="second-instance")
    mod = make_module(name)
    async with OrchestratorService(settings) as orchestrator, mod.service(settings), mod.service(second):
        await orchestrator.nc.flush()
        reply = await call(nc, f"{settings.prefix}.orchestrator.modules")
        assert reply["type"] == "modules:success"
        assert reply["payload"] == [
            {"name": name, "instances": 2, "types": ["check", "nap", "trace"], "version": "1.2.3"}
        ]


async def test_orchestrator_forwards_trace_headers_to_the_module(
    settings: ServiceSettings, nc: Client, name: str
) -> None:
    prefix = settings.prefix
    async with OrchestratorService(settings) as orchestrator, make_module(name).service(settings) as mod:
        for service in (orchestrator, mod):
            await service.nc.flush()
        headers = {"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE", "X-Other": "not forwarded"}
        reply = await call(nc, f"{prefix}.send.{name}", {"type": "trace", "payload": {}}, headers=headers)
        assert reply["type"] == "trace:success"
        assert reply["payload"] == {
            "traceparent": TRACEPARENT,
            "tracestate": "congo=t61rcWkgMzE",
            "other": None,
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "subject": f"{prefix}.mod.{name}.trace",
        }

        plain = await call(nc, f"{prefix}.send.{name}", {"type": "trace"})
        assert plain["payload"]["traceparent"] is None
        assert plain["payload"]["trace_id"] is None


# --- a real process --------------------------------------------------------------------------------


async def test_a_service_process_drains_on_sigterm_and_logs_json(
    nats_url: str, prefix: str, nc: Client
) -> None:
    env = {**os.environ, "NATS_URL": nats_url, "CORRAL_PREFIX": prefix, "CORRAL_HEARTBEAT_INTERVAL": "0.2"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "corral.state",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:

        async def answers() -> dict[str, Any] | None:
            try:
                return await call(nc, f"{prefix}.state.status", timeout=1)
            except nats.errors.NoRespondersError:
                assert process.returncode is None, "corral.state exited during startup"
                return None

        status = await eventually(answers, timeout=20, interval=0.1)
        assert status["type"] == "status:success"
        assert status["payload"]["service"] == "state"

        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()
    assert process.returncode == 0, stderr.decode(errors="replace")

    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.strip()]
    assert lines, "no log lines on stderr"
    for line in lines:
        assert {"ts", "level", "service", "instance", "logger", "msg"} <= set(line), line
        assert line["service"] == "state"
    instance = status["payload"]["instance"]
    assert {line["instance"] for line in lines} == {instance}
    messages = [line["msg"] for line in lines]
    assert "service state started" in messages
    assert "service state stopped" in messages
    assert messages.index("service state started") < messages.index("service state stopped")
    stopped = next(line for line in lines if line["msg"] == "service state stopped")
    assert stopped["level"] == "info"
    assert stopped["handled"] == 1
    assert stopped["errors"] == 0
