"""The SDK's `StateClient`: typed results and errors, the StateManager-style names, the
compare-and-set helper, and the direct KV path, against a running state service."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from corral.errors import CallTimeoutError, ConflictError, NotFoundError, UnavailableError, ValidationError
from corral.runtime import ServiceSettings
from corral.sdk.state import StateClient
from corral.state.entries import Operation
from corral.state.service import StateService
from corral.state.settings import StateSettings

STATE = StateSettings(max_versions=4, max_value_bytes=2048)


@pytest.fixture
async def service(settings: ServiceSettings) -> AsyncIterator[StateService]:
    async with StateService(settings, STATE) as running:
        yield running


@pytest.fixture
def state(nc: Client, prefix: str) -> StateClient:
    return StateClient(nc, prefix=prefix, settings=STATE)


async def test_verbs_return_typed_results(service: StateService, state: StateClient) -> None:
    revision = await state.set("app.version", "1.0.0")
    entry = await state.get("app.version")
    assert (entry.key, entry.value, entry.revision) == ("app.version", "1.0.0", revision)
    await state.set("app.name", {"n": 1})
    assert await state.keys("app.*") == ["app.name", "app.version"]
    many = await state.get_many(["app.name", "missing", "app.version"])
    assert {k: e.value for k, e in many.items()} == {"app.name": {"n": 1}, "app.version": "1.0.0"}
    assert await state.delete("app.name") is True
    assert await state.delete("app.name") is False
    versions = await state.history("app.name")
    assert [v.operation for v in versions] == [Operation.SET, Operation.DELETE]


async def test_errors_are_typed(service: StateService, state: StateClient) -> None:
    with pytest.raises(NotFoundError, match=re.escape("key 'nope' has no value")):
        await state.get("nope")
    first = await state.set("k", 1)
    await state.set("k", 2)
    with pytest.raises(ConflictError, match=re.escape(f"key 'k' was expected at revision {first}")):
        await state.set("k", 3, expected_revision=first)
    with pytest.raises(ValidationError, match=re.escape("key 'a b' contains ' ' at position 1")):
        await state.get("a b")


async def test_values_are_checked_before_they_are_sent(service: StateService, state: StateClient) -> None:
    with pytest.raises(ValidationError, match=re.escape("value at `$.when` is of type set")):
        await state.set("k", {"when": {1}})
    with pytest.raises(
        ValidationError, match=re.escape("value for 'k' is 2052 bytes as JSON, over the limit of 2048")
    ):
        await state.set("k", "x" * 2050)
    with pytest.raises(
        ValidationError, match=re.escape("key is empty: use a dotted path such as 'app.version'")
    ):
        await state.set("", 1)


async def test_state_manager_names(service: StateService, state: StateClient) -> None:
    await state.set_state("app.version", "1.0.0")
    await state.set_state("app.version", "1.1.0")
    assert await state.get_state("app.version") == "1.1.0"
    assert await state.get_state("app.missing", default="none") == "none"
    versions = await state.get_state_versions("app.version")
    assert [v.value for v in versions] == ["1.0.0", "1.1.0"]
    await state.restore_state_version("app.version", versions[0].revision)
    assert await state.get_state("app.version") == "1.0.0"
    info = await state.create_snapshot(metadata={"reason": "test"})
    await state.set_state("app.version", "9")
    report = await state.restore_snapshot(info.id)
    assert report.rewritten == ["app.version"]
    assert await state.get_state("app.version") == "1.0.0"
    assert [s.id for s in await state.list_snapshots()] == [info.id]
    assert await state.delete_snapshot(info.id) is True


async def test_update_retries_compare_and_set_until_it_wins(
    service: StateService, state: StateClient
) -> None:
    async def bump(times: int) -> None:
        for _ in range(times):
            await state.update("hits", lambda n: (n or 0) + 1)

    await asyncio.gather(*(bump(25) for _ in range(4)))
    assert await state.get_state("hits") == 100


async def test_direct_path_reads_what_the_service_writes_and_back(
    service: StateService, state: StateClient
) -> None:
    revision = await state.set("shared", {"a": 1})
    entry = await state.direct.get("shared")
    assert (entry.value, entry.revision) == ({"a": 1}, revision)
    direct_revision = await state.direct.set("shared", [1, 2], expected_revision=revision)
    assert (await state.get("shared")).revision == direct_revision
    with pytest.raises(ConflictError):
        await state.direct.set("shared", 3, expected_revision=revision)
    assert await state.direct.delete("shared") is True
    with pytest.raises(NotFoundError):
        await state.direct.get("shared")
    with pytest.raises(ValidationError, match=re.escape("ttl 0.5 is under 1 second")):
        await state.direct.set("shared", 1, ttl=0.5)


async def test_no_service_is_unavailable(nc: Client, prefix: str) -> None:
    state = StateClient(nc, prefix=prefix, timeout=1.0)
    with pytest.raises(UnavailableError, match=re.escape(f"no state service answers {prefix}.state.get")):
        await state.get("k")
    with pytest.raises(UnavailableError, match="JetStream did not complete the request"):
        await state.direct.get("k")  # the bucket does not exist until a state service starts


async def test_a_service_that_does_not_answer_in_time_is_a_timeout(nc: Client, prefix: str) -> None:
    sub = await nc.subscribe(f"{prefix}.state.get")  # takes the request, answers nothing
    try:
        with pytest.raises(CallTimeoutError, match=re.escape(f"no reply to {prefix}.state.get within 0.3s")):
            await StateClient(nc, prefix=prefix, timeout=0.3).get("k")
    finally:
        await sub.unsubscribe()
