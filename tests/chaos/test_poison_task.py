"""A poison task ends in the dead-letter queue after exactly max_retries + 1 attempts."""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import Processes, scheduler_answers, wait_until
from nats.aio.client import Client as NatsClient

from corral.sdk.client import Client
from corral.sdk.tasks import TaskFailedError

pytestmark = pytest.mark.chaos


async def test_a_poison_task_is_dead_lettered_after_max_retries_plus_one_attempts(
    processes: Processes, nc: NatsClient, prefix: str
) -> None:
    processes.scheduler()
    processes.worker("w")
    client = Client(nc, prefix=prefix)
    await wait_until(lambda: scheduler_answers(nc, prefix), 30, "the scheduler to answer", processes)
    handle = await client.submit(
        "poison", {}, max_retries=2, backoff={"initial": 0.1, "multiplier": 1, "max": 0.1, "jitter": 0}
    )
    with pytest.raises(TaskFailedError):
        await handle.result(timeout=30)
    await asyncio.sleep(1.0)  # time enough for a fourth attempt, if there were one

    attempts = [r["attempt"] for r in processes.runs("poison") if r["task"] == handle.id]
    assert attempts == [1, 2, 3]
    reply = await nc.request(f"{prefix}.scheduler.dlq.show", f'{{"id": "{handle.id}"}}'.encode(), timeout=5)
    letter = json.loads(reply.data)["payload"]
    assert letter["attempts"] == 3
    assert "poison task: fails every time" in letter["error"]
    assert "RuntimeError" in letter["traceback"]
    assert letter["task"]["id"] == handle.id
    record = await handle.record()
    assert record.status == "failed"
    assert record.attempts == 3
