"""The orchestrator's call path against a real nats-server: breakers, bulkheads, priorities,
timeouts, retries, statistics and subscription by type."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client

from corral.orchestrator.breaker import BreakerState
from corral.orchestrator.service import OrchestratorService
from corral.policy import BreakerConfig, BulkheadConfig, CallPolicy
from corral.runtime import ServiceSettings
from corral.sdk import Client as CorralClient
from corral.sdk import Module
from corral.sdk.client import MessageEvent


@dataclass
class Controls:
    """Knobs the test module's handlers obey."""

    slow: float = 0.0
    fail: bool = False
    flaky_left: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    entered: asyncio.Event = field(default_factory=asyncio.Event)  # a gated call holds the slot
    order: list[int] = field(default_factory=list)
    calls: int = 0


def build_module(controls: Controls) -> Module:
    module = Module("callee")

    @module.handler("work")
    async def work(payload: dict[str, Any]) -> dict[str, Any]:
        controls.calls += 1
        if controls.slow:
            await asyncio.sleep(controls.slow)
        if controls.fail:
            raise RuntimeError("callee is broken")
        return payload

    @module.handler("strict")
    async def strict(payload: dict[str, int]) -> int:
        return sum(payload.values())

    @module.handler("gated")
    async def gated(payload: dict[str, int]) -> int:
        controls.order.append(payload["priority"])
        controls.entered.set()
        await controls.gate.wait()
        return payload["priority"]

    @module.handler("flaky", idempotent=True)
    async def flaky(payload: dict[str, Any]) -> str:
        controls.calls += 1
        if controls.flaky_left > 0:
            controls.flaky_left -= 1
            raise RuntimeError("not yet")
        return "done"

    @module.handler("flaky_unsafe")
    async def flaky_unsafe(payload: dict[str, Any]) -> str:
        return "done"

    return module


POLICY = CallPolicy(
    timeout=2.0,
    breaker=BreakerConfig(
        window_size=10,
        minimum_calls=10,
        consecutive_failures=3,
        wait_open=1.5,  # long enough that no stall of a loaded machine lets a refused call through
        wait_max=4.0,
        max_half_open=5.0,
    ),
    bulkhead=BulkheadConfig(max_concurrent=1, max_queue=3),
)


@dataclass
class System:
    prefix: str
    nc: Client
    controls: Controls
    orchestrator: OrchestratorService

    async def send(self, type_: str, payload: Any, **envelope: Any) -> dict[str, Any]:
        body = json.dumps({"type": type_, "payload": payload, **envelope}).encode()
        msg = await self.nc.request(f"{self.prefix}.send.callee", body, timeout=10)
        reply: dict[str, Any] = json.loads(msg.data)
        return reply

    async def ask(self, verb: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else b""
        msg = await self.nc.request(f"{self.prefix}.orchestrator.{verb}", data, timeout=10)
        reply = json.loads(msg.data)
        assert reply["success"], reply
        return reply["payload"]


@pytest.fixture
async def system(settings: ServiceSettings, nc: Client) -> AsyncIterator[System]:
    controls = Controls()
    orchestrator = OrchestratorService(settings, policies={"callee": POLICY})
    async with orchestrator, build_module(controls).service(settings) as module:
        await module.nc.flush()
        await orchestrator.nc.flush()
        yield System(settings.prefix, nc, controls, orchestrator)
        controls.gate.set()


def code_of(reply: dict[str, Any]) -> str | None:
    return None if reply["success"] else reply["payload"]["code"]


async def test_slow_module_times_out_opens_the_breaker_and_recovers(system: System) -> None:
    system.controls.slow = 0.5
    codes = [code_of(await system.send("work", {"n": i}, timeout=0.1)) for i in range(3)]
    assert codes == ["TIMEOUT"] * 3
    assert system.orchestrator.board is not None
    assert system.orchestrator.board.breakers["callee"].state is BreakerState.OPEN

    system.controls.calls = 0
    reply = await system.send("work", {"n": 9})
    assert code_of(reply) == "CIRCUIT_OPEN"
    assert reply["payload"]["errors"][0].startswith(
        "circuit for module 'callee' is open (3 consecutive failures"
    )
    assert "next probe in" in reply["payload"]["errors"][0]
    assert system.controls.calls == 0  # refused without reaching the module

    system.controls.slow = 0.0
    await asyncio.sleep(1.6)  # the breaker's wait_open
    assert (await system.send("work", {"n": 10}))["success"] is True  # the probe
    assert system.orchestrator.board.breakers["callee"].state is BreakerState.CLOSED
    assert (await system.send("work", {"n": 11}))["payload"] == {"n": 11}


async def test_validation_errors_do_not_open_the_breaker(system: System) -> None:
    for _ in range(10):
        reply = await system.send("strict", {"a": "not a number"})
        assert code_of(reply) == "VALIDATION"
        assert code_of(await system.send("nonexistent-type", {})) == "NOT_FOUND"
    assert system.orchestrator.board is not None
    assert system.orchestrator.board.breakers["callee"].state is BreakerState.CLOSED
    assert (await system.send("strict", {"a": 2, "b": 3}))["payload"] == 5


async def test_module_errors_open_the_breaker(system: System) -> None:
    system.controls.fail = True
    replies = [await system.send("work", {}) for _ in range(4)]
    assert [code_of(r) for r in replies] == ["MODULE_ERROR"] * 3 + ["CIRCUIT_OPEN"]
    breakers = await system.ask("breakers")
    assert breakers[0]["module"] == "callee"
    assert breakers[0]["state"] == "open"
    reset = await system.ask("breaker.reset", {"module": "callee"})
    assert reset["state"] == "closed"
    system.controls.fail = False
    assert (await system.send("work", {"ok": 1}))["success"] is True


async def test_breaker_reset_of_an_unknown_module_is_not_found(system: System) -> None:
    msg = await system.nc.request(
        f"{system.prefix}.orchestrator.breaker.reset", b'{"module": "ghost"}', timeout=5
    )
    reply = json.loads(msg.data)
    assert reply["payload"] == {
        "code": "NOT_FOUND",
        "errors": ["no breaker for module 'ghost'; breakers: none yet"],
    }
    msg = await system.nc.request(
        f"{system.prefix}.orchestrator.breaker.reset", b'{"module": "a b"}', timeout=5
    )
    assert json.loads(msg.data)["payload"]["code"] == "VALIDATION"


async def test_a_second_replica_honours_the_open_breaker(system: System, settings: ServiceSettings) -> None:
    system.controls.fail = True
    for _ in range(3):
        await system.send("work", {})
    assert system.orchestrator.board is not None
    assert system.orchestrator.board.breakers["callee"].state is BreakerState.OPEN
    await asyncio.sleep(0.2)  # the transition reaches KV
    replica = OrchestratorService(settings, policies={"callee": POLICY})
    async with replica:
        assert replica.board is not None
        for _ in range(50):
            breaker = replica.board.breakers.get("callee")
            if breaker is not None and breaker.state is BreakerState.OPEN:
                break
            await asyncio.sleep(0.05)
        assert replica.board.breakers["callee"].state is BreakerState.OPEN
        # A reset on the first replica closes the second one too.
        system.orchestrator.board.breakers["callee"].reset()
        for _ in range(50):
            if replica.board.breakers["callee"].state is BreakerState.CLOSED:
                break
            await asyncio.sleep(0.05)
        assert replica.board.breakers["callee"].state is BreakerState.CLOSED


async def test_bulkhead_serves_by_priority_and_refuses_when_full(system: System) -> None:
    first = asyncio.create_task(system.send("gated", {"priority": 9}))
    await asyncio.wait_for(system.controls.entered.wait(), 5)  # the one slot is taken
    waiting = []
    for priority in (4, 0, 2):
        waiting.append(asyncio.create_task(system.send("gated", {"priority": priority}, priority=priority)))
        await asyncio.sleep(0.05)  # arrive in this order
    overflow = await system.send("gated", {"priority": 1}, priority=1)
    assert code_of(overflow) == "OVERLOADED"
    assert overflow["payload"]["errors"] == [
        "module 'callee' has 1 calls in flight and 3 queued (max_concurrent 1, max_queue 3); back off"
    ]
    system.controls.gate.set()
    replies = await asyncio.gather(first, *waiting)
    assert all(r["success"] for r in replies)
    assert system.controls.order == [9, 0, 2, 4]


async def test_waiting_for_a_slot_counts_against_the_timeout(system: System) -> None:
    first = asyncio.create_task(system.send("gated", {"priority": 1}))
    await asyncio.wait_for(system.controls.entered.wait(), 5)
    reply = await system.send("gated", {"priority": 2}, timeout=0.2)
    assert code_of(reply) == "TIMEOUT"
    assert reply["payload"]["errors"][0].startswith("module 'callee': no free call slot within 0.2s")
    system.controls.gate.set()
    assert (await first)["success"] is True
    assert system.controls.order == [1]  # the timed-out call never reached the module


async def test_the_smaller_of_envelope_and_header_timeout_wins(system: System) -> None:
    system.controls.slow = 0.3
    body = json.dumps({"type": "work", "payload": {}, "timeout": 5}).encode()
    msg = await system.nc.request(
        f"{system.prefix}.send.callee", body, timeout=10, headers={"Corral-Timeout": "0.1"}
    )
    reply = json.loads(msg.data)
    assert reply["payload"]["errors"] == ["module 'callee' did not answer 'work' within 0.1s"]


async def test_retries_are_for_idempotent_types_only(system: System) -> None:
    system.controls.flaky_left = 2
    reply = await system.send("flaky", {}, retries=2)
    assert reply["success"] is True
    assert reply["payload"] == "done"
    assert system.controls.calls == 3

    refused = await system.send("flaky_unsafe", {}, retries=1)
    assert refused["payload"] == {
        "code": "VALIDATION",
        "errors": [
            "retries requested, but module 'callee' does not declare 'flaky_unsafe' idempotent; "
            "send without `retries`"
        ],
    }
    too_many = await system.send("flaky", {}, retries=9)
    assert code_of(too_many) == "VALIDATION"
    assert "`$.retries`" in too_many["payload"]["errors"][0]


async def test_stats_and_metrics_report_per_module_figures(system: System) -> None:
    for i in range(5):
        await system.send("work", {"i": i})
    await system.send("strict", {"a": "x"})
    stats = await system.ask("stats")
    callee = stats["modules"]["callee"]
    assert callee["calls"] == 6
    assert callee["successes"] == 5
    assert callee["errors"] == {"VALIDATION": 1}
    assert 0 < callee["p50_ms"] <= callee["p95_ms"] <= callee["p99_ms"]
    assert callee["breaker"] == "closed"
    assert 0 < callee["uptime_seconds"] < 60
    assert stats["routed"] == 6
    assert stats["modules_running"] == 1
    assert stats["handlers"] == 5  # work, strict, gated, flaky, flaky_unsafe

    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{system.orchestrator.metrics_url}/metrics") as resp,
    ):
        text = await resp.text()
    assert 'corral_orchestrator_module_calls_total{module="callee",outcome="ok"} 5.0' in text
    assert 'corral_orchestrator_breaker_state{module="callee"} 0.0' in text


async def test_subscribers_by_type_receive_routed_messages(system: System, settings: ServiceSettings) -> None:
    received: list[MessageEvent] = []
    client = await CorralClient.connect(settings.bus, prefix=system.prefix)
    async with client:
        subscription = await client.subscribe("work", lambda event: _append(received, event))
        await system.send("work", {"seen": True})
        await system.send("strict", {"a": 1})  # another type: not delivered
        for _ in range(50):
            if received:
                break
            await asyncio.sleep(0.02)
        await subscription.stop()
    assert len(received) == 1
    assert received[0].module == "callee"
    assert received[0].type == "work"
    assert received[0].payload == {"seen": True}
    assert "work" in (await system.ask("stats"))["subscribed_types"]


async def _append(events: list[MessageEvent], event: MessageEvent) -> None:
    events.append(event)


async def test_concurrent_calls_to_unknown_modules_share_one_discovery(system: System) -> None:
    discoveries = 0

    async def count(_msg: Any) -> None:
        nonlocal discoveries
        discoveries += 1

    sub = await system.nc.subscribe("$SRV.INFO", cb=count)
    await system.nc.flush()
    bodies = [json.dumps({"type": "x", "payload": {}}).encode()] * 20
    replies = await asyncio.gather(
        *(
            system.nc.request(f"{system.prefix}.send.ghost{i}", body, timeout=10)
            for i, body in enumerate(bodies)
        )
    )
    await sub.unsubscribe()
    assert {json.loads(r.data)["payload"]["code"] for r in replies} == {"NOT_FOUND"}
    assert 1 <= discoveries <= 2
    assert not any(name.startswith("ghost") for name in system.orchestrator.router.routes)  # type: ignore[union-attr]
