"""SDK modules that start on their own (a Kubernetes pod, a module run by hand) join the
orchestrator's registry when they register: kind external, a lifecycle with events, failure
detection from their heartbeats, and a clean shutdown that deregisters them. Real nats-server,
real module processes (tests/fixtures/modules/probe.py started here, not by the orchestrator)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import pytest
from nats.aio.client import Client

from corral.config import ModuleConfig
from corral.runtime import ServiceSettings
from corral.sdk import Module
from tests.lifecycle_helpers import PROBE, EventLog, call, orchestrator, probe, system, unhealthy

pytestmark = pytest.mark.slow

CORRAL = str(Path(sys.executable).parent / "corral")


class Pod:
    """One self-started module process, as a platform would run it."""

    def __init__(self, settings: ServiceSettings, module: str, instance: str, depends_on: list[str]) -> None:
        self.env = {
            **os.environ,
            "NATS_URL": settings.bus.servers[0],
            "CORRAL_PREFIX": settings.prefix,
            "CORRAL_MODULE": module,
            "CORRAL_INSTANCE": instance,
            "CORRAL_DEPENDS_ON": ",".join(depends_on),
            # Three missed beats are a failure: 1.5 s, so a pod starved of CPU on a loaded
            # machine is not taken for a dead one.
            "CORRAL_HEARTBEAT_INTERVAL": "0.5",
            "PYTHONUNBUFFERED": "1",
        }
        if not instance:  # the SDK makes one up, and a new one each time the process re-executes
            del self.env["CORRAL_INSTANCE"]
        self.instance = instance
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            PROBE,
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )

    async def signal(self, sig: int) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return await asyncio.wait_for(self.process.wait(), 15)

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@asynccontextmanager
async def pods(settings: ServiceSettings) -> AsyncIterator[Any]:
    started: list[Pod] = []

    async def run(module: str, instance: str, depends_on: list[str] | None = None) -> Pod:
        pod = Pod(settings, module, instance, depends_on or [])
        await pod.start()
        started.append(pod)
        return pod

    try:
        yield run
    finally:
        for pod in started:
            await pod.close()


async def record(nc: Client, prefix: str, module: str) -> dict[str, Any]:
    reply = await call(nc, f"{prefix}.orchestrator.module", {"module": module})
    assert reply["success"], reply
    found: dict[str, Any] = reply["payload"]
    return found


async def pod_ready(nc: Client, prefix: str, module: str) -> bool:
    """Whether an instance of `module` says it is ready (its status control verb)."""
    try:
        msg = await nc.request(f"{prefix}.modctl.{module}.status", b"", timeout=1)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return False
    reply: dict[str, Any] = json.loads(msg.data)
    return bool(reply["success"] and reply["payload"]["ready"])


async def started_at(nc: Client, prefix: str, module: str, instance: str) -> float:
    """When `instance` (re)started, from its own status (the Corral-Instance header picks it)."""
    msg = await nc.request(
        f"{prefix}.modctl.{module}.status", b"", timeout=5, headers={"Corral-Instance": instance}
    )
    started: float = json.loads(msg.data)["payload"]["started"]
    return started


async def until_recovered(nc: Client, prefix: str, module: str) -> list[dict[str, Any]]:
    """The module's recovery history once its last entry says it recovered, within 15 s."""
    deadline = time.monotonic() + 15
    while True:
        history: list[dict[str, Any]] = (await record(nc, prefix, module))["history"]
        if history and history[-1]["outcome"].startswith("recovered"):
            return history
        assert time.monotonic() < deadline, f"{module} did not recover: {history}"
        await asyncio.sleep(0.05)


async def until_instances(nc: Client, prefix: str, module: str, instances: list[str]) -> dict[str, Any]:
    """The module's record once it lists exactly `instances` (sorted), within 10 s."""
    deadline = time.monotonic() + 10
    while True:
        found: dict[str, Any] = (await record(nc, prefix, module))["record"]
        seen = sorted(i["instance"] for i in found["instances"])
        if seen == instances:
            return found
        assert time.monotonic() < deadline, f"{module} lists {seen}, not {instances}"
        await asyncio.sleep(0.05)


async def cli(settings: ServiceSettings, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        CORRAL, "--nats-url", settings.bus.servers[0], "--prefix", settings.prefix, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, out.decode()
    return out.decode()


@pytest.mark.chaos
async def test_a_self_started_module_joins_runs_fails_rejoins_and_leaves(
    tmp_path: Path, settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    events = EventLog()
    await events.attach(nc, prefix)
    async with orchestrator(settings, system(tmp_path, {})), pods(settings) as run:
        # Pods start in any order: the dependent first. It joins the registry and waits.
        worker = await run("worker", "worker-a", ["base"])
        await events.wait_for(lambda: events.state("worker") == "starting")
        found = (await record(nc, prefix, "worker"))["record"]
        assert found["source"] == "sdk"
        assert found["descriptor"]["kind"] == "external"
        assert found["descriptor"]["depends_on"] == ["base"]
        assert found["descriptor"]["heartbeat_interval"] == 0.5  # what the instance registered with
        assert found["types"] == ["ping"]
        assert [i["instance"] for i in found["instances"]] == ["worker-a"]
        assert found["status"]["reason"] == "instance worker-a registered; waiting for base"
        await asyncio.sleep(1.0)
        assert events.state("worker") == "starting"  # the dependency gate holds
        refused = await call(nc, f"{prefix}.mod.worker.ping", {})
        assert refused["payload"]["code"] == "UNAVAILABLE"

        await run("base", "base-a")
        await events.wait_for(lambda: events.state("worker") == "running")
        assert events.of("base") == [("registered", "starting"), ("starting", "running")]
        assert events.of("worker") == [("registered", "starting"), ("starting", "running")]
        base_up = next(e["time"] for e in events.events if e["module"] == "base" and e["new"] == "running")
        worker_up = next(
            e["time"] for e in events.events if e["module"] == "worker" and e["new"] == "running"
        )
        assert base_up <= worker_up
        assert (await call(nc, f"{prefix}.mod.worker.ping", {}))["success"]
        listing = await cli(settings, "modules")
        row = next(line for line in listing.splitlines() if " worker " in line)
        assert "external" in row
        assert "running" in row

        # kill -9: no clean deregistration; the missing heartbeats are the failure.
        assert await worker.signal(signal.SIGKILL) == -signal.SIGKILL
        await events.wait_for(lambda: events.state("worker") == "failed", timeout=15)
        await events.wait_for(lambda: bool(events.alerts))
        (alert,) = [a for a in events.alerts if a["module"] == "worker"]
        assert "lost its last instance" in alert["reason"]
        assert "no heartbeat" in alert["error"]
        assert "rejoins when it registers" in alert["action"]
        shown = await cli(settings, "status", "--module", "worker")
        assert "module worker: failed" in shown
        assert "kind external, registered by its own instances" in shown
        assert "no heartbeat" in shown
        assert "waiting for an instance to register again" in shown
        history = (await record(nc, prefix, "worker"))["history"]
        assert [(h["instance"], h["action"]) for h in history] == [("worker-a", "manual")]

        # The platform starts it again: it rejoins and runs.
        again = await run("worker", "worker-b", ["base"])
        await events.wait_for(lambda: events.state("worker") == "running")
        assert events.of("worker")[-3:] == [
            ("running", "failed"),
            ("failed", "starting"),
            ("starting", "running"),
        ]
        assert [i["instance"] for i in (await record(nc, prefix, "worker"))["record"]["instances"]] == [
            "worker-b"
        ]

        # A clean shutdown deregisters: stopped, not failed, and the record stays.
        assert await again.signal(signal.SIGTERM) == 0
        await events.wait_for(lambda: events.state("worker") == "stopped")
        assert events.of("worker")[-2:] == [("running", "stopping"), ("stopping", "stopped")]
        left = (await record(nc, prefix, "worker"))["record"]
        assert left["instances"] == []
        assert left["desired"] == "stopped"
        assert [a["module"] for a in events.alerts] == ["worker"]  # no alert for a clean stop
        # Still a dependency of nothing: now it can be removed for good.
        gone = await call(nc, f"{prefix}.orchestrator.deregister", {"module": "worker"})
        assert gone["payload"] == {"module": "worker", "instance": "", "deregistered": "module", "state": ""}


async def test_an_instance_leaving_while_others_serve_keeps_the_module_running(
    tmp_path: Path, settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    events = EventLog()
    await events.attach(nc, prefix)
    module = Module("replicated")
    async with orchestrator(settings, system(tmp_path, {})):
        first = module.service(msgspec.structs.replace(settings, instance="rep-1"), wait_for_ready=True)
        second = module.service(msgspec.structs.replace(settings, instance="rep-2"), wait_for_ready=True)
        await first.start()
        await second.start()
        try:
            await events.wait_for(lambda: events.state("replicated") == "running")
            await until_instances(nc, prefix, "replicated", ["rep-1", "rep-2"])
            await first.stop()  # deregisters rep-1; rep-2 still serves
            found = await until_instances(nc, prefix, "replicated", ["rep-2"])
            assert found["status"]["state"] == "running"
            await second.stop()
            await events.wait_for(lambda: events.state("replicated") == "stopped")
        finally:
            await first.stop()
            await second.stop()


@pytest.mark.chaos
async def test_a_declared_external_module_tracks_its_pods_loses_them_and_rejoins(
    tmp_path: Path, settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    """Declared in corral.toml as `external` (Kubernetes runs its pods): the orchestrator knows
    its instances from their registrations, drops one whose heartbeats stop, fails the module
    with an alert when the last one goes, and starts it again when a new pod registers."""
    # Declared with a shorter heartbeat than its pods use (0.5 s): each pod's own interval,
    # from its registration, is the one it is judged by.
    worker = msgspec.convert(
        {"kind": "external", "depends_on": ["base"], "heartbeat_interval": 0.1, "startup_timeout": 20},
        ModuleConfig,
    )
    events = EventLog()
    await events.attach(nc, prefix)
    async with (
        orchestrator(settings, system(tmp_path, {"base": probe(), "worker": worker})),
        pods(settings) as run,
    ):
        first = await run("worker", "worker-a", ["base"])
        started = await call(nc, f"{prefix}.orchestrator.start_system", timeout=60)
        assert started["success"], started
        await until_instances(nc, prefix, "worker", ["worker-a"])
        second = await run("worker", "worker-b", ["base"])  # scaled up: known once it registers
        found = await until_instances(nc, prefix, "worker", ["worker-a", "worker-b"])
        assert (found["source"], found["descriptor"]["kind"]) == ("config", "external")

        # kill -9 of one pod: dropped, the module still runs on the other.
        assert await first.signal(signal.SIGKILL) == -signal.SIGKILL
        await until_instances(nc, prefix, "worker", ["worker-b"])
        history = (await record(nc, prefix, "worker"))["history"]
        assert [(h["instance"], h["action"], h["outcome"]) for h in history] == [
            ("worker-a", "drop_instance", "dropped; 1 instance(s) still serving")
        ]
        assert events.state("worker") == "running"

        # kill -9 of the last: failed, with an alert saying what to do.
        assert await second.signal(signal.SIGKILL) == -signal.SIGKILL
        await events.wait_for(lambda: events.state("worker") == "failed", timeout=15)
        await events.wait_for(lambda: any(a["module"] == "worker" for a in events.alerts))
        (alert,) = [a for a in events.alerts if a["module"] == "worker"]
        assert "lost its last instance" in alert["reason"]
        assert "instance worker-b: no heartbeat for" in alert["error"]
        assert alert["error"].endswith("(3 intervals of 0.5s)")

        # The platform starts a new pod: it registers, and the module runs again.
        third = await run("worker", "worker-c", ["base"])
        await events.wait_for(lambda: events.state("worker") == "running")
        assert events.of("worker") == [
            ("registered", "starting"), ("starting", "running"), ("running", "failed"),
            ("failed", "starting"), ("starting", "running"),
        ]  # fmt: skip
        await until_instances(nc, prefix, "worker", ["worker-c"])
        assert (await call(nc, f"{prefix}.send.worker", {"type": "ping", "payload": {}}))["success"]

        # A clean shutdown deregisters: stopped, not failed; still meant to run, so the next
        # pod to register (a Recreate rollout) starts it again.
        assert await third.signal(signal.SIGTERM) == 0
        await events.wait_for(lambda: events.state("worker") == "stopped")
        assert [a for a in events.alerts if a["module"] == "worker"] == [alert]
        await run("worker", "worker-d", ["base"])
        await events.wait_for(lambda: events.of("worker")[-1] == ("starting", "running"))
        await until_instances(nc, prefix, "worker", ["worker-d"])

        # Stopped by an operator, it is no longer meant to run: a pod that registers (its
        # platform restarted it) waits at the gate and is not taken into the record.
        stopped = await call(nc, f"{prefix}.orchestrator.stop", {"module": "worker"})
        assert stopped["success"], stopped
        await events.wait_for(lambda: events.state("worker") == "stopped")
        await run("worker", "worker-e", ["base"])
        async with asyncio.timeout(15):  # registered and through the gate (base is running)
            while not await pod_ready(nc, prefix, "worker"):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        found = (await record(nc, prefix, "worker"))["record"]
        assert (found["status"]["state"], found["instances"]) == ("stopped", [])


async def test_only_the_unhealthy_instance_of_an_external_module_is_restarted(
    tmp_path: Path, settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    """The restart verb goes to the instance the health service judged unhealthy (a
    Corral-Instance header), not to every instance: the others keep serving."""
    pool = msgspec.convert(
        {"kind": "external", "restart": {"backoff_initial": 0.05, "jitter": 0.0}}, ModuleConfig
    )
    module = Module("pool")
    async with orchestrator(settings, system(tmp_path, {"pool": pool})):
        sick = module.service(msgspec.structs.replace(settings, instance="pool-1"), wait_for_ready=True)
        well = module.service(msgspec.structs.replace(settings, instance="pool-2"), wait_for_ready=True)
        await sick.start()
        await well.start()
        try:
            assert (await call(nc, f"{prefix}.orchestrator.start_system"))["success"]
            await until_instances(nc, prefix, "pool", ["pool-1", "pool-2"])
            sick_since, well_since = sick.started_at, well.started_at
            await unhealthy(nc, prefix, "pool", "pool-1")
            history = await until_recovered(nc, prefix, "pool")
            assert [(h["instance"], h["action"]) for h in history] == [("pool-1", "restart")]
            assert sick.started_at > sick_since  # restarted
            assert well.started_at == well_since  # left alone
            found = await until_instances(nc, prefix, "pool", ["pool-1", "pool-2"])
            assert found["status"]["state"] == "running"
        finally:
            await sick.stop()
            await well.stop()


@pytest.mark.chaos
async def test_a_restarted_instance_that_comes_back_under_a_new_id_replaces_the_old_one(
    tmp_path: Path, settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    """A pod without CORRAL_INSTANCE gets a generated id, and a new one when the restart verb
    re-executes it: recovery waits for it under the new id and the record drops the old."""
    pool = msgspec.convert(
        {"kind": "external", "restart": {"backoff_initial": 0.05, "jitter": 0.0}}, ModuleConfig
    )
    async with orchestrator(settings, system(tmp_path, {"pool": pool})), pods(settings) as run:
        await run("pool", "pool-fixed")
        await run("pool", "")
        assert (await call(nc, f"{prefix}.orchestrator.start_system"))["success"]
        deadline = time.monotonic() + 15
        while len(found := (await record(nc, prefix, "pool"))["record"]["instances"]) < 2:
            assert time.monotonic() < deadline, found
            await asyncio.sleep(0.05)
        (generated,) = [i["instance"] for i in found if i["instance"] != "pool-fixed"]
        fixed_since = await started_at(nc, prefix, "pool", "pool-fixed")
        await unhealthy(nc, prefix, "pool", generated)
        history = await until_recovered(nc, prefix, "pool")
        assert [(h["instance"], h["action"]) for h in history] == [(generated, "restart")]
        instances = sorted(i["instance"] for i in (await record(nc, prefix, "pool"))["record"]["instances"])
        assert len(instances) == 2
        assert "pool-fixed" in instances
        assert generated not in instances  # it came back as another id
        assert await started_at(nc, prefix, "pool", "pool-fixed") == fixed_since  # left alone


async def test_a_declared_module_keeps_its_descriptor_when_its_instances_register(
    tmp_path: Path, settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    async with orchestrator(settings, system(tmp_path, {"base": probe()})):
        assert (await call(nc, f"{prefix}.orchestrator.start_system"))["success"]
        # Another instance of `base`, started by hand, registers: the declared descriptor stays.
        reply = await call(
            nc, f"{prefix}.orchestrator.register",
            {"module": "base", "instance": "by-hand", "depends_on": ["elsewhere"], "types": ["x"]},
        )  # fmt: skip
        assert reply["success"], reply
        found = (await record(nc, prefix, "base"))["record"]
        assert found["source"] == "config"
        assert found["descriptor"]["kind"] == "process"
        assert found["argv"][-1] == PROBE
        assert found["descriptor"]["depends_on"] == []
        assert "by-hand" not in [i["instance"] for i in found["instances"]]
        assert found["status"]["state"] == "running"
        # Its launched instance deregistering would be ignored too: the lifecycle sees exits.
        left = await call(nc, f"{prefix}.orchestrator.deregister", {"module": "base", "instance": "by-hand"})
        assert left["payload"] == {
            "module": "base",
            "instance": "by-hand",
            "deregistered": "ignored",
            "state": "running",
        }


@pytest.mark.parametrize(
    ("verb", "body", "error"),
    [
        ("register", {"module": "w", "instance": "i", "depends_on": ["bad name"]}, "at `$.depends_on[0]`"),
        (
            "register",
            {"module": "w", "instance": "i", "depends_on": ["w"]},
            "dependency cycle: w -> w - at `$.depends_on`",
        ),
        ("register", {"module": "w", "instance": "i", "heartbeat_interval": -1}, "at `$.heartbeat_interval`"),
        ("register", {"module": "w", "instance": "x" * 300}, "at `$.instance`"),
        ("register", {"module": "w", "instance": "i", "types": "ping"}, "at `$.types`"),
        ("deregister", {"module": "w", "instance": 7}, "Expected `str`, got `int` - at `$.instance`"),
        ("deregister", {"module": "w", "instance": "x" * 300}, "at `$.instance`"),
        ("deregister", {"module": "bad name"}, "at `$.module`"),
    ],
)
async def test_bad_registrations_are_refused_naming_the_field(
    tmp_path: Path, settings: ServiceSettings, nc: Client, prefix: str, verb: str, body: Any, error: str
) -> None:
    async with orchestrator(settings, system(tmp_path, {})):
        reply = await call(nc, f"{prefix}.orchestrator.{verb}", body)
        assert reply["payload"]["code"] == "VALIDATION", reply
        (message,) = reply["payload"]["errors"]
        assert message.endswith(error), message
        registry = await call(nc, f"{prefix}.orchestrator.registry")
        assert registry["payload"] == []  # nothing half-registered


async def test_a_cycle_between_self_registered_modules_is_refused_and_named(
    tmp_path: Path, settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    async with orchestrator(settings, system(tmp_path, {})):
        first = await call(
            nc, f"{prefix}.orchestrator.register", {"module": "a", "instance": "a1", "depends_on": ["b"]}
        )
        assert first["success"], first
        second = await call(
            nc, f"{prefix}.orchestrator.register", {"module": "b", "instance": "b1", "depends_on": ["a"]}
        )
        assert second["payload"] == {
            "code": "VALIDATION", "errors": ["dependency cycle: a -> b -> a - at `$.depends_on`"]
        }  # fmt: skip
        registry = await call(nc, f"{prefix}.orchestrator.registry")
        assert [r["name"] for r in registry["payload"]] == ["a"]


async def test_an_unhealthy_verdict_restarts_a_live_self_registered_instance_through_its_verb(
    tmp_path: Path, settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    events = EventLog()
    await events.attach(nc, prefix)
    module = Module("checked")
    restarts: list[str] = []

    @module.on_start
    async def started(_service: object) -> None:
        restarts.append("start")

    async with orchestrator(settings, system(tmp_path, {})):
        service = module.service(msgspec.structs.replace(settings, instance="chk-1"), wait_for_ready=True)
        await service.start()
        try:
            await events.wait_for(lambda: events.state("checked") == "running")
            verdict = {
                "module": "checked",
                "instance": "chk-1",
                "new": "unhealthy",
                "reason": "3 failed rounds",
            }
            await nc.publish(f"{prefix}.evt.health.checked", json.dumps(verdict).encode())
            await events.wait_for(lambda: len(events.of("checked")) >= 4)
            assert events.of("checked")[-2:] == [("running", "starting"), ("starting", "running")]
            assert events.reasons("checked")[-1] == "recovered by restart (attempt 1)"
            assert restarts == ["start", "start"]  # the restart verb ran it again, in place
            (entry,) = (await record(nc, prefix, "checked"))["history"]
            assert entry["action"] == "restart"
            assert entry["outcome"].startswith("recovered in")
        finally:
            await service.stop()


async def test_a_dependency_not_registered_yet_is_waited_for_not_refused(
    tmp_path: Path, settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    async with orchestrator(settings, system(tmp_path, {"base": probe()})):
        joined = await call(
            nc,
            f"{prefix}.orchestrator.register",
            {"module": "w", "instance": "w1", "depends_on": ["ghost", "base"]},
        )
        assert joined["payload"]["waiting_for"] == ["ghost", "base"]
        found = (await record(nc, prefix, "w"))["record"]
        assert found["descriptor"]["depends_on"] == ["ghost", "base"]
        assert found["status"]["state"] == "starting"
        # The system starts without it (not ours to start), and the unknown name breaks nothing.
        started = await call(nc, f"{prefix}.orchestrator.start_system")
        assert [r["module"] for r in started["payload"]["started"]] == ["base"]
        refused = await call(nc, f"{prefix}.orchestrator.start", {"module": "w"})
        assert refused["payload"]["code"] == "CONFLICT"
        assert refused["payload"]["errors"] == [
            "cannot start w: it depends on ghost (not registered); start those first"
        ]
