"""The SDK's control verbs (`<prefix>.modctl.<module>.<verb>`), per-handler limits, and the
readiness gate through a real orchestrator, against the session's nats-server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgspec
import nats.errors
import pytest
from nats.aio.client import Client

from corral.errors import CallTimeoutError
from corral.orchestrator.service import OrchestratorService
from corral.runtime import ServiceSettings
from corral.sdk import Module, ModuleService

T = TypeVar("T")


class Settings(msgspec.Struct, forbid_unknown_fields=True):
    workers: int = 1
    mode: str = "fast"


@dataclass
class Probe:
    """What the test module's handlers and hooks saw."""

    running: int = 0
    peak: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    degrade_calls: list[tuple[bool, str]] = field(default_factory=list)
    configs: list[Settings] = field(default_factory=list)
    resets: int = 0
    starts: int = 0


def build_module(probe: Probe, name: str = "ctl", depends_on: list[str] | None = None) -> Module:
    module = Module(name, depends_on=depends_on)

    @module.handler("echo")
    async def echo(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "degraded": module.degraded}

    async def held() -> str:
        probe.running += 1
        probe.peak = max(probe.peak, probe.running)
        try:
            await probe.gate.wait()
        finally:
            probe.running -= 1
        return "done"

    @module.handler("held")
    async def held_any(payload: dict[str, Any]) -> str:
        return await held()

    @module.handler("limited", concurrency=2)
    async def limited(payload: dict[str, Any]) -> str:
        return await held()

    @module.handler("slow", timeout=0.3)
    async def slow(payload: dict[str, float]) -> str:
        await asyncio.sleep(payload["seconds"])
        return "finished"

    @module.handler("bounded")
    async def bounded(payload: dict[str, float]) -> str:
        await module.execute_with_timeout(asyncio.sleep(payload["seconds"]), 0.2)
        return "finished"

    @module.on_degrade
    def degrade(degraded: bool, reason: str) -> None:
        probe.degrade_calls.append((degraded, reason))

    @module.on_config
    async def configure(config: Settings) -> None:
        if config.mode == "explode":
            raise ValueError("mode 'explode' is not allowed")
        probe.configs.append(config)

    @module.on_reset
    async def reset() -> None:
        probe.resets += 1

    @module.on_start
    async def started(service: ModuleService) -> None:
        probe.starts += 1

    return module


async def request(nc: Client, subject: str, body: Any = None, timeout: float = 5) -> dict[str, Any]:
    data = b"" if body is None else json.dumps(body).encode()
    reply: dict[str, Any] = json.loads((await nc.request(subject, data, timeout=timeout)).data)
    return reply


async def ok(nc: Client, subject: str, body: Any = None) -> Any:
    reply = await request(nc, subject, body)
    assert reply["success"] is True, reply
    return reply["payload"]


async def fails(nc: Client, subject: str, body: Any, code: str) -> str:
    reply = await request(nc, subject, body)
    assert reply["success"] is False, reply
    assert reply["payload"]["code"] == code, reply
    message: str = reply["payload"]["errors"][0]
    return message


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s")
        await asyncio.sleep(0.05)


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
async def service(settings: ServiceSettings, probe: Probe) -> AsyncIterator[ModuleService]:
    async with build_module(probe).service(settings) as running:
        yield running


def ctl(prefix: str, verb: str, module: str = "ctl") -> str:
    return f"{prefix}.modctl.{module}.{verb}"


def mod(prefix: str, type_: str, module: str = "ctl") -> str:
    return f"{prefix}.mod.{module}.{type_}"


# --- status, degrade, throttle, config -----------------------------------------------------------
async def test_status_describes_the_instance(service: ModuleService, nc: Client, prefix: str) -> None:
    status = await ok(nc, ctl(prefix, "status"))
    assert status == {
        "module": "ctl",
        "instance": service.instance,
        "pid": os.getpid(),
        "started": service.started_at,
        "ready": True,
        "degraded": False,
        "degraded_reason": "",
        "throttle": None,
        "config_version": 0,
        "in_flight": 1,  # the status request itself
    }


async def test_degrade_calls_the_hook_and_handlers_see_it(
    service: ModuleService, nc: Client, prefix: str, probe: Probe
) -> None:
    status = await ok(nc, ctl(prefix, "degrade"), {"reason": "db slow"})
    assert (status["degraded"], status["degraded_reason"]) == (True, "db slow")
    assert service.module.degraded is True
    assert (await ok(nc, mod(prefix, "echo"), {"a": 1})) == {"a": 1, "degraded": True}

    status = await ok(nc, ctl(prefix, "degrade"), {"on": False, "reason": "recovered"})
    assert (status["degraded"], status["degraded_reason"]) == (False, "")
    assert probe.degrade_calls == [(True, "db slow"), (False, "recovered")]
    assert (await ok(nc, mod(prefix, "echo"), {}))["degraded"] is False


async def test_bad_control_bodies_get_validation_naming_the_field(
    service: ModuleService, nc: Client, prefix: str
) -> None:
    message = await fails(nc, ctl(prefix, "degrade"), {"on": "yes"}, "VALIDATION")
    assert message == "invalid request body: Expected `bool`, got `str` - at `$.on`"
    message = await fails(nc, ctl(prefix, "throttle"), {}, "VALIDATION")
    assert message == "invalid request body: Object missing required field `concurrency`"
    message = await fails(nc, ctl(prefix, "throttle"), {"concurrency": 0}, "VALIDATION")
    assert message == "invalid request body: Expected `int` >= 1 - at `$.concurrency`"
    message = await fails(nc, ctl(prefix, "ready"), {"what": 1}, "VALIDATION")
    assert "unknown field `what`" in message


async def test_throttle_caps_concurrent_calls_across_handlers(
    service: ModuleService, nc: Client, prefix: str, probe: Probe
) -> None:
    assert (await ok(nc, ctl(prefix, "throttle"), {"concurrency": 1}))["throttle"] == 1
    calls = [asyncio.create_task(request(nc, mod(prefix, "held"), {})) for _ in range(3)]
    await eventually(lambda: _true(probe.running == 1 and service.throttle.waiting == 2))
    # Lifting the cap lets the waiting calls in at once.
    assert (await ok(nc, ctl(prefix, "throttle"), {"concurrency": None}))["throttle"] is None
    await eventually(lambda: _true(probe.running == 3))
    probe.gate.set()
    assert [r["payload"] for r in await asyncio.gather(*calls)] == ["done"] * 3
    assert probe.peak == 3


async def _true(condition: bool) -> bool | None:
    return True if condition else None


async def test_handler_concurrency_limit_makes_the_rest_wait(
    service: ModuleService, nc: Client, prefix: str, probe: Probe
) -> None:
    calls = [asyncio.create_task(request(nc, mod(prefix, "limited"), {})) for _ in range(5)]
    await eventually(lambda: _true(probe.running == 2))
    await asyncio.sleep(0.2)
    assert probe.running == 2  # the other three wait for a slot
    probe.gate.set()
    replies = await asyncio.gather(*calls)
    assert all(r["success"] for r in replies), replies
    assert probe.peak == 2


async def test_handler_timeout_and_execute_with_timeout_reply_timeout(
    service: ModuleService, nc: Client, prefix: str
) -> None:
    assert await ok(nc, mod(prefix, "slow"), {"seconds": 0}) == "finished"
    message = await fails(nc, mod(prefix, "slow"), {"seconds": 5}, "TIMEOUT")
    assert message == "ctl.slow did not finish within its timeout of 0.3s"
    assert await ok(nc, mod(prefix, "bounded"), {"seconds": 0}) == "finished"
    message = await fails(nc, mod(prefix, "bounded"), {"seconds": 5}, "TIMEOUT")
    assert message == "module 'ctl': the operation did not finish within 0.2s"


async def test_execute_with_timeout_keeps_the_awaitables_own_timeout_error() -> None:
    module = Module("m")

    async def raises() -> None:
        raise TimeoutError("mine")

    with pytest.raises(TimeoutError, match="mine") as caught:
        await module.execute_with_timeout(raises(), 5)
    assert not isinstance(caught.value, CallTimeoutError)


async def test_config_hot_reload_valid_and_invalid(
    service: ModuleService, nc: Client, prefix: str, probe: Probe
) -> None:
    module = service.module
    assert module.config == Settings()  # every field has a default
    reply = await ok(nc, ctl(prefix, "config"), {"workers": 4, "mode": "safe"})
    assert reply == {"config_version": 1, "config": {"workers": 4, "mode": "safe"}}
    assert module.config == Settings(workers=4, mode="safe")
    assert probe.configs == [Settings(4, "safe")]

    message = await fails(nc, ctl(prefix, "config"), {"workers": "four"}, "VALIDATION")
    assert message == "invalid request body: Expected `int`, got `str` - at `$.workers`"
    message = await fails(nc, ctl(prefix, "config"), {"mode": "explode"}, "VALIDATION")
    assert message == (
        "config rejected by configure: mode 'explode' is not allowed; the module keeps config version 1"
    )
    assert module.config == Settings(workers=4, mode="safe")
    assert (await ok(nc, ctl(prefix, "status")))["config_version"] == 1


# --- stop, restart, reset in-process ----------------------------------------------------------------
async def test_stop_in_process_replies_then_stops(service: ModuleService, nc: Client, prefix: str) -> None:
    reply = await ok(nc, ctl(prefix, "stop"))
    assert reply == {"module": "ctl", "instance": service.instance, "action": "stop"}
    await asyncio.wait_for(service.wait_stopped(), 10)
    with pytest.raises(Exception, match="no responders"):
        await nc.request(mod(prefix, "echo"), b"{}", timeout=2)


async def test_restart_and_reset_in_process_start_the_service_again(
    service: ModuleService, nc: Client, prefix: str, probe: Probe
) -> None:
    first_started = service.started_at
    assert (await ok(nc, ctl(prefix, "restart")))["action"] == "restart"

    async def restarted() -> dict[str, Any] | None:
        try:
            status: dict[str, Any] = await ok(nc, ctl(prefix, "status"))
        except Exception:
            return None
        return status if status["started"] > first_started else None

    await eventually(restarted)
    assert (probe.starts, probe.resets) == (2, 0)
    assert await ok(nc, mod(prefix, "echo"), {"x": 1}) == {"x": 1, "degraded": False}

    second_started = service.started_at
    assert (await ok(nc, ctl(prefix, "reset")))["action"] == "reset"
    await eventually(lambda: _true(service.started_at > second_started and service.ready))
    assert (probe.starts, probe.resets) == (3, 1)
    assert await ok(nc, mod(prefix, "echo"), {}) == {"degraded": False}


async def test_every_instance_gets_control_verbs(
    settings: ServiceSettings, nc: Client, prefix: str, probe: Probe
) -> None:
    module = build_module(probe)
    second = msgspec.structs.replace(settings, instance="second")
    async with module.service(settings) as one, module.service(second) as two:
        await nc.publish(ctl(prefix, "throttle"), b'{"concurrency": 3}')
        await eventually(lambda: _true(one.throttle.limit == two.throttle.limit == 3))
        assert (one.throttle.limit, two.throttle.limit) == (3, 3)


async def test_a_corral_instance_header_addresses_one_instance(
    settings: ServiceSettings, nc: Client, prefix: str, probe: Probe
) -> None:
    module = build_module(probe)
    second = msgspec.structs.replace(settings, instance="second")
    async with module.service(settings) as one, module.service(second) as two:
        for _ in range(5):  # without the header, either could answer first
            msg = await nc.request(
                ctl(prefix, "status"), b"", timeout=5, headers={"Corral-Instance": "second"}
            )
            assert json.loads(msg.data)["payload"]["instance"] == "second"
        await nc.publish(
            ctl(prefix, "throttle"), b'{"concurrency": 2}', headers={"Corral-Instance": "second"}
        )
        await eventually(lambda: _true(two.throttle.limit == 2))
        # An instance nobody has: nobody acts, nobody answers.
        with pytest.raises(nats.errors.TimeoutError):
            await nc.request(ctl(prefix, "throttle"), b'{"concurrency": 1}', timeout=0.5,
                             headers={"Corral-Instance": "nobody"})  # fmt: skip
        assert (one.throttle.limit, two.throttle.limit) == (None, 2)  # `one` was never addressed


# --- the readiness gate through the orchestrator ---------------------------------------------------
async def test_a_module_waits_for_its_dependency_through_the_orchestrator(
    settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    app_probe, db_probe = Probe(), Probe()
    app = build_module(app_probe, "app", depends_on=["db"]).service(settings, wait_for_ready=True)
    db = build_module(db_probe, "db").service(
        msgspec.structs.replace(settings, instance="db-1"), wait_for_ready=True
    )
    async with OrchestratorService(settings) as orchestrator, app, aiohttp.ClientSession() as http:
        message = await fails(nc, mod(prefix, "echo", "app"), {}, "UNAVAILABLE")
        assert message == "module 'app' is waiting for its dependencies (db) to be ready"
        async with http.get(f"{app.metrics_url}/readyz") as response:
            assert response.status == 503
            assert await response.json() == {"ready": False, "reason": message}
        status = await ok(nc, ctl(prefix, "status", "app"))
        assert status["ready"] is False

        async def waiting() -> dict[str, Any] | None:
            reply: dict[str, Any] = await ok(nc, f"{prefix}.orchestrator.status")
            return reply if reply["waiting_for_dependencies"] else None

        assert (await eventually(waiting))["waiting_for_dependencies"] == {"app": ["db"]}
        await asyncio.sleep(1.0)
        assert app.ready is False  # still waiting: db is not there

        async with db:
            # db has no dependencies: told at once; then app, on the gate's next round.
            await eventually(lambda: _true(db.ready and app.ready))
            assert await ok(nc, mod(prefix, "echo", "app"), {"n": 1}) == {"n": 1, "degraded": False}
            async with http.get(f"{app.metrics_url}/readyz") as response:
                assert response.status == 200
            assert orchestrator.gate is not None
            assert orchestrator.gate.snapshot() == {}


async def test_a_waiting_module_without_an_orchestrator_stays_unavailable(
    settings: ServiceSettings, nc: Client, prefix: str, probe: Probe
) -> None:
    async with build_module(probe).service(settings, wait_for_ready=True) as waiting:
        message = await fails(nc, mod(prefix, "echo"), {}, "UNAVAILABLE")
        assert message == (
            f"module 'ctl' is waiting for the orchestrator to tell it to serve ({prefix}.modctl.ctl.ready); "
            "run it with --no-wait to serve without one"
        )
        # `ready` by hand (what the orchestrator publishes) opens the gate.
        assert (await ok(nc, ctl(prefix, "ready"), {}))["ready"] is True
        assert waiting.ready is True
        assert (await ok(nc, mod(prefix, "echo"), {}))["degraded"] is False


# --- a module process: `--no-wait`, stop, restart ---------------------------------------------------
MODULE_SCRIPT = textwrap.dedent(
    """
    from corral.sdk import Module

    module = Module("proc")

    @module.handler("echo")
    async def echo(payload: dict) -> dict:
        return payload

    if __name__ == "__main__":
        module.run()
    """
)


@pytest.fixture
def module_process(tmp_path: Path, nats_url: str, prefix: str) -> Callable[..., subprocess.Popen[bytes]]:
    script = tmp_path / "proc_module.py"
    script.write_text(MODULE_SCRIPT)
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "NATS_URL": nats_url,
            "CORRAL_PREFIX": prefix,
            "CORRAL_INSTANCE": "proc-1",
            "CORRAL_HEARTBEAT_INTERVAL": "0.2",
        }
        with (tmp_path / "proc.log").open("ab") as log:
            process = subprocess.Popen([sys.executable, str(script), *args], env=env, stdout=log, stderr=log)
        started.append(process)
        return process

    yield start  # type: ignore[misc]
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


async def _status_of(nc: Client, prefix: str) -> dict[str, Any] | None:
    try:
        status: dict[str, Any] = await ok(nc, ctl(prefix, "status", "proc"))
    except Exception:
        return None
    return status


async def _exit_code(process: subprocess.Popen[bytes], timeout: float = 15) -> int:
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError("the module process did not exit")
        await asyncio.sleep(0.05)
    return process.returncode


@pytest.mark.slow
async def test_a_no_wait_process_serves_at_once_and_exits_0_on_stop(
    module_process: Callable[..., subprocess.Popen[bytes]], nc: Client, prefix: str
) -> None:
    process = module_process("--no-wait")
    status = await eventually(lambda: _status_of(nc, prefix), timeout=20)
    assert (status["ready"], status["pid"]) == (True, process.pid)
    assert await ok(nc, mod(prefix, "echo", "proc"), {"a": 1}) == {"a": 1}
    assert (await ok(nc, ctl(prefix, "stop", "proc")))["action"] == "stop"
    assert await _exit_code(process) == 0


@pytest.mark.slow
async def test_a_process_becomes_ready_through_the_orchestrator_and_restart_re_execs_it(
    module_process: Callable[..., subprocess.Popen[bytes]],
    settings: ServiceSettings,
    nc: Client,
    prefix: str,
) -> None:
    async with OrchestratorService(settings):
        process = module_process()
        first = await eventually(lambda: _if(_status_of(nc, prefix), lambda s: s["ready"]), timeout=20)
        assert first["pid"] == process.pid
        assert (await ok(nc, ctl(prefix, "restart", "proc")))["action"] == "restart"

        # The same pid (execv replaces the program, so `corral up` keeps tracking it) runs anew:
        # a later start time, registered and told ready again.
        second = await eventually(
            lambda: _if(_status_of(nc, prefix), lambda s: s["started"] > first["started"] and s["ready"]),
            timeout=20,
        )
        assert second["pid"] == process.pid
        assert process.poll() is None
        assert await ok(nc, mod(prefix, "echo", "proc"), {"b": 2}) == {"b": 2}
        assert (await ok(nc, ctl(prefix, "stop", "proc")))["action"] == "stop"
        assert await _exit_code(process) == 0


async def _if(
    pending: Awaitable[dict[str, Any] | None], condition: Callable[[dict[str, Any]], bool]
) -> dict[str, Any] | None:
    value = await pending
    return value if value is not None and condition(value) else None
