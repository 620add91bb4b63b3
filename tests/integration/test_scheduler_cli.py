"""`corral submit | tasks | task | cancel | workers | dlq` as a user runs them, against a scheduler
and a worker running in this process."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NatsClient

from corral.runtime import ServiceSettings
from corral.scheduler.service import SchedulerService
from corral.sdk import Client, TaskContext, Worker
from tests.integration.scheduler_helpers import FAST


async def corral(nats_url: str, prefix: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "NATS_URL": nats_url, "CORRAL_PREFIX": prefix}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "corral.cli.main", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def system(settings: ServiceSettings) -> AsyncIterator[None]:
    worker = Worker(
        "cliworker",
        capabilities=["shell"],
        settings=msgspec.structs.replace(settings, instance="cliworker-1"),
        scheduler=FAST,
    )

    @worker.task("echo")
    async def echo(ctx: TaskContext, payload: Any) -> Any:
        return payload

    @worker.task("fail")
    async def fail(ctx: TaskContext, payload: Any) -> None:
        raise RuntimeError("broken on purpose")

    async with SchedulerService(settings, FAST), worker:
        yield


async def test_submit_wait_task_tasks_and_workers(
    system: None, nats_url: str, prefix: str, nc: NatsClient
) -> None:
    code, out, err = await corral(
        nats_url, prefix, "submit", "echo", '{"x": 1}', "--priority", "high", "--wait"
    )
    assert code == 0, err
    assert json.loads(out) == {"x": 1}
    code, out, err = await corral(nats_url, prefix, "submit", "echo", '{"y": 2}', "--name", "second")
    assert code == 0, err
    task_id = out.strip()
    await Client(nc, prefix=prefix).results([task_id], timeout=10)
    code, out, err = await corral(nats_url, prefix, "task", task_id)
    assert code == 0, err
    record = json.loads(out)
    assert record["id"] == task_id
    assert record["name"] == "second"
    assert record["status"] == "succeeded"
    code, out, err = await corral(nats_url, prefix, "tasks", "--status", "succeeded")
    assert code == 0, err
    assert task_id in out
    assert "tasks (2, newest first)" in out
    code, out, err = await corral(nats_url, prefix, "workers")
    assert code == 0, err
    assert "cliworker-1" in out
    assert "shell" in out
    assert "echo" in out


async def test_failures_dead_letters_and_bad_input(system: None, nats_url: str, prefix: str) -> None:
    code, out, err = await corral(nats_url, prefix, "submit", "fail", "{}", "--max-retries", "0", "--wait")
    assert code == 1
    assert "failed" in err
    assert "broken on purpose" in err
    assert "Traceback" in err
    task_id = err.split("task ", 1)[1].split()[0]
    code, out, err = await corral(nats_url, prefix, "dlq", "list")
    assert code == 0, err
    assert task_id in out
    assert "dead letters (1)" in out
    code, out, err = await corral(nats_url, prefix, "dlq", "show", task_id)
    assert code == 0, err
    assert json.loads(out)["attempts"] == 1
    code, out, err = await corral(nats_url, prefix, "dlq", "purge")
    assert (code, out.strip()) == (0, "purged 1"), err
    code, out, err = await corral(nats_url, prefix, "submit", "echo", "{not json")
    assert code == 2
    assert "not valid JSON" in err
    code, out, err = await corral(nats_url, prefix, "task", "nosuchtask")
    assert code == 1
    assert "NOT_FOUND" in err
