"""Concurrent writers with compare-and-set never lose an update."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from corral.bus import BusSettings, connect
from corral.errors import ConflictError, NotFoundError
from corral.runtime import ServiceSettings
from corral.sdk.state import StateClient
from corral.state.service import StateService
from corral.state.settings import StateSettings

STATE = StateSettings(events=False)
WRITERS = 8
INCREMENTS = 500


@pytest.fixture
async def service(settings: ServiceSettings) -> AsyncIterator[StateService]:
    async with StateService(settings, STATE) as running:
        yield running


async def increment(state: StateClient, key: str, times: int) -> int:
    """Add one `times` times with compare-and-set; returns how many attempts lost a race."""
    conflicts = 0
    done = 0
    while done < times:
        try:
            entry = await state.get(key)
            value, revision = entry.value, entry.revision
        except NotFoundError:
            value, revision = 0, 0
        try:
            await state.set(key, value + 1, expected_revision=revision)
        except ConflictError:
            conflicts += 1
            await asyncio.sleep(random.uniform(0, 0.03))  # back off, as CAS loops do
            continue
        done += 1
    return conflicts


@pytest.mark.slow
async def test_eight_writers_incrementing_one_counter_end_at_4000(
    service: StateService, nats_url: str, prefix: str, nc: Client
) -> None:
    connections = [await connect(BusSettings(servers=[nats_url])) for _ in range(WRITERS)]
    try:
        clients = [StateClient(c, prefix=prefix, settings=STATE) for c in connections]
        conflicts = await asyncio.gather(*(increment(c, "counter", INCREMENTS) for c in clients))
    finally:
        for connection in connections:
            await connection.close()
    state = StateClient(nc, prefix=prefix, settings=STATE)
    assert await state.get_state("counter") == WRITERS * INCREMENTS
    assert sum(conflicts) > 0  # the writers did race; the test would prove nothing otherwise
    history = await state.history("counter")
    assert [v.value for v in history] == list(range(WRITERS * INCREMENTS - 9, WRITERS * INCREMENTS + 1))


async def test_plain_sets_without_compare_and_set_do_lose_updates(
    service: StateService, nc: Client, prefix: str
) -> None:
    """The control: the same race without expected_revision ends below the true count."""
    state = StateClient(nc, prefix=prefix, settings=STATE)
    await state.set("racy", 0)

    async def blind(times: int) -> None:
        for _ in range(times):
            value = (await state.get("racy")).value
            await state.set("racy", value + 1)

    await asyncio.gather(*(blind(25) for _ in range(WRITERS)))
    assert await state.get_state("racy") < WRITERS * 25
