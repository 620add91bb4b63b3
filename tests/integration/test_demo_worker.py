"""The demo worker's task types (examples/workers/demo), run by a scheduler in this process."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import msgspec
import pytest
from nats.aio.client import Client as NatsClient

from corral.runtime import ServiceSettings
from corral.scheduler.service import SchedulerService
from corral.sdk import Client, TaskFailedError
from tests.integration.scheduler_helpers import FAST

DEMO = Path(__file__).resolve().parents[2] / "examples/workers/demo/__main__.py"


def load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo_worker", DEMO)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # msgspec resolves the Structs' annotations through it
    spec.loader.exec_module(module)
    return module


async def test_every_demo_task_type(settings: ServiceSettings, nc: NatsClient, prefix: str) -> None:
    demo = load_demo()
    worker = demo.worker
    worker.settings, worker.scheduler = settings, FAST
    client = Client(nc, prefix=prefix)
    async with SchedulerService(settings, FAST), worker:
        assert await (await client.submit("echo", {"hello": "world"})).result(timeout=5) == {"hello": "world"}
        sleep = await client.submit("sleep", {"seconds": 0.3}, delay=0.2)
        progress = [u.data["percent"] async for u in sleep.updates() if u.kind == "progress"]
        assert progress == [10.0 * i for i in range(1, 11)]
        assert (await sleep.result(timeout=5))["slept"] == 0.3
        assert await (await client.submit("flaky", {"fail_times": 1})).result(timeout=5) == {"attempts": 2}
        cpu = await (await client.submit("cpu", {"seconds": 0.2})).result(timeout=5)
        assert cpu["loops"] > 0
        assert cpu["stopped_early"] is False
        with pytest.raises(TaskFailedError, match="fails, as asked"):
            await (await client.submit("fail", {}, max_retries=1)).result(timeout=5)
        with pytest.raises(TaskFailedError, match="invalid payload"):
            await (await client.submit("sleep", {"seconds": "long"})).result(timeout=5)
    assert msgspec.structs.fields(demo.Sleep)[0].name == "seconds"
