"""kill -9 the nats-server (file storage) while 10,000 tasks flow, restart it on the same port
and store: every task whose submission was acknowledged runs; the scheduler and the workers
reconnect on their own."""

from __future__ import annotations

import asyncio
import time

import nats.errors
import pytest
from conftest import Processes, scheduler_answers, wait_until

from corral.bus import BusSettings, connect
from corral.errors import CorralError
from corral.natsd import NatsServer
from corral.sdk.client import Client

pytestmark = pytest.mark.chaos

TASKS = 10_000
BATCH = 200
KILL_AFTER = 3_000  # acknowledged submissions before the kill


async def test_every_acknowledged_task_runs_across_a_nats_server_kill(
    nats_server: NatsServer, tmp_path: object, prefix: str
) -> None:
    processes = Processes(tmp_path, nats_server.url, prefix)  # type: ignore[arg-type]
    nc = await connect(BusSettings(servers=[nats_server.url], connect_attempts=5, reconnect_time_wait=0.2))
    try:
        processes.scheduler()
        processes.worker("w1", concurrency=32)
        processes.worker("w2", concurrency=32)
        client = Client(nc, prefix=prefix)
        await wait_until(lambda: scheduler_answers(nc, prefix), 30, "the scheduler to answer", processes)

        acknowledged: set[str] = set()
        failed_attempts = 0

        async def submit_all() -> None:
            nonlocal failed_attempts
            for start in range(0, TASKS, BATCH):
                batch = [
                    {"type": "record", "payload": {"n": n}, "idempotency_key": f"chaos-{n}"}
                    for n in range(start, start + BATCH)
                ]
                deadline = time.monotonic() + 60
                while True:  # the same keys again after a failure: submitted once, whatever happened
                    try:
                        handles = await client.submit_many(batch)
                        break
                    except (CorralError, nats.errors.Error, TimeoutError):
                        failed_attempts += 1
                        assert time.monotonic() < deadline, "submissions failed for 60 s"
                        await asyncio.sleep(0.2)
                acknowledged.update(h.id for h in handles)

        submitting = asyncio.create_task(submit_all())
        await wait_until(lambda: len(acknowledged) >= KILL_AFTER, 60, f"{KILL_AFTER} submissions", processes)
        nats_server.kill()
        await asyncio.sleep(1.0)
        await asyncio.to_thread(nats_server.start)  # same port, same store
        await asyncio.wait_for(submitting, 120)

        def ran() -> set[str]:
            return {r["task"] for r in processes.runs("record")}

        await wait_until(lambda: acknowledged <= ran(), 60, "every acknowledged task to run", processes)
        # None stuck: every worker slot is free again (a task whose acknowledgement was lost
        # with the server must not stay "running" on its worker).
        await wait_until(lambda: workers_idle(nc, prefix), 30, "both workers to be idle", processes)
        # Both workers pull again after the restart: 64 one-second tasks need the 32 slots of each.
        await client.submit_many([{"type": "block", "payload": {"seconds": 1.0}} for _ in range(64)])
        await wait_until(lambda: len(processes.runs("block")) == 64, 60, "64 block tasks to start", processes)
    finally:
        processes.stop()
        await nc.close()

    runs = processes.runs("record")
    assert len(acknowledged) == TASKS
    assert len({r["task"] for r in runs}) == TASKS  # at least once: a few may have run twice
    assert len({r["payload"]["n"] for r in runs}) == TASKS
    # Both workers and the scheduler reconnected by themselves: each took work after the restart.
    assert {r["worker"] for r in processes.runs("block")} == {"w1", "w2"}
    print(f"runs beyond one per task: {len(runs) - TASKS}, failed submission attempts: {failed_attempts}")


async def workers_idle(nc: object, prefix: str) -> bool:
    import json

    msg = await nc.request(f"{prefix}.scheduler.workers", b"", timeout=5)  # type: ignore[attr-defined]
    workers = json.loads(msg.data)["payload"]["workers"]
    return len(workers) == 2 and all(w["running"] == 0 for w in workers)
