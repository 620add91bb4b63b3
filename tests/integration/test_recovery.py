"""Supervision and recovery with real module processes: kill -9, flapping, heartbeats that stop,
health verdicts, and each recovery strategy reaching the module."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from corral.runtime import ServiceSettings
from tests.lifecycle_helpers import EventLog, call, journal, orchestrator, probe, system, unhealthy

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

FAST = {"backoff_initial": 0.3, "backoff_multiplier": 2.0, "jitter": 0.0, "window": 60.0}


async def pids_of(nc: Client, prefix: str, module: str) -> list[int]:
    reply = await call(nc, f"{prefix}.orchestrator.module", {"module": module})
    return [i["pid"] for i in reply["payload"]["record"]["instances"]]


async def history(nc: Client, prefix: str, module: str) -> list[dict[str, Any]]:
    reply = await call(nc, f"{prefix}.orchestrator.recovery.history", {"module": module})
    assert reply["success"], reply
    entries: list[dict[str, Any]] = reply["payload"]
    return entries


async def instance_of(nc: Client, prefix: str, module: str) -> str:
    reply = await call(nc, f"{prefix}.orchestrator.module", {"module": module})
    instance: str = reply["payload"]["record"]["instances"][0]["instance"]
    return instance


async def test_kill_9_is_restarted_with_growing_backoff(
    tmp_path: Path, settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    config = system(tmp_path, {"worker": probe(restart=FAST), "client": probe(["worker"])})
    events = EventLog()
    await events.attach(nc, prefix)
    async with orchestrator(settings, config):
        assert (await call(nc, f"{prefix}.orchestrator.start_system"))["success"]
        for round_ in (1, 2):
            (pid,) = await pids_of(nc, prefix, "worker")
            os.kill(pid, signal.SIGKILL)
            await events.wait_for(
                lambda r=round_: events.of("worker").count(("starting", "running")) == r + 1
            )
            (new_pid,) = await pids_of(nc, prefix, "worker")
            assert new_pid != pid
        reasons = events.reasons("worker")
        restarts = [r for r in reasons if r.startswith("restart ")]
        assert restarts[0].startswith("restart 1/5 in 0.30s after: instance worker-")
        assert restarts[0].endswith("exited with code -9")
        assert restarts[1].startswith("restart 2/5 in 0.60s after:")  # the backoff doubled
        assert events.of("worker")[2:] == [("running", "starting"), ("starting", "running")] * 2
        entries = await history(nc, prefix, "worker")
        assert [(e["action"], e["attempt"], e["delay"]) for e in entries] == [
            ("restart", 1, 0.3),
            ("restart", 2, 0.6),
        ]
        assert all(e["outcome"].startswith("recovered in ") for e in entries)
        # Only the failed module was touched; its dependent kept running throughout.
        assert events.of("client") == [("registered", "starting"), ("starting", "running")]
        reply = await call(nc, f"{prefix}.send.worker", {"type": "ping", "payload": {}})
        assert reply["payload"]["pid"] == new_pid


async def test_a_flapping_module_stops_at_its_intensity_limit(
    tmp_path: Path, settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    policy = {**FAST, "backoff_initial": 0.05, "max_attempts": 3}
    flapper = probe(env={"PROBE_EXIT_AFTER": "1.0"}, restart=policy, required=False)
    config = system(tmp_path, {"flapper": flapper})
    events = EventLog()
    await events.attach(nc, prefix)
    async with orchestrator(settings, config):
        assert (await call(nc, f"{prefix}.orchestrator.start_system"))["success"]
        await events.wait_for(lambda: events.state("flapper") == "failed" and events.alerts)
        last = events.events[-1]
        assert last["new"] == "failed"
        assert last["reason"].startswith("restart intensity limit reached: 3 recoveries within 60s (restart)")
        assert last["error"].endswith("exited with code 1")
        assert last["attempts"] == 3
        (alert,) = events.alerts
        assert alert["module"] == "flapper"
        assert alert["action"] == "fix it, then `corral restart flapper`"
        entries = await history(nc, prefix, "flapper")
        assert [e["action"] for e in entries] == ["restart", "restart", "restart", "give_up"]
        assert entries[-1]["outcome"] == "gave up"
        await asyncio.sleep(0.8)  # nothing restarts it any more
        assert events.state("flapper") == "failed"
        assert await pids_of(nc, prefix, "flapper") == []
        status = await call(nc, f"{prefix}.orchestrator.status")
        assert status["payload"]["system"] == "degraded"


async def test_escalation_moves_to_the_next_strategy(
    tmp_path: Path, settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    policy = {**FAST, "backoff_initial": 0.05, "max_attempts": 1, "escalation": ["manual"]}
    config = system(tmp_path, {"flapper": probe(env={"PROBE_EXIT_AFTER": "1.0"}, restart=policy)})
    events = EventLog()
    await events.attach(nc, prefix)
    async with orchestrator(settings, config):
        assert (await call(nc, f"{prefix}.orchestrator.start_system"))["success"]
        await events.wait_for(lambda: events.state("flapper") == "failed" and events.alerts)
        assert events.events[-1]["reason"].startswith(
            "restart intensity limit reached: 1 recoveries within 60s (restart); waiting for an operator"
        )
        entries = await history(nc, prefix, "flapper")
        assert [(e["action"], e["outcome"]) for e in entries][-1] == ("manual", "waiting for an operator")


async def test_restart_with_reset_clears_the_modules_state(
    tmp_path: Path, settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    state, journal_file = tmp_path / "count", tmp_path / "journal"
    env = {"PROBE_STATE": str(state), "PROBE_JOURNAL": str(journal_file)}
    config = system(tmp_path, {"counter": probe(env=env, restart={**FAST, "strategy": "restart_with_reset"})})
    events = EventLog()
    await events.attach(nc, prefix)

    async def ping() -> int:
        reply = await call(nc, f"{prefix}.send.counter", {"type": "ping", "payload": {}})
        count: int = reply["payload"]["count"]
        return count

    async with orchestrator(settings, config):
        assert (await call(nc, f"{prefix}.orchestrator.start_system"))["success"]
        assert [await ping(), await ping()] == [1, 2]
        # A process that still runs but is judged unhealthy: the `reset` verb, same pid.
        (pid,) = await pids_of(nc, prefix, "counter")
        await unhealthy(nc, prefix, "counter", await instance_of(nc, prefix, "counter"))
        await events.wait_for(lambda: events.of("counter").count(("starting", "running")) == 2)
        # Drained, reset, re-executed in place (the same pid launches and starts again).
        assert [row[1:3] for row in journal(journal_file)[-3:]] == [
            ["reset", str(pid)],
            ["launch", str(pid)],
            ["start", str(pid)],
        ]
        assert await pids_of(nc, prefix, "counter") == [pid]  # re-executed in place
        assert await ping() == 1
        # A process that died: relaunched with CORRAL_RESET=1, its on_reset runs before it serves.
        os.kill(pid, signal.SIGKILL)
        await events.wait_for(lambda: events.of("counter").count(("starting", "running")) == 3)
        (new_pid,) = await pids_of(nc, prefix, "counter")
        assert [row[1] for row in journal(journal_file) if row[2] == str(new_pid)] == [
            "launch",
            "reset",
            "start",
        ]
        assert await ping() == 1
        assert [e["action"] for e in await history(nc, prefix, "counter")] == ["restart_with_reset"] * 2


async def test_restart_with_reset_resets_only_the_unhealthy_instance(
    tmp_path: Path, settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    journal_file = tmp_path / "journal"
    restart = {**FAST, "strategy": "restart_with_reset"}
    config = system(
        tmp_path, {"pair": probe(instances=2, env={"PROBE_JOURNAL": str(journal_file)}, restart=restart)}
    )
    events = EventLog()
    await events.attach(nc, prefix)
    async with orchestrator(settings, config):
        assert (await call(nc, f"{prefix}.orchestrator.start_system"))["success"]
        reply = await call(nc, f"{prefix}.orchestrator.module", {"module": "pair"})
        sick, well = reply["payload"]["record"]["instances"]
        await unhealthy(nc, prefix, "pair", sick["instance"])
        await events.wait_for(lambda: events.of("pair").count(("starting", "running")) == 2)
        resets = [row[2] for row in journal(journal_file) if row[1] == "reset"]
        assert resets == [str(sick["pid"])]  # the other instance kept serving, untouched
        assert sorted(await pids_of(nc, prefix, "pair")) == sorted([sick["pid"], well["pid"]])
        assert [(e["instance"], e["action"]) for e in await history(nc, prefix, "pair")] == [
            (sick["instance"], "restart_with_reset")
        ]


async def test_degraded_strategy_reaches_the_modules_hook(
    tmp_path: Path, settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    journal_file = tmp_path / "journal"
    module = probe(env={"PROBE_JOURNAL": str(journal_file)}, restart={**FAST, "strategy": "degraded"})
    config = system(tmp_path, {"search": module})
    events = EventLog()
    await events.attach(nc, prefix)
    async with orchestrator(settings, config):
        assert (await call(nc, f"{prefix}.orchestrator.start_system"))["success"]
        await unhealthy(nc, prefix, "search", await instance_of(nc, prefix, "search"))
        await events.wait_for(lambda: events.state("search") == "degraded")
        assert events.of("search")[-2:] == [("running", "starting"), ("starting", "degraded")]
        (hook,) = [line for line in journal_file.read_text().splitlines() if " degrade:" in line]
        assert "degrade:True:health service: instance search-" in hook  # on=True and the reason
        assert "unhealthy: 2 failed check rounds in a row: db" in hook
        reply = await call(nc, f"{prefix}.send.search", {"type": "ping", "payload": {}})
        assert reply["payload"]["degraded"] is True
        status = await call(nc, f"{prefix}.orchestrator.status")
        assert status["payload"]["module_states"] == {"search": "degraded"}


async def test_missing_heartbeats_are_a_failure(
    tmp_path: Path, settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    module = probe(heartbeat_interval=0.2, unhealthy_threshold=3, stop_timeout=0.5, restart=FAST)
    config = system(tmp_path, {"sleepy": module})
    events = EventLog()
    await events.attach(nc, prefix)
    async with orchestrator(settings, config):
        assert (await call(nc, f"{prefix}.orchestrator.start_system"))["success"]
        (pid,) = await pids_of(nc, prefix, "sleepy")
        os.kill(pid, signal.SIGSTOP)  # alive, but silent
        try:
            await events.wait_for(lambda: events.of("sleepy").count(("starting", "running")) == 2)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        (failure,) = [e["failure"] for e in await history(nc, prefix, "sleepy")]
        assert "no heartbeat for" in failure
        assert "(3 intervals of 0.2s)" in failure
        (new_pid,) = await pids_of(nc, prefix, "sleepy")
        assert new_pid != pid


async def test_a_critical_module_failing_restarts_the_whole_system(
    tmp_path: Path, settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    core = probe(critical=True, restart={**FAST, "strategy": "system_restart"})
    config = system(tmp_path, {"core": core, "edge": probe(["core"]), "other": probe()})
    events = EventLog()
    await events.attach(nc, prefix)
    async with orchestrator(settings, config):
        assert (await call(nc, f"{prefix}.orchestrator.start_system"))["success"]
        before = {name: await pids_of(nc, prefix, name) for name in ("core", "edge", "other")}
        os.kill(before["core"][0], signal.SIGKILL)
        await events.wait_for(lambda: all(events.of(n).count(("starting", "running")) == 2 for n in before))
        # Everything went down (dependents first) and came back up in dependency order.
        assert events.of("edge")[2:] == [
            ("running", "stopping"), ("stopping", "stopped"),
            ("stopped", "starting"), ("starting", "running"),
        ]  # fmt: skip
        assert events.of("core")[2:] == events.of("edge")[2:]
        after = {name: await pids_of(nc, prefix, name) for name in before}
        assert all(after[name] != before[name] for name in before)
        (entry,) = await history(nc, prefix, "core")
        assert (entry["action"], entry["outcome"]) == ("system_restart", "system restart requested")


async def test_only_the_failed_instance_of_several_is_relaunched(
    tmp_path: Path, settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    config = system(tmp_path, {"pool": probe(instances=2, restart=FAST)})
    events = EventLog()
    await events.attach(nc, prefix)
    async with orchestrator(settings, config):
        started = await call(nc, f"{prefix}.orchestrator.start_system")
        first, second = started["payload"]["started"][0]["pids"]
        os.kill(first, signal.SIGKILL)
        await events.wait_for(lambda: events.of("pool").count(("starting", "running")) == 2)
        pids = await pids_of(nc, prefix, "pool")
        assert len(pids) == 2
        assert second in pids  # the healthy instance was left alone
        assert first not in pids
