"""Direct reply on the call path (corral.runtime.direct): an SDK module answers the caller of
`<prefix>.send.<module>` itself and reports the outcome; the orchestrator settles breaker,
bulkhead and statistics from the report. Every test counts the messages that reach the
caller's inbox, so a second answer cannot hide behind nats-py's request (which keeps the first)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from corral.bus import BusSettings, connect
from corral.natsd import NatsServer
from corral.orchestrator.breaker import BreakerState
from corral.orchestrator.service import OrchestratorService
from corral.policy import BreakerConfig, BulkheadConfig, CallPolicy
from corral.protocol import DIRECT_REPLY_GRACE, DIRECT_REPLY_HEADER
from corral.runtime import Reply, Service, ServiceSettings
from corral.runtime.direct import DIRECT_REPLY_METADATA
from corral.sdk import Module


@dataclass
class Knobs:
    slow: float = 0.0
    finished: int = 0  # handler calls that ran to the end
    release: asyncio.Event = field(default_factory=asyncio.Event)


def build_module(knobs: Knobs) -> Module:
    module = Module("direct")

    @module.handler("echo")
    async def echo(payload: dict[str, Any]) -> dict[str, Any]:
        if knobs.slow:
            await asyncio.sleep(knobs.slow)
        knobs.finished += 1
        return payload

    @module.handler("strict")
    async def strict(payload: dict[str, int]) -> int:
        return sum(payload.values())

    @module.handler("boom")
    async def boom(payload: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    return module


class ImpostorModule(Service):
    """A module instance that advertises direct reply but does not honour it: it answers the
    orchestrator's inbox as any plain NATS responder would (`mute`: it never answers at all)."""

    role = "module"

    def __init__(self, settings: ServiceSettings, *, mute: bool) -> None:
        super().__init__("impostor", settings=settings)
        self.mute = mute
        self.seen: list[Msg] = []
        self.never = asyncio.Event()

    async def setup(self) -> None:
        self.add_endpoint(
            "echo",
            self.subjects.module("impostor", "echo"),
            self._echo,
            metadata={DIRECT_REPLY_METADATA: "true"},
        )

    async def _echo(self, msg: Msg) -> Reply:
        self.seen.append(msg)
        if self.mute:
            await self.never.wait()
        return Reply(
            json.dumps({"type": "echo:success", "payload": "classic", "success": True}).encode(), None, True
        )


POLICY = CallPolicy(
    timeout=5.0,
    breaker=BreakerConfig(
        window_size=10, minimum_calls=10, consecutive_failures=3, wait_open=1.0, wait_max=2.0
    ),
    bulkhead=BulkheadConfig(max_concurrent=256, max_queue=256),
)


@dataclass
class System:
    prefix: str
    nc: Client
    knobs: Knobs
    orchestrator: OrchestratorService

    async def learn(self, module: str, direct: bool = True) -> None:
        """Make the orchestrator's catalog current (it otherwise learns in the background)."""
        catalog = self.orchestrator.catalog
        assert catalog is not None
        await catalog.refresh()
        assert catalog.answers_directly(module) is direct

    async def send(
        self, module: str, type_: str, payload: Any, *, listen: float = 0.0, **envelope: Any
    ) -> list[dict[str, Any]]:
        """Send through the orchestrator; every message that reaches the reply inbox, decoded,
        within 10 s for the first and `listen` seconds more for any second one."""
        inbox = self.nc.new_inbox()
        got: asyncio.Queue[Msg] = asyncio.Queue()
        sub = await self.nc.subscribe(inbox, cb=got.put)
        body = json.dumps({"type": type_, "payload": payload, **envelope}).encode()
        await self.nc.publish(f"{self.prefix}.send.{module}", body, reply=inbox)
        replies = [await asyncio.wait_for(got.get(), 10)]
        await asyncio.sleep(listen)
        while not got.empty():
            replies.append(got.get_nowait())
        await sub.unsubscribe()
        return [json.loads(m.data) for m in replies]

    async def settled(self) -> None:
        """Wait until every forwarded call has its outcome (reports trail the replies a little)."""
        assert self.orchestrator.mux is not None
        for _ in range(200):
            if self.orchestrator.mux.in_flight == 0:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{self.orchestrator.mux.in_flight} calls never settled")

    def stats(self, module: str) -> dict[str, Any]:
        assert self.orchestrator.router is not None
        return self.orchestrator.router.routes[module].stats.as_dict()


@pytest.fixture
async def system(settings: ServiceSettings, nc: Client) -> AsyncIterator[System]:
    knobs = Knobs()
    orchestrator = OrchestratorService(settings, policies={"direct": POLICY, "impostor": POLICY})
    async with orchestrator, build_module(knobs).service(settings) as module:
        await module.nc.flush()
        yield System(settings.prefix, nc, knobs, orchestrator)


async def test_outcomes_are_counted_exactly_once_under_concurrency(system: System) -> None:
    await system.learn("direct")
    assert system.orchestrator.mux is not None
    assert system.orchestrator.fast is not None
    kinds = ["echo", "strict", "boom", "echo"] * 50  # 100 ok, 50 VALIDATION, 50 MODULE_ERROR

    async def one(i: int, type_: str) -> list[dict[str, Any]]:
        return await system.send("direct", type_, {"i": i} if type_ != "strict" else {"a": "x"})

    answers = await asyncio.gather(*(one(i, t) for i, t in enumerate(kinds)))
    await system.settled()

    assert all(len(a) == 1 for a in answers)  # one answer per call
    codes = [None if a[0]["success"] else a[0]["payload"]["code"] for a in answers]
    assert codes.count(None) == 100
    assert codes.count("VALIDATION") == 50
    assert codes.count("MODULE_ERROR") == 50
    assert [a[0]["payload"] for a, t in zip(answers, kinds, strict=True) if t == "echo"] == [
        {"i": i} for i, t in enumerate(kinds) if t == "echo"
    ]
    stats = system.stats("direct")
    assert stats["calls"] == 200
    assert stats["successes"] == 100
    assert stats["errors"] == {"VALIDATION": 50, "MODULE_ERROR": 50}
    assert system.orchestrator.mux.reported == 200  # every call was settled by a report ...
    assert system.orchestrator.fast.taken >= 190  # ... and nearly all took the fast lane
    assert system.orchestrator.router is not None
    assert system.orchestrator.router.routes["direct"].bulkhead.in_flight == 0


async def test_module_answers_timeout_once_and_drops_its_late_result(system: System) -> None:
    await system.learn("direct")
    system.knobs.slow = 0.4
    answers = await system.send("direct", "echo", {"late": True}, timeout=0.1, listen=0.6)
    assert len(answers) == 1  # the late result (at 0.4 s) never reaches the caller
    assert answers[0]["payload"]["code"] == "TIMEOUT"
    assert answers[0]["payload"]["errors"] == [
        f"{system.prefix}.mod.direct.echo did not finish within the call's timeout of 0.1s"
    ]
    assert system.knobs.finished == 1  # the handler ran to the end, as without direct reply
    await system.settled()
    assert system.stats("direct")["errors"] == {"TIMEOUT": 1}
    assert system.orchestrator.board is not None
    breaker = system.orchestrator.board.breakers["direct"]
    assert breaker._consecutive == 1  # the timeout counted for the breaker


async def test_timeouts_open_the_breaker_and_a_probe_closes_it_before_the_next_call(system: System) -> None:
    await system.learn("direct")
    system.knobs.slow = 0.3
    for _ in range(3):
        (answer,) = await system.send("direct", "echo", {}, timeout=0.05)
        assert answer["payload"]["code"] == "TIMEOUT"
    await system.settled()
    assert system.orchestrator.board is not None
    breaker = system.orchestrator.board.breakers["direct"]
    assert breaker.state is BreakerState.OPEN
    (refused,) = await system.send("direct", "echo", {})
    assert refused["payload"]["code"] == "CIRCUIT_OPEN"

    system.knobs.slow = 0.0
    await asyncio.sleep(1.05)  # wait_open
    (probe,) = await system.send("direct", "echo", {"probe": 1})
    assert probe["success"] is True
    # The report leaves the module before the reply, so the orchestrator has it before any
    # call the caller makes after seeing the reply: the next call finds the breaker closed.
    (after,) = await system.send("direct", "echo", {"next": 1})
    assert after["payload"] == {"next": 1}
    assert breaker.state is BreakerState.CLOSED


async def test_the_orchestrator_answers_when_a_direct_module_never_does(
    system: System, settings: ServiceSettings
) -> None:
    async with ImpostorModule(settings, mute=True) as mute:
        await system.learn("impostor")
        answers = await system.send("impostor", "echo", {}, timeout=0.1, listen=0.3)
        mute.never.set()
    assert len(mute.seen) == 1
    assert DIRECT_REPLY_HEADER in (mute.seen[0].headers or {})
    assert len(answers) == 1
    assert answers[0]["payload"]["code"] == "TIMEOUT"
    assert answers[0]["payload"]["errors"] == [
        f"module 'impostor' did not answer 'echo' within 0.1s, nor reported an outcome "
        f"{DIRECT_REPLY_GRACE:g}s after"
    ]
    await system.settled()
    assert system.stats("impostor")["errors"] == {"TIMEOUT": 1}


async def test_an_instance_that_ignores_the_header_is_answered_through_the_orchestrator(
    system: System, settings: ServiceSettings
) -> None:
    async with ImpostorModule(settings, mute=False) as classic:
        await system.learn("impostor")
        answers = await system.send("impostor", "echo", {}, listen=0.2)
    assert len(classic.seen) == 1
    assert len(answers) == 1
    assert answers[0]["payload"] == "classic"
    await system.settled()
    assert system.stats("impostor")["successes"] == 1
    assert system.orchestrator.mux is not None
    assert system.orchestrator.mux.reported == 0


async def test_modules_that_do_not_advertise_it_get_no_direct_reply_header(system: System) -> None:
    seen: list[Msg] = []

    async def plain_responder(msg: Msg) -> None:  # an `external` module: plain nats-py
        seen.append(msg)
        await msg.respond(json.dumps({"type": "echo:success", "payload": 7, "success": True}).encode())

    sub = await system.nc.subscribe(f"{system.prefix}.mod.plain.echo", cb=plain_responder)
    await system.nc.flush()
    await system.learn("plain", direct=False)
    answers = await system.send("plain", "echo", {}, listen=0.1)
    await sub.unsubscribe()
    assert [a["payload"] for a in answers] == [7]
    assert not (seen[0].headers or {}).get(DIRECT_REPLY_HEADER)


async def test_no_responders_after_the_module_left_is_answered_once(
    system: System, settings: ServiceSettings
) -> None:
    async with ImpostorModule(settings, mute=False):
        await system.learn("impostor")
        (first,) = await system.send("impostor", "echo", {})
        assert first["payload"] == "classic"
    # Gone, but the catalog still says it answers directly: the server's no-responders status
    # goes to the orchestrator's inbox (the forward's reply subject), not to the caller. (The
    # wait: no-responders is explained from a discovery at most a second old.)
    await asyncio.sleep(1.05)
    assert system.orchestrator.catalog is not None
    assert system.orchestrator.catalog.answers_directly("impostor")
    answers = await system.send("impostor", "echo", {}, listen=0.2)
    assert len(answers) == 1
    assert answers[0]["payload"]["code"] == "UNAVAILABLE"
    assert answers[0]["payload"]["errors"] == ["module 'impostor' has no running instance"]


async def test_turned_off_every_answer_goes_through_the_orchestrator(
    settings: ServiceSettings, nc: Client
) -> None:
    knobs = Knobs()
    orchestrator = OrchestratorService(settings, policies={"direct": POLICY}, direct_reply=False)
    async with orchestrator, build_module(knobs).service(settings):
        system = System(settings.prefix, nc, knobs, orchestrator)
        await system.learn("direct", direct=False)
        answers = await system.send("direct", "echo", {"n": 1}, listen=0.1)
    assert [a["payload"] for a in answers] == [{"n": 1}]
    assert orchestrator.mux is not None
    assert orchestrator.mux.reported == 0
    assert orchestrator.fast is not None
    assert orchestrator.fast.taken == 0


@pytest.mark.chaos
async def test_a_call_in_flight_across_a_server_restart_is_answered_and_counted_once(
    nats_server: NatsServer, prefix: str
) -> None:
    bus = BusSettings(servers=[nats_server.url], reconnect_time_wait=0.1, connect_attempts=5)
    settings = ServiceSettings(prefix=prefix, bus=bus, metrics_port=-1, heartbeat_interval=0.5)
    knobs = Knobs()
    module = Module("held")

    @module.handler("hold")
    async def hold(payload: dict[str, Any]) -> dict[str, Any]:
        await knobs.release.wait()
        return payload

    orchestrator = OrchestratorService(settings, policies={"held": POLICY})
    caller = await connect(msgspec.structs.replace(bus, name="restart-caller"))
    try:
        async with orchestrator, module.service(settings) as held:
            system = System(prefix, caller, knobs, orchestrator)
            await system.learn("held")
            inbox = caller.new_inbox()
            got: asyncio.Queue[Msg] = asyncio.Queue()
            await caller.subscribe(inbox, cb=got.put)
            body = json.dumps({"type": "hold", "payload": {"n": 1}, "timeout": 8}).encode()
            await caller.publish(f"{prefix}.send.held", body, reply=inbox)
            await caller.flush()
            for _ in range(100):  # the module holds the call
                if held.in_flight:
                    break
                await asyncio.sleep(0.02)
            nats_server.kill()
            await asyncio.sleep(0.3)
            await asyncio.to_thread(nats_server.start)
            for client in (caller, orchestrator.nc, held.nc):
                for _ in range(200):
                    if client.is_connected:
                        break
                    await asyncio.sleep(0.05)
                await client.flush()
            knobs.release.set()  # answered after everyone is back: the report gets through
            first = await asyncio.wait_for(got.get(), 10)
            await system.settled()
            await asyncio.sleep(0.3)
            assert got.empty()  # no second answer
            assert json.loads(first.data)["payload"] == {"n": 1}
            stats = system.stats("held")
            assert (stats["calls"], stats["successes"]) == (1, 1)
            assert orchestrator.mux is not None
            assert orchestrator.mux.reported == 1  # settled by the module's report
            assert orchestrator.router is not None
            assert orchestrator.router.routes["held"].bulkhead.in_flight == 0
    finally:
        await caller.close()


async def test_a_full_bulkhead_queues_direct_calls_by_priority(settings: ServiceSettings, nc: Client) -> None:
    gate, entered = asyncio.Event(), asyncio.Event()
    order: list[int] = []
    module = Module("narrow")

    @module.handler("work")
    async def work(payload: dict[str, int]) -> int:
        order.append(payload["p"])
        entered.set()
        await gate.wait()
        return payload["p"]

    narrow = CallPolicy(timeout=5.0, bulkhead=BulkheadConfig(max_concurrent=1, max_queue=3))
    orchestrator = OrchestratorService(settings, policies={"narrow": narrow})
    async with orchestrator, module.service(settings):
        system = System(settings.prefix, nc, Knobs(), orchestrator)
        await system.learn("narrow")
        holder = asyncio.create_task(system.send("narrow", "work", {"p": 2}))
        await asyncio.wait_for(entered.wait(), 5)
        low = asyncio.create_task(system.send("narrow", "work", {"p": 4}, priority=4))
        await asyncio.sleep(0.05)
        high = asyncio.create_task(system.send("narrow", "work", {"p": 0}, priority=0))
        expiring = asyncio.create_task(system.send("narrow", "work", {"p": 1}, timeout=1.0))
        await asyncio.sleep(0.05)
        (full,) = await system.send("narrow", "work", {"p": 9})  # three queued: no room
        (expired,) = await expiring
        gate.set()
        answers = [await t for t in (holder, high, low)]
        await system.settled()
    assert full["payload"]["code"] == "OVERLOADED"
    assert expired["payload"]["code"] == "TIMEOUT"
    assert expired["payload"]["errors"][0].startswith("module 'narrow': no free call slot within 1s")
    assert [a[0]["payload"] for a in answers] == [2, 0, 4]
    assert order == [2, 0, 4]  # the critical call overtook the background one; 1 never ran
    assert all(len(a) == 1 for a in answers)
    assert orchestrator.fast is not None
    assert orchestrator.fast.taken >= 4
    stats = system.stats("narrow")
    assert (stats["calls"], stats["successes"]) == (5, 3)
    assert stats["errors"] == {"OVERLOADED": 1, "TIMEOUT": 1}
    assert orchestrator.board is not None
    assert orchestrator.board.breakers["narrow"]._consecutive == 0  # our queue, not the module


async def test_a_forged_header_cannot_make_a_module_publish_to_another_subject(system: System) -> None:
    """Anyone allowed to publish to `<prefix>.mod.>` could name any subject in the header: the
    module answers only an inbox directly, and otherwise the request's own reply subject."""
    prefix, nc = system.prefix, system.nc
    diverted: list[Msg] = []

    async def divert(msg: Msg) -> None:
        diverted.append(msg)

    await nc.subscribe(f"{prefix}.state.set", cb=divert)
    await nc.flush()
    for target in (f"{prefix}.state.set", f"{prefix}.>", "_INBOX.*"):
        reply = await nc.request(
            f"{prefix}.mod.direct.echo",
            b'{"x": 1}',
            timeout=5,
            headers={DIRECT_REPLY_HEADER: f"{target} 5"},
        )
        assert json.loads(reply.data)["payload"] == {"x": 1}  # answered on the request's inbox
    await asyncio.sleep(0.2)
    assert diverted == []


async def test_a_caller_whose_reply_subject_is_no_inbox_is_answered_once_through_the_orchestrator(
    system: System,
) -> None:
    await system.learn("direct")
    prefix, nc = system.prefix, system.nc
    got: asyncio.Queue[Msg] = asyncio.Queue()
    sub = await nc.subscribe(f"{prefix}.replies.mine", cb=got.put)
    await nc.flush()
    body = b'{"type": "echo", "payload": {"n": 7}}'
    await nc.publish(f"{prefix}.send.direct", body, reply=f"{prefix}.replies.mine")
    first = await asyncio.wait_for(got.get(), 10)
    await asyncio.sleep(0.3)
    assert got.empty()  # exactly one answer
    await sub.unsubscribe()
    assert json.loads(first.data)["payload"] == {"n": 7}
    await system.settled()
    assert system.stats("direct")["successes"] == 1
