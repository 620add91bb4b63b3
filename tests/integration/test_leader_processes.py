"""Leader election between real orchestrator processes: kill -9 the leader and a standby takes
over; SIGTERM it and the standby takes over at once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import nats.js.errors
import pytest
from nats.aio.client import Client

from corral.discovery import discover
from corral.orchestrator.leader import Lease

pytestmark = pytest.mark.chaos

TTL = 1.5


class Replicas:
    def __init__(self, nats_url: str, prefix: str, logs: Path) -> None:
        self.nats_url = nats_url
        self.prefix = prefix
        self.logs = logs
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, ttl: float = TTL) -> None:
        env = {
            **os.environ,
            "NATS_URL": self.nats_url,
            "CORRAL_PREFIX": self.prefix,
            "CORRAL_INSTANCE": name,
            "CORRAL_LEASE_TTL": str(ttl),
            "CORRAL_METRICS_PORT": "-1",
            "CORRAL_HEARTBEAT_INTERVAL": "0.5",
        }
        env.pop("CORRAL_CONFIG", None)
        with (self.logs / f"{name}.log").open("wb") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "corral.orchestrator"], env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.fixture
def replicas(nats_url: str, prefix: str, tmp_path: Path) -> Iterator[Replicas]:
    group = Replicas(nats_url, prefix, tmp_path)
    try:
        yield group
    finally:
        group.stop_all()


async def holder(nc: Client, prefix: str) -> str | None:
    """The replica named in the lease (its CORRAL_INSTANCE), or None while the key is free."""
    try:
        kv = await nc.jetstream().key_value(f"{prefix}_leases")
        entry = await kv.get("orchestrator")
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError):
        return None
    return msgspec.json.decode(entry.value or b"", type=Lease).holder.rsplit("-", 1)[0]


async def wait_for_holder(nc: Client, prefix: str, name: str, timeout: float) -> float:
    start = time.monotonic()
    while (await holder(nc, prefix)) != name:
        assert time.monotonic() - start < timeout, f"{name} does not hold the lease after {timeout}s"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def wait_for_replicas(nc: Client, prefix: str, count: int) -> None:
    """Until `count` orchestrators answer discovery: each is watching the lease by then (it
    starts its election before it serves), so a handover is not also a process start."""
    async with asyncio.timeout(30):
        while len(await discover(nc, prefix, name="orchestrator", wait=0.2)) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def test_kill_9_of_the_leader_process_hands_the_lease_to_the_standby(
    replicas: Replicas, nc: Client, prefix: str
) -> None:
    replicas.start("o1")
    await wait_for_holder(nc, prefix, "o1", 30.0)
    replicas.start("o2")
    await wait_for_replicas(nc, prefix, 2)
    await asyncio.sleep(TTL)  # o1 keeps renewing while o2 watches
    assert await holder(nc, prefix) == "o1"
    replicas.processes["o1"].send_signal(signal.SIGKILL)
    took = await wait_for_holder(nc, prefix, "o2", TTL * 4)
    assert took >= TTL / 3  # it waited for the lease to lapse, not a step-down
    assert replicas.processes["o2"].poll() is None


async def test_sigterm_of_the_leader_process_hands_over_at_once(
    replicas: Replicas, nc: Client, prefix: str
) -> None:
    # A long lease, so "at once" is far from "once the lease lapsed" even on a loaded machine.
    ttl = 6.0
    replicas.start("o1", ttl)
    await wait_for_holder(nc, prefix, "o1", 30.0)
    replicas.start("o2", ttl)
    await wait_for_replicas(nc, prefix, 2)
    replicas.processes["o1"].send_signal(signal.SIGTERM)
    await asyncio.wait_for(asyncio.to_thread(replicas.processes["o1"].wait), 30)
    assert replicas.processes["o1"].returncode == 0
    # Released on the way out: the standby's watch saw the delete; no ttl to wait. A lapse
    # would take at least ttl * 2/3 (the last renewal is at most ttl/3 old).
    took = await wait_for_holder(nc, prefix, "o2", ttl)
    assert took < ttl / 3
