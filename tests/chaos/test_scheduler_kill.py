"""kill -9 the scheduler while tasks are being submitted and run: no acknowledged task is lost
and none is left stuck (every record ends succeeded), once a new scheduler takes over."""

from __future__ import annotations

import asyncio
import json
import time

import nats.errors
import pytest
from conftest import Processes, scheduler_answers, wait_until
from nats.aio.client import Client as NatsClient

from corral.sdk.client import Client

pytestmark = pytest.mark.chaos

TASKS = 3_000
BATCH = 100
KILL_AFTER = 1_000


async def test_no_task_is_lost_or_stuck_when_the_scheduler_is_killed(
    processes: Processes, nc: NatsClient, prefix: str
) -> None:
    processes.scheduler("scheduler-1")
    processes.worker("w", concurrency=32)
    client = Client(nc, prefix=prefix)
    await wait_until(lambda: scheduler_answers(nc, prefix), 30, "the scheduler to answer", processes)

    acknowledged: list[str] = []
    refused = 0

    async def submit_all() -> None:
        nonlocal refused
        for start in range(0, TASKS, BATCH):
            batch = [
                {"type": "record", "payload": {"n": n}, "idempotency_key": f"sched-kill-{n}"}
                for n in range(start, start + BATCH)
            ]
            deadline = time.monotonic() + 60
            body = json.dumps({"tasks": batch}).encode()
            while True:  # no scheduler for a moment: the same keys again, submitted once
                try:
                    # A short timeout of our own: the request in flight to the killed scheduler
                    # gets no answer, and the SDK's submit_many would wait 30 s for one.
                    msg = await nc.request(f"{prefix}.scheduler.submit_many", body, timeout=3)
                    reply = json.loads(msg.data)
                    if reply["success"]:
                        break
                except (nats.errors.Error, TimeoutError):
                    pass
                refused += 1
                assert time.monotonic() < deadline, "no scheduler took submissions for 60 s"
                await asyncio.sleep(0.1)
            acknowledged.extend(t["id"] for t in reply["payload"]["tasks"])

    submitting = asyncio.create_task(submit_all())
    await wait_until(lambda: len(acknowledged) >= KILL_AFTER, 60, f"{KILL_AFTER} submissions", processes)
    processes.kill("scheduler-1")
    processes.scheduler("scheduler-2")
    await asyncio.wait_for(submitting, 90)

    def ran() -> set[str]:
        return {r["task"] for r in processes.runs("record")}

    await wait_until(lambda: set(acknowledged) <= ran(), 60, "every acknowledged task to run", processes)
    assert len(set(acknowledged)) == TASKS
    assert refused > 0  # some submissions did meet the gap between the two schedulers

    async def all_succeeded() -> bool:
        records = await asyncio.gather(*(client.task(task_id) for task_id in acknowledged))
        return all(r.status == "succeeded" for r in records)

    await wait_until(all_succeeded, 30, "every task record to say succeeded", processes)
