"""The worker's fetch loop survives a nats-server restart: nats-py pull subscriptions have been
reported to stop receiving after one, so the worker uses its own pull requests and declares its
consumers again when a pull goes unanswered. Tasks submitted after the restart still run."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from corral.bus import BusSettings, connect
from corral.natsd import NatsServer
from corral.runtime import ServiceSettings
from corral.scheduler.service import SchedulerService
from corral.sdk import Client, TaskContext, Worker
from tests.integration.scheduler_helpers import FAST

pytestmark = pytest.mark.chaos


async def test_tasks_flow_again_after_the_server_restarts(nats_server: NatsServer, prefix: str) -> None:
    bus = BusSettings(servers=[nats_server.url], reconnect_time_wait=0.1, connect_attempts=5)
    settings = ServiceSettings(prefix=prefix, bus=bus, metrics_port=-1, heartbeat_interval=0.2)
    worker = Worker("restartw", settings=settings, scheduler=FAST)
    ran: list[Any] = []

    @worker.task("echo")
    async def echo(ctx: TaskContext, payload: Any) -> Any:
        ran.append(payload)
        return payload

    nc = await connect(bus)
    client = Client(nc, prefix=prefix)
    async with SchedulerService(settings, FAST), worker:
        assert await (await client.submit("echo", {"before": 1})).result(timeout=5) == {"before": 1}
        nats_server.stop()
        await asyncio.to_thread(nats_server.start)
        # Everyone reconnects on their own; the first requests may land before the scheduler has.
        for _ in range(50):
            try:
                handle = await client.submit("echo", {"after": 1})
                break
            except Exception:
                await asyncio.sleep(0.2)
        assert await handle.result(timeout=15) == {"after": 1}
        handles = await client.submit_many([{"type": "echo", "payload": {"n": n}} for n in range(20)])
        assert [await h.result(timeout=10) for h in handles] == [{"n": n} for n in range(20)]
    await nc.close()
    assert ran[:2] == [{"before": 1}, {"after": 1}]
