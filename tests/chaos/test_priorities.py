"""Priorities: with the one worker busy and tasks of every level queued, they run in priority
order, first in first out within a level."""

from __future__ import annotations

import pytest
from conftest import Processes, scheduler_answers, wait_until
from nats.aio.client import Client as NatsClient

from corral.sdk.client import Client

pytestmark = pytest.mark.chaos


async def test_queued_tasks_run_most_urgent_first_and_fifo_within_a_level(
    processes: Processes, nc: NatsClient, prefix: str
) -> None:
    processes.scheduler()
    processes.worker("only", concurrency=1)
    client = Client(nc, prefix=prefix)
    await wait_until(lambda: scheduler_answers(nc, prefix), 30, "the scheduler to answer", processes)
    blocker = await client.submit("block", {"seconds": 4.0})  # outlasts the 15 submits below
    await wait_until(lambda: processes.runs("block"), 30, "the worker to be busy", processes)

    # Submitted least urgent first, interleaved: 4 3 2 1 0 4 3 2 1 0 ...
    submitted = [(level, n) for n in range(3) for level in (4, 3, 2, 1, 0)]
    handles = [
        await client.submit("record", {"level": level, "n": n}, priority=level) for level, n in submitted
    ]
    for handle in handles:
        await handle.result(timeout=30)
    await blocker.result(timeout=5)

    ran = [(r["payload"]["level"], r["payload"]["n"]) for r in processes.runs("record")]
    assert ran == sorted(submitted)
