"""Two orchestrator processes: the leader is killed with SIGKILL, the standby takes over within a
few lease periods and adopts the running modules instead of starting them again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from nats.aio.client import Client

from corral.discovery import discover
from tests.lifecycle_helpers import PROBE, EventLog, call

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

LEASE_TTL = 1.5


def system_file(tmp_path: Path) -> Path:
    path = tmp_path / "corral.toml"
    command = f'command = ["{{python}}", "{PROBE}"]\nstartup_timeout = 20.0\n'
    path.write_text(
        f'log_dir = "{tmp_path / "logs"}"\n'
        f"[modules.store]\n{command}"
        f'[modules.api]\n{command}depends_on = ["store"]\n'
        f"[modules.api.restart]\nbackoff_initial = 0.2\n"
    )
    return path


@pytest.fixture
def replicas(tmp_path: Path, nats_url: str, prefix: str) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    config = system_file(tmp_path)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for name in ("orch-a", "orch-b"):
        env = {
            **os.environ, "NATS_URL": nats_url, "CORRAL_PREFIX": prefix, "CORRAL_INSTANCE": name,
            "CORRAL_CONFIG": str(config), "CORRAL_LEASE_TTL": str(LEASE_TTL), "CORRAL_METRICS_PORT": "0",
        }  # fmt: skip
        with (tmp_path / f"{name}.log").open("wb") as log:
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "corral.orchestrator"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
    try:
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(15)
        # Modules outlive their orchestrator by design: a failed test must not leave them behind.
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if process.environ().get("CORRAL_PREFIX") == prefix:
                    process.kill()


async def leader_status(nc: Client, prefix: str) -> dict[str, object]:
    """The status of the replica that leads and has taken charge of the modules."""
    async with asyncio.timeout(30):
        while True:
            with contextlib.suppress(Exception):
                reply = await call(nc, f"{prefix}.orchestrator.status", timeout=2)
                payload: dict[str, object] = reply["payload"]
                if payload.get("leader") is True:
                    return payload
            await asyncio.sleep(0.1)


async def module_pids(nc: Client, prefix: str) -> dict[str, list[int]]:
    reply = await call(nc, f"{prefix}.orchestrator.registry")
    return {r["name"]: [i["pid"] for i in r["instances"]] for r in reply["payload"]}


async def test_a_standby_takes_over_and_adopts_running_modules(
    replicas: dict[str, subprocess.Popen[bytes]], nc: Client, prefix: str
) -> None:
    events = EventLog()
    await events.attach(nc, prefix)
    async with asyncio.timeout(30):  # both replicas serving
        while len(await discover(nc, prefix, name="orchestrator", wait=0.2)) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    # Whichever replica gets the request forwards it to the leader.
    started = await call(nc, f"{prefix}.orchestrator.start_system", timeout=60)
    assert started["success"], started
    pids = await module_pids(nc, prefix)
    assert all(len(p) == 1 for p in pids.values()), pids
    leader = await leader_status(nc, prefix)
    leader_name = str(leader["instance"])
    standby_name = next(n for n in replicas if n != leader_name)
    launched = events.became("starting")
    assert sorted(launched) == ["api", "store"]

    replicas[leader_name].send_signal(signal.SIGKILL)
    replicas[leader_name].wait(5)
    # Wait for the status answered by the standby (a dead replica answers nothing).
    taken = await leader_status(nc, prefix)
    assert taken["instance"] == standby_name

    # The modules kept running, nothing was started again, and each is still one process.
    assert await module_pids(nc, prefix) == pids
    for module_pids_ in pids.values():
        assert all(psutil.pid_exists(pid) for pid in module_pids_)
    await asyncio.sleep(0.5)
    assert events.became("starting") == launched
    reply = await call(nc, f"{prefix}.send.api", {"type": "ping", "payload": {}})
    assert reply["payload"]["pid"] == pids["api"][0]

    # The new leader supervises what it adopted: a module killed now is restarted by it.
    os.kill(pids["api"][0], signal.SIGKILL)
    await events.wait_for(lambda: events.of("api").count(("starting", "running")) == 2)
    restarted_by = events.events[-1]["leader"]
    assert str(restarted_by).startswith(f"{standby_name}-")
    new_pids = await module_pids(nc, prefix)
    assert new_pids["store"] == pids["store"]
    assert new_pids["api"] != pids["api"]

    stopped = await call(nc, f"{prefix}.orchestrator.stop_system", {"timeout": 5}, timeout=60)
    assert [r["module"] for r in stopped["payload"]["stopped"]] == ["api", "store"]
    for pid in [*new_pids["store"], *new_pids["api"]]:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
