"""Snapshots: a restore makes the store exactly equal to the snapshot, snapshots outlive the
service, and a restore interrupted by the service dying is finished by the next one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client

from corral.errors import ConflictError, NotFoundError
from corral.runtime import ServiceSettings
from corral.sdk.state import StateClient
from corral.state.service import StateService
from corral.state.settings import StateSettings
from corral.state.snapshot_store import JOURNAL_KEY
from corral.state.snapshots import RestoreJournal, RestoreStatus, plan_restore, report_of

STATE = StateSettings(max_versions=5, events=False)


@pytest.fixture
async def service(settings: ServiceSettings) -> AsyncIterator[StateService]:
    async with StateService(settings, STATE) as running:
        yield running


@pytest.fixture
def state(nc: Client, prefix: str) -> StateClient:
    return StateClient(nc, prefix=prefix, settings=STATE)


async def everything(state: StateClient) -> dict[str, Any]:
    keys = await state.keys()
    return {key: entry.value for key, entry in (await state.get_many(keys)).items()} if keys else {}


async def test_restore_makes_the_store_equal_to_the_snapshot(
    service: StateService, state: StateClient
) -> None:
    for key, value in {
        "app.version": "1.0",
        "app.flags": {"beta": False},
        "same": 1,
        "doomed": [1, 2],
    }.items():
        await state.set(key, value)
    before = await everything(state)
    info = await state.create_snapshot({"reason": "release 1.0"})
    assert (info.keys, info.metadata) == (4, {"reason": "release 1.0"})

    await state.set("app.version", "2.0")  # changed since
    await state.delete("doomed")  # deleted since
    await state.set("added.one", True)  # added since
    await state.set("added.two", None)
    report = await state.restore_snapshot(info.id)

    assert await everything(state) == before
    assert (report.rewritten, report.recreated, report.deleted) == (
        ["app.version"],
        ["doomed"],
        ["added.one", "added.two"],
    )
    assert (report.counts.unchanged, report.resumed) == (2, False)


async def test_restoring_twice_changes_nothing_the_second_time(
    service: StateService, state: StateClient
) -> None:
    await state.set("a", 1)
    info = await state.create_snapshot()
    await state.set("a", 2)
    await state.restore_snapshot(info.id)
    revision = (await state.get("a")).revision
    report = await state.restore_snapshot(info.id)
    assert (report.counts.rewritten, report.counts.recreated, report.counts.deleted) == (0, 0, 0)
    assert (await state.get("a")).revision == revision


async def test_an_empty_snapshot_empties_the_store(service: StateService, state: StateClient) -> None:
    info = await state.create_snapshot()
    assert info.keys == 0
    await state.set("x", 1)
    await state.set("y.z", 2)
    report = await state.restore_snapshot(info.id)
    assert report.deleted == ["x", "y.z"]
    assert await state.keys() == []


async def test_list_and_delete(service: StateService, state: StateClient) -> None:
    first = await state.create_snapshot({"n": 1})
    await state.set("k", "v")
    second = await state.create_snapshot({"n": 2})
    listed = await state.list_snapshots()
    assert [(s.id, s.keys, s.metadata) for s in listed] == [(first.id, 0, {"n": 1}), (second.id, 1, {"n": 2})]
    assert listed[1].revision >= listed[0].revision
    assert await state.delete_snapshot(first.id) is True
    assert [s.id for s in await state.list_snapshots()] == [second.id]
    with pytest.raises(NotFoundError, match=f"no snapshot '{first.id}'"):
        await state.restore_snapshot(first.id)
    with pytest.raises(NotFoundError, match=f"no snapshot '{first.id}'"):
        await state.delete_snapshot(first.id)


async def test_snapshots_outlive_the_service(settings: ServiceSettings, state: StateClient) -> None:
    async with StateService(settings, STATE):
        await state.set("k", "kept")
        info = await state.create_snapshot({"why": "restart"})
        await state.set("k", "changed")
    async with StateService(settings, STATE):
        assert [s.id for s in await state.list_snapshots()] == [info.id]
        await state.restore_snapshot(info.id)
        assert await state.get_state("k") == "kept"


async def test_the_body_is_stored_in_the_object_store_as_json(
    service: StateService, state: StateClient, nc: Client, prefix: str
) -> None:
    await state.set("a.b", {"x": [1, "y"]})
    info = await state.create_snapshot()
    objects = await nc.jetstream().object_store(f"{prefix}_snapshots")  # `nats object get`
    body = msgspec.json.decode((await objects.get(info.id)).data)
    assert body["values"] == {"a.b": {"x": [1, "y"]}}
    assert body["info"]["id"] == info.id


async def write_journal(service: StateService, snapshot_id: str, current: dict[str, bytes]) -> None:
    """What a service leaves behind when it dies after journaling a restore."""
    body = await service.snapshots.load(snapshot_id)
    target = {k: bytes(v) for k, v in body.values.items()}
    report = report_of(snapshot_id, plan_restore(current, target))
    journal = RestoreJournal(snapshot_id, RestoreStatus.RUNNING, time.time(), "dead-instance", report)
    await service.snapshots.index.put(JOURNAL_KEY, msgspec.json.encode(journal))


async def test_a_restore_left_running_is_finished_before_the_next_service_serves(
    settings: ServiceSettings, state: StateClient
) -> None:
    async with StateService(settings, STATE) as first:
        for n in range(20):
            await state.set(f"k{n}", n)
        info = await state.create_snapshot()
        for n in range(20):
            await state.set(f"k{n}", -n)
        await state.set("extra", "added")
        _, current = await first.store.read_all()
        await write_journal(first, info.id, current)
        for n in range(5):  # the dead restore got this far
            await state.direct.set(f"k{n}", n)
    async with StateService(settings, STATE) as second:
        journal = await second.snapshots.restore_status()
        assert journal is not None
        assert (journal.status, journal.report.resumed) == (RestoreStatus.DONE, True)
        assert journal.report.counts.rewritten == 19  # the report of the whole restore, not of the rest
        assert await everything(state) == {f"k{n}": n for n in range(20)}


async def test_another_restore_waits_for_a_running_one(service: StateService, state: StateClient) -> None:
    await state.set("k", 1)
    first = await state.create_snapshot()
    await state.set("k", 2)
    second = await state.create_snapshot()
    _, current = await service.store.read_all()
    await write_journal(service, first.id, current)
    with pytest.raises(
        ConflictError, match=f"snapshot '{first.id}' is being restored .*; wait for it to finish"
    ):
        await state.restore_snapshot(second.id)
    report = await state.restore_snapshot(first.id)  # asking again finishes it
    assert report.resumed is True
    assert await state.get_state("k") == 1
    await state.restore_snapshot(second.id)
    assert await state.get_state("k") == 2


async def test_a_snapshot_being_restored_cannot_be_deleted(service: StateService, state: StateClient) -> None:
    await state.set("k", 1)
    info = await state.create_snapshot()
    _, current = await service.store.read_all()
    await write_journal(service, info.id, current)
    with pytest.raises(ConflictError, match=f"snapshot '{info.id}' is being restored: delete it once"):
        await state.delete_snapshot(info.id)


async def test_a_running_restore_whose_snapshot_vanished_is_abandoned_and_the_service_starts(
    settings: ServiceSettings, state: StateClient, nc: Client, prefix: str
) -> None:
    async with StateService(settings, STATE) as first:
        await state.set("k", 1)
        info = await state.create_snapshot()
        _, current = await first.store.read_all()
        await write_journal(first, info.id, current)
    objects = await nc.jetstream().object_store(f"{prefix}_snapshots")
    await objects.delete(info.id)  # by hand, around the service
    async with StateService(settings, STATE) as second:
        journal = await second.snapshots.restore_status()
        assert journal is not None
        assert journal.status is RestoreStatus.ABANDONED
        await state.set("k", 2)
        other = await state.create_snapshot()
        await state.set("k", 3)
        await state.restore_snapshot(other.id)  # restores work again
        assert await state.get_state("k") == 2


@pytest.mark.slow
@pytest.mark.chaos
async def test_a_restore_killed_midway_is_finished_by_the_next_service(
    settings: ServiceSettings, nats_url: str, prefix: str, nc: Client
) -> None:
    """kill -9 the state service while it restores 3000 keys; the next one finishes the restore."""
    keys = [f"bulk.k{n:04}" for n in range(3000)]
    state = StateClient(nc, prefix=prefix, settings=STATE, timeout=30)
    async with StateService(settings, STATE):
        await _write_all(state, {key: {"v": 1} for key in keys})
        info = await state.create_snapshot()
        await _write_all(state, {key: {"v": 2} for key in keys})
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "CORRAL_PREFIX": prefix,
        "CORRAL_STATE_EVENTS": "0",
        "CORRAL_STATE_MAX_VERSIONS": "5",
        "CORRAL_METRICS_PORT": "-1",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "corral.state", env=env, stderr=subprocess.DEVNULL
    )
    try:
        await _wait_for_service(state)
        async with await state.subscribe("bulk.>") as watch:
            restore = asyncio.create_task(state.restore_snapshot(info.id))
            await watch.next(timeout=30)  # the first write of the restore
            os.kill(process.pid, signal.SIGKILL)
        restore.cancel()
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
    partly = await state.direct.store.read_all()
    assert 0 < sum(value == b'{"v":1}' for value in partly[1].values()) < len(keys), "not killed midway"
    async with StateService(settings, STATE) as second:
        journal = await second.snapshots.restore_status()
        assert journal is not None
        assert (journal.snapshot, journal.status, journal.report.resumed) == (
            info.id,
            RestoreStatus.DONE,
            True,
        )
        _, values = await second.store.read_all()
        assert values == {key: b'{"v":1}' for key in keys}


async def _write_all(state: StateClient, values: dict[str, Any]) -> None:
    items = list(values.items())
    for start in range(0, len(items), 200):
        await asyncio.gather(*(state.direct.set(k, v) for k, v in items[start : start + 200]))


async def _wait_for_service(state: StateClient) -> None:
    for _ in range(150):
        try:
            await state.keys("nothing")
            return
        except Exception:
            await asyncio.sleep(0.1)
    raise AssertionError("python -m corral.state did not start serving")
