"""`<prefix>.evt.state.changed`: every change of the state bucket lands in the events stream,
once, in order, also changes made while no state service was running."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.js import api

from corral.runtime import ServiceSettings
from corral.sdk.state import StateClient
from corral.state.events import REVISION_HEADER
from corral.state.service import StateService
from corral.state.settings import StateSettings

STATE = StateSettings(max_versions=10)


async def events(nc: Client, prefix: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The first `count` state events of the stream, and a check that there are no more."""
    js = nc.jetstream()
    stream = f"{prefix.upper()}_EVENTS"
    subject = f"{prefix}.evt.state.changed"
    sub = await js.subscribe(
        subject, stream=stream, ordered_consumer=True, deliver_policy=api.DeliverPolicy.ALL
    )
    try:
        found = []
        for _ in range(count):
            msg = await sub.next_msg(timeout=timeout)
            event = msgspec.json.decode(msg.data)
            assert (msg.headers or {}).get(REVISION_HEADER) == str(event["revision"])
            found.append(event)
        await asyncio.sleep(0.3)
        assert sub.pending_msgs == 0, "more events than changes"
        return found
    finally:
        await sub.unsubscribe()


def brief(found: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(e["key"], e["old_value"], e["new_value"], e["operation"]) for e in found]


async def test_every_change_is_an_event(settings: ServiceSettings, nc: Client, prefix: str) -> None:
    state = StateClient(nc, prefix=prefix, settings=STATE)
    async with StateService(settings, STATE):
        await state.set("app.version", "1.0")
        await state.set("app.version", "1.1")
        await state.delete("app.version")
        await state.direct.set("app.direct", {"via": "kv"})  # around the service: still an event
        found = await events(nc, prefix, 4)
    assert brief(found) == [
        ("app.version", None, "1.0", "set"),
        ("app.version", "1.0", "1.1", "set"),
        ("app.version", "1.1", None, "delete"),
        ("app.direct", None, {"via": "kv"}, "set"),
    ]
    revisions = [e["revision"] for e in found]
    assert revisions == sorted(revisions)


async def test_changes_made_while_the_service_was_down_are_published_when_it_returns(
    settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    state = StateClient(nc, prefix=prefix, settings=STATE)
    async with StateService(settings, STATE):
        await state.set("k", 1)
        await events(nc, prefix, 1)
    await state.direct.set("k", 2)  # no state service runs now
    await state.direct.set("other", "x")
    async with StateService(settings, STATE):
        found = await events(nc, prefix, 3)
    assert brief(found) == [("k", None, 1, "set"), ("k", 1, 2, "set"), ("other", None, "x", "set")]


async def test_two_replicas_publish_each_change_once(
    settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    state = StateClient(nc, prefix=prefix, settings=STATE)
    second = msgspec.structs.replace(settings, instance=f"{settings.instance}-2")
    async with StateService(settings, STATE), StateService(second, STATE):
        for n in range(5):
            await state.set("shared", n)
        found = await events(nc, prefix, 5)
    assert [e["new_value"] for e in found] == [0, 1, 2, 3, 4]


async def test_events_can_be_turned_off(settings: ServiceSettings, nc: Client, prefix: str) -> None:
    state = StateClient(nc, prefix=prefix, settings=STATE)
    quiet = StateSettings(events=False)
    async with StateService(settings, quiet) as service:
        await state.set("k", 1)
        assert service.events is None
    streams = [info.config.name for info in await nc.jetstream().streams_info()]
    assert f"{prefix.upper()}_EVENTS" not in streams


async def test_a_burst_faster_than_publishing_loses_no_event(
    settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    """Eight keys rewritten 250 times each as fast as possible, with only 3 revisions kept per key:
    the forwarder reads ahead of its publishing, so no change is removed before it is read."""
    short = StateSettings(max_versions=3)
    state = StateClient(nc, prefix=prefix, settings=short)

    async def writer(key: str) -> None:
        for n in range(250):
            await state.direct.set(key, n)

    async with StateService(settings, short):
        await asyncio.gather(*(writer(f"burst.k{i}") for i in range(8)))
        found = await events(nc, prefix, 2000, timeout=20)
    for i in range(8):
        mine = [e for e in found if e["key"] == f"burst.k{i}"]
        assert [e["new_value"] for e in mine] == list(range(250))
        assert [e["old_value"] for e in mine] == [None, *range(249)]
