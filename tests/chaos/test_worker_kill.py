"""kill -9 a worker mid-task: the task completes on another worker once its lease expires,
from its last checkpoint."""

from __future__ import annotations

import pytest
from conftest import Processes, scheduler_answers, wait_until
from nats.aio.client import Client as NatsClient

from corral.sdk.client import Client

pytestmark = pytest.mark.chaos


async def test_a_killed_workers_task_resumes_from_its_checkpoint_on_another_worker(
    processes: Processes, nc: NatsClient, prefix: str
) -> None:
    processes.scheduler()
    processes.worker("first", concurrency=1)
    client = Client(nc, prefix=prefix)
    await wait_until(lambda: scheduler_answers(nc, prefix), 30, "the scheduler to answer", processes)
    handle = await client.submit("steps", {"steps": 8, "seconds": 0.5})  # room to kill it midway

    def first_steps() -> list[int]:
        return [r["step"] for r in processes.runs("step") if r["worker"] == "first"]

    await wait_until(lambda: len(first_steps()) >= 3, 30, "three steps on the first worker", processes)
    processes.kill("first")
    done_before_kill = max(first_steps())
    processes.worker("second", concurrency=1)

    # The lease (ack_wait 2 s in these tests) expires, the task is redelivered to the second worker.
    result = await handle.result(timeout=30)

    starts = processes.runs("start")
    assert [(r["worker"] == "second", r["attempt"]) for r in starts] == [(False, 1), (True, 2)]
    resumed = starts[1]["resume_state"]["done"]
    # The checkpoint after a step is written before that step is noted, so it is never behind.
    assert resumed >= done_before_kill
    assert result == {"done": 8, "resumed_from": resumed}
    second_steps = [r["step"] for r in processes.runs("step") if r["worker"] == "second"]
    assert second_steps == list(range(resumed + 1, 9))  # no step before the checkpoint ran again
    record = await handle.record()
    assert record.status == "succeeded"
    assert record.attempts == 2
