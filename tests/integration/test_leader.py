"""Leader election over KV `<prefix>_leases` against a real nats-server: exactly one leader,
fast handover on a clean stop, takeover after a leader dies, and never two leaders at once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.js import api

from corral.bus import BusSettings, connect
from corral.bus import request as bus_request
from corral.natsd import NatsServer
from corral.orchestrator.leader import LeaderEvent, Leadership
from corral.orchestrator.service import OrchestratorService
from corral.runtime import ServiceSettings
from corral.subjects import Subjects

# Renewed every second, valid 2.4 s after each: a loaded machine's stalls do not cost the lease.
TTL = 3.0


class Replica:
    """One Leadership on a connection of its own, as one orchestrator replica has."""

    def __init__(self, nc: Client, leadership: Leadership) -> None:
        self.nc = nc
        self.leadership = leadership
        self.changes: list[bool] = []

        async def record(leading: bool) -> None:
            self.changes.append(leading)

        leadership.on_change(record)


@pytest.fixture
async def replicas(nats_url: str, prefix: str) -> AsyncIterator[Callable[[str], Awaitable[Replica]]]:
    started: list[Replica] = []

    async def make(name: str, ttl: float = TTL) -> Replica:
        nc = await connect(BusSettings(servers=[nats_url], name=name))
        replica = Replica(nc, Leadership(nc.jetstream(), Subjects(prefix), name, ttl=ttl))
        await replica.leadership.start()
        started.append(replica)
        return replica

    yield make
    for replica in started:
        with contextlib.suppress(Exception):
            await replica.leadership.stop(step_down=False)
        with contextlib.suppress(Exception):
            await replica.nc.close()


class Sampler:
    """Looks at every replica every few milliseconds and remembers any moment with two leaders."""

    def __init__(self, group: list[Replica]) -> None:
        self.group = group
        self.overlaps: list[list[str]] = []
        self.samples = 0
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            leaders = [r.leadership.instance_id for r in self.group if r.leadership.is_leader]
            self.samples += 1
            if len(leaders) > 1:
                self.overlaps.append(leaders)
            await asyncio.sleep(0.002)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def leaders(group: list[Replica]) -> list[Replica]:
    return [r for r in group if r.leadership.is_leader]


async def test_three_replicas_elect_exactly_one_leader_that_all_can_name(
    replicas: Callable[[str], Awaitable[Replica]],
) -> None:
    group = [await replicas(f"r{i}") for i in range(3)]
    sampler = Sampler(group)
    await until(lambda: len(leaders(group)) == 1, 5.0, "one leader")
    leader = leaders(group)[0]
    await until(
        lambda: all(r.leadership.leader == leader.leadership.instance_id for r in group),
        5.0,
        "every replica names the leader",
    )
    # Renewals keep it for several ttls; nobody else ever leads meanwhile.
    await asyncio.sleep(TTL * 2.5)
    await sampler.stop()
    assert leaders(group) == [leader]
    assert sampler.overlaps == []
    assert leader.changes == [True]
    assert all(r.changes == [] for r in group if r is not leader)
    await asyncio.wait_for(leader.leadership.wait_until_leader(), 0.1)
    assert leader.leadership.snapshot()["is_leader"] is True


async def test_clean_stop_hands_over_before_the_lease_could_lapse(
    replicas: Callable[[str], Awaitable[Replica]],
) -> None:
    ttl = 5.0  # long, so a handover driven by the lease lapsing could not pass this test
    group = [await replicas("a", ttl), await replicas("b", ttl)]
    await until(lambda: len(leaders(group)) == 1, 10.0, "one leader")
    old = leaders(group)[0]
    standby = next(r for r in group if r is not old)
    sampler = Sampler(group)
    stopping = time.monotonic()
    await old.leadership.stop()
    took = await until(lambda: standby.leadership.is_leader, ttl, "the standby leads")
    took_total = time.monotonic() - stopping
    await sampler.stop()
    assert sampler.overlaps == []
    assert old.changes == [True, False]
    assert standby.changes == [True]
    # The step-down deleted the key and the standby's watch saw it: well under a poll period.
    assert took_total < standby.leadership.poll_interval, (took, took_total)
    assert standby.leadership.leader == standby.leadership.instance_id


async def test_a_leader_that_loses_nats_stops_leading_before_a_standby_takes_over(
    replicas: Callable[[str], Awaitable[Replica]],
) -> None:
    group = [await replicas(f"r{i}") for i in range(3)]
    await until(lambda: len(leaders(group)) == 1, 5.0, "one leader")
    old = leaders(group)[0]
    sampler = Sampler(group)
    await old.nc.close()  # abrupt: no step-down, the lease is left to lapse
    await until(lambda: not old.leadership.is_leader, TTL, "the cut-off leader gives up")
    await until(
        lambda: any(r.leadership.is_leader for r in group if r is not old), TTL * 3, "a standby leads"
    )
    await asyncio.sleep(TTL)  # and keeps leading, alone
    await sampler.stop()
    assert sampler.overlaps == [], sampler.overlaps
    assert sampler.samples > 100
    assert len(leaders(group)) == 1
    assert old.changes == [True, False]
    new = leaders(group)[0]
    assert new.changes == [True]
    assert all(r.leadership.leader == new.leadership.instance_id for r in group if r is not old)


async def test_stopping_without_step_down_leaves_the_lease_to_lapse(
    replicas: Callable[[str], Awaitable[Replica]],
) -> None:
    a = await replicas("a")
    await until(lambda: a.leadership.is_leader, 5.0, "a leads")
    b = await replicas("b")
    await until(lambda: b.leadership.leader == "a", 2.0, "b sees a")
    sampler = Sampler([a, b])
    stopped = time.monotonic()
    await a.leadership.stop(step_down=False)
    await until(lambda: b.leadership.is_leader, TTL * 3, "b takes over")
    await sampler.stop()
    # b judged the lapse on its own clock: it waited at least a ttl minus the renewal period.
    assert time.monotonic() - stopped >= TTL - a.leadership.renew_interval
    assert sampler.overlaps == []


@pytest.mark.chaos
async def test_through_a_server_outage_the_leader_gives_up_and_one_replica_leads_after(
    nats_server: NatsServer, prefix: str
) -> None:
    group = []
    for name in ("a", "b"):
        nc = await connect(BusSettings(servers=[nats_server.url], name=name))
        group.append(Replica(nc, Leadership(nc.jetstream(), Subjects(prefix), name, ttl=TTL)))
    a, b = group
    try:
        await a.leadership.start()
        await until(lambda: a.leadership.is_leader, 5.0, "a leads")
        await b.leadership.start()
        await until(lambda: b.leadership.leader == "a", 2.0, "b sees a")
        sampler = Sampler(group)
        nats_server.kill()  # nobody can renew or take over
        await until(lambda: not a.leadership.is_leader, TTL, "a gives up without NATS")
        await asyncio.sleep(TTL / 2)
        await asyncio.to_thread(nats_server.start)
        # Both come back. a may take back its own lease at once, and b may find it unrenewed
        # for a whole ttl: the CAS lets exactly one of them win.
        await until(lambda: len(leaders(group)) == 1, TTL * 4, "one leader again")
        await asyncio.sleep(TTL)
        await sampler.stop()
        assert sampler.overlaps == []
        assert len(leaders(group)) == 1
        assert a.changes[:2] == [True, False]
        winner = leaders(group)[0]
        assert winner.changes[-1] is True
        assert all(r.leadership.leader == winner.leadership.instance_id for r in group)
    finally:
        for replica in group:
            await replica.leadership.stop()
            await replica.nc.close()


async def test_leadership_changes_are_events_in_the_events_stream(
    replicas: Callable[[str], Awaitable[Replica]], nc: Client, prefix: str
) -> None:
    a = await replicas("a")
    await until(lambda: a.leadership.is_leader, 5.0, "a leads")
    b = await replicas("b")
    await a.leadership.stop()
    await until(lambda: b.leadership.is_leader, 5.0, "b leads")
    subjects = Subjects(prefix)
    sub = await nc.jetstream().subscribe(
        subjects.leader_event("orchestrator"),
        stream=subjects.events_stream,
        ordered_consumer=True,
        deliver_policy=api.DeliverPolicy.ALL,
    )
    found = [msgspec.json.decode((await sub.next_msg(timeout=5)).data, type=LeaderEvent) for _ in range(3)]
    await sub.unsubscribe()
    assert [(e.instance, e.leader) for e in found] == [("a", True), ("a", False), ("b", True)]
    assert found[1].reason == "stepping down"
    assert found[0].term == found[1].term != found[2].term


async def test_a_slow_callback_does_not_delay_renewals(
    replicas: Callable[[str], Awaitable[Replica]],
) -> None:
    a = await replicas("a")
    release = asyncio.Event()

    async def slow(leading: bool) -> None:
        await release.wait()

    a.leadership.on_change(slow)
    await until(lambda: a.leadership.is_leader, 5.0, "a leads")
    await asyncio.sleep(TTL * 2)
    assert a.leadership.is_leader  # renewed all along, though the callback has not returned
    release.set()


async def status_of(nc: Client, prefix: str) -> dict[str, Any]:
    msg = await bus_request(nc, f"{prefix}.orchestrator.status", timeout=5)
    payload: dict[str, Any] = msgspec.json.decode(msg.data)["payload"]
    return payload


async def test_orchestrator_replicas_report_one_leader_in_status_and_hand_over_on_stop(
    settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    first = OrchestratorService(settings, lease_ttl=TTL)
    second = OrchestratorService(settings, lease_ttl=TTL)
    async with first:
        await until(lambda: first.leadership is not None and first.leadership.is_leader, 5.0, "first leads")
        await second.start()
        try:
            assert second.leadership is not None
            assert first.leadership is not None
            await until(lambda: second.leadership.leader == first.leadership.instance_id, 3.0, "second sees")
            # Whichever replica answers, status names the same leader.
            for _ in range(4):
                status = (await status_of(nc, prefix))["leadership"]
                assert status["leader"] == first.leadership.instance_id
                assert status["lease"] == "orchestrator"
            assert not second.leadership.is_leader
        except BaseException:
            await second.stop()
            raise
    assert second.leadership is not None
    await until(lambda: second.leadership.is_leader, TTL, "second leads after first stopped")
    assert (await status_of(nc, prefix))["leadership"]["leader"] == second.leadership.instance_id
    await second.stop()


async def test_a_renewal_that_landed_unseen_does_not_block_the_step_down(
    replicas: Callable[..., Awaitable[Replica]], nc: Client, prefix: str
) -> None:
    ttl = 5.0
    a = await replicas("a", ttl)
    await until(lambda: a.leadership.is_leader, 5.0, "a leads")
    b = await replicas("b", ttl)
    # The key moves on with a's own lease, as when a renewal lands but its reply is lost.
    kv = await nc.jetstream().key_value(f"{prefix}_leases")
    entry = await kv.get("orchestrator")
    assert entry.value is not None
    await kv.update("orchestrator", entry.value, last=entry.revision)
    await a.leadership.stop()
    took = await until(lambda: b.leadership.is_leader, ttl, "b leads")
    assert took < b.leadership.poll_interval  # released, not lapsed
