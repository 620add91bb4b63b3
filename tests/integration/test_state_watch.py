"""Watches (`StateClient.subscribe`): every change, in order, with old values, from now or from
the current values, and across a nats-server kill -9 and restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client

from corral.bus import BusSettings, connect
from corral.natsd import NatsServer
from corral.runtime import ServiceSettings
from corral.sdk.state import StateClient, Watch
from corral.state.changes import Change
from corral.state.entries import Operation
from corral.state.service import StateService
from corral.state.settings import StateSettings

STATE = StateSettings(max_versions=10, events=False)
HEARTBEAT = 0.3  # seconds; a lost consumer is noticed after three of them


@pytest.fixture
async def service(settings: ServiceSettings) -> AsyncIterator[StateService]:
    async with StateService(settings, STATE) as running:
        yield running


@pytest.fixture
def state(nc: Client, prefix: str) -> StateClient:
    return StateClient(nc, prefix=prefix, settings=STATE)


async def take(watch: Watch, count: int, timeout: float = 10.0) -> list[Change]:
    return [await watch.next(timeout=timeout) for _ in range(count)]


def summary(changes: list[Change]) -> list[tuple[str, Any, Any, str]]:
    return [(c.key, c.old_value, c.new_value, c.operation.value) for c in changes]


async def test_a_watch_from_now_sees_only_later_changes_with_old_values(
    service: StateService, state: StateClient
) -> None:
    await state.set("app.version", "1.0")
    await state.set("app.name", "corral")
    async with await state.subscribe("app.*") as watch:
        await state.set("app.version", "1.1")
        await state.delete("app.name")
        await state.set("app.name", "corral2")
        changes = await take(watch, 3)
    assert summary(changes) == [
        ("app.version", "1.0", "1.1", "set"),
        ("app.name", "corral", None, "delete"),
        ("app.name", None, "corral2", "set"),
    ]
    assert changes[0].revision < changes[1].revision < changes[2].revision


async def test_a_watch_from_the_current_values_starts_with_them(
    service: StateService, state: StateClient
) -> None:
    await state.set("app.b", 2)
    await state.set("app.a", 1)
    await state.set("app.gone", 0)
    await state.delete("app.gone")
    async with await state.subscribe("app.>", from_current=True) as watch:
        await state.set("app.a", 10)
        changes = await take(watch, 3)
    assert summary(changes) == [
        ("app.b", None, 2, "initial"),
        ("app.a", None, 1, "initial"),
        ("app.a", 1, 10, "set"),
    ]


async def test_a_watch_since_a_revision_replays_later_changes(
    service: StateService, state: StateClient
) -> None:
    await state.set("k", 1)
    since = await state.set("k", 2)
    await state.set("k", 3)
    await state.delete("k")
    async with await state.subscribe("k", since=since) as watch:
        changes = await take(watch, 2)
    assert summary(changes) == [("k", 2, 3, "set"), ("k", 3, None, "delete")]


async def test_a_pattern_selects_keys_like_nats_does(service: StateService, state: StateClient) -> None:
    async with await state.subscribe("app.*") as watch:
        for key in ("other", "app.deep.key", "app", "app.version"):
            await state.set(key, key)
        change = await watch.next(timeout=5)
        assert change.key == "app.version"
        with pytest.raises(TimeoutError):
            await watch.next(timeout=0.3)


async def test_an_expired_ttl_is_a_change(service: StateService, state: StateClient) -> None:
    async with await state.subscribe("lease.*") as watch:
        await state.set("lease.leader", "node-1", ttl=1)
        changes = await take(watch, 2)
    assert summary(changes) == [
        ("lease.leader", None, "node-1", "set"),
        ("lease.leader", "node-1", None, "expire"),
    ]


async def test_concurrent_writers_are_seen_complete_and_in_order(
    service: StateService, state: StateClient
) -> None:
    keys = [f"load.k{i}" for i in range(4)]

    async def writer(key: str) -> None:
        for n in range(100):
            await state.direct.set(key, n)

    async with await state.subscribe("load.*") as watch:
        await asyncio.gather(*(writer(key) for key in keys))
        changes = await take(watch, 400)
    revisions = [c.revision for c in changes]
    assert revisions == sorted(revisions)
    assert len(set(revisions)) == 400
    for key in keys:
        mine = [c for c in changes if c.key == key]
        assert [c.new_value for c in mine] == list(range(100))
        assert [c.old_value for c in mine] == [None, *range(99)]


async def test_a_callback_gets_every_change(service: StateService, state: StateClient) -> None:
    seen: list[Any] = []
    done = asyncio.Event()

    def on_change(change: Change) -> None:
        seen.append(change.new_value)
        if len(seen) == 3:
            done.set()

    watch = await state.subscribe("cb.*", on_change)
    try:
        for n in range(3):
            await state.set("cb.n", n)
        await asyncio.wait_for(done.wait(), 5)
    finally:
        await watch.stop()
    assert seen == [0, 1, 2]


async def test_an_async_callback_that_fails_does_not_stop_the_watch(
    service: StateService, state: StateClient
) -> None:
    seen: list[Any] = []

    async def on_change(change: Change) -> None:
        seen.append(change.new_value)
        if change.new_value == "boom":
            raise RuntimeError("callback bug")

    async with await state.subscribe("cb.*", on_change):
        await state.set("cb.x", "boom")
        await state.set("cb.x", "after")
        for _ in range(50):
            if len(seen) == 2:
                break
            await asyncio.sleep(0.05)
    assert seen == ["boom", "after"]


async def test_iteration_ends_when_the_watch_stops(service: StateService, state: StateClient) -> None:
    watch = await state.subscribe("it.*")
    await state.set("it.a", 1)
    got: list[Change] = []

    async def consume() -> None:
        async for change in watch:
            got.append(change)
            await watch.stop()

    await asyncio.wait_for(consume(), 5)
    assert summary(got) == [("it.a", None, 1, "set")]


@pytest.mark.chaos
async def test_a_watch_survives_a_server_kill_and_restart(nats_server: NatsServer, prefix: str) -> None:
    """Changes written while the watcher is cut off are delivered once, in order, after it resumes."""
    bus = BusSettings(servers=[nats_server.url], connect_attempts=5, reconnect_time_wait=0.2)
    settings = ServiceSettings(prefix=prefix, bus=bus, metrics_port=-1, heartbeat_interval=0.5)
    async with StateService(settings, STATE):
        pass  # creates the bucket; the watch and the writer below use the direct path only
    watcher_nc = await connect(BusSettings(servers=[nats_server.url], reconnect_time_wait=2.0))
    writer_nc = await connect(bus)
    try:
        watcher = StateClient(watcher_nc, prefix=prefix, settings=STATE)
        writer = StateClient(writer_nc, prefix=prefix, settings=STATE)
        async with await watcher.subscribe("job.*", heartbeat=HEARTBEAT) as watch:
            for n in range(3):
                await writer.direct.set("job.step", n)
            before = await take(watch, 3)
            await asyncio.to_thread(nats_server.kill)
            await asyncio.to_thread(nats_server.restart)
            # The writer reconnects first (0.2 s wait against the watcher's 2 s) and writes
            # while the watcher is still cut off.
            for n in range(3, 8):
                await _retry(lambda n=n: writer.direct.set("job.step", n))
            await writer.direct.delete("job.step")
            after = await take(watch, 6, timeout=20)
            with pytest.raises(TimeoutError):
                await watch.next(timeout=1.0)  # nothing twice
            assert watch.resumes >= 1
    finally:
        await watcher_nc.close()
        await writer_nc.close()
    changes = before + after
    assert [c.new_value for c in changes] == [*range(8), None]
    assert [c.old_value for c in changes] == [None, *range(8)]
    assert changes[-1].operation is Operation.DELETE
    revisions = [c.revision for c in changes]
    assert revisions == sorted(set(revisions))


async def _retry(write: Any, attempts: int = 50) -> None:
    for attempt in range(attempts):
        try:
            await write()
            return
        except Exception:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.1)


async def test_a_slow_callback_misses_nothing_though_history_is_short(
    settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    """The watch reads changes as they are stored, whatever its callback's pace, so a bucket
    that keeps 2 revisions per key removes none before the watch has them."""
    short = StateSettings(max_versions=2, events=False)
    state = StateClient(nc, prefix=prefix, settings=short)
    seen: list[tuple[str, Any]] = []

    async def slow(change: Change) -> None:
        await asyncio.sleep(0.002)
        seen.append((change.key, change.new_value))

    async with StateService(settings, short), await state.subscribe("slow.*", slow):
        await asyncio.gather(*(_write_many(state, f"slow.k{i}", 50) for i in range(4)))
        for _ in range(100):
            if len(seen) == 200:
                break
            await asyncio.sleep(0.1)
    for i in range(4):
        assert [v for k, v in seen if k == f"slow.k{i}"] == list(range(50))


async def _write_many(state: StateClient, key: str, count: int) -> None:
    for n in range(count):
        await state.direct.set(key, n)
