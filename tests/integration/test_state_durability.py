"""Durability: every acknowledged write survives a nats-server kill -9 and restart, and the
state service goes on serving once the server is back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
import pytest

from corral.bus import BusSettings, connect
from corral.errors import CorralError
from corral.natsd import NatsServer
from corral.runtime import ServiceSettings
from corral.sdk.state import StateClient
from corral.state.service import StateService
from corral.state.settings import StateSettings

T = TypeVar("T")
STATE = StateSettings(max_versions=3, events=False)

pytestmark = pytest.mark.chaos


async def eventually(call: Callable[[], Awaitable[T]], attempts: int = 100) -> T:
    for attempt in range(attempts):
        try:
            return await call()
        except (CorralError, nats.errors.Error):
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("unreachable")


async def test_acknowledged_writes_survive_a_kill_9(nats_server: NatsServer, prefix: str) -> None:
    bus = BusSettings(servers=[nats_server.url], connect_attempts=5, reconnect_time_wait=0.2)
    settings = ServiceSettings(prefix=prefix, bus=bus, metrics_port=-1, heartbeat_interval=0.5)
    nc = await connect(bus)
    try:
        state = StateClient(nc, prefix=prefix, settings=STATE, timeout=5)
        async with StateService(settings, STATE):
            acknowledged = {}
            for n in range(200):
                key = f"durable.k{n:03}"
                acknowledged[key] = {"n": n}
                await state.set(key, acknowledged[key])
            for n in range(50):  # several revisions of one key, too
                acknowledged["durable.counter"] = n
                await state.set("durable.counter", n)
            snapshot = await state.create_snapshot({"before": "kill"})

            await asyncio.to_thread(nats_server.kill)
            await asyncio.to_thread(nats_server.restart)

            keys = await eventually(lambda: state.keys("durable.>"))
            assert keys == sorted(acknowledged)
            found = await eventually(lambda: state.get_many(keys))
            assert {k: e.value for k, e in found.items()} == acknowledged
            history = await state.history("durable.counter")
            assert [v.value for v in history] == [47, 48, 49]
            assert [s.id for s in await state.list_snapshots()] == [snapshot.id]
            revision = await eventually(lambda: state.set("durable.after", "restart"))
            assert revision > max(e.revision for e in found.values())
    finally:
        await nc.close()
