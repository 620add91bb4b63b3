"""Recurring tasks against a real nats-server: two scheduler replicas run each tick once, a
tick over a resource threshold is skipped and counted, the API stores schedules in KV and
refuses bad ones naming the field."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from scheduler_helpers import FAST, fails, ok

from corral.config import RecurringConfig
from corral.runtime import ServiceSettings
from corral.scheduler.recurring import Outcome, idempotency_key
from corral.scheduler.service import SchedulerService
from corral.scheduling.ids import id_for_key
from corral.sdk.task_context import TaskContext
from corral.sdk.worker import Worker


def every_second(**fields: Any) -> RecurringConfig:
    return msgspec.convert({"type": "beat", "every": 1, **fields}, RecurringConfig)


def replica(settings: ServiceSettings, name: str, recurring: dict[str, RecurringConfig]) -> SchedulerService:
    return SchedulerService(msgspec.structs.replace(settings, instance=name), FAST, recurring=recurring)


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        await asyncio.sleep(0.05)


@pytest.fixture
async def beats(settings: ServiceSettings) -> AsyncIterator[Counter[str]]:
    """A worker that counts the runs of each `beat` task, by task id."""
    runs: Counter[str] = Counter()
    worker = Worker("beats", concurrency=4, settings=settings, scheduler=FAST)

    @worker.task("beat")
    async def beat(ctx: TaskContext, payload: Any) -> None:
        runs[ctx.task_id] += 1

    async with worker:
        yield runs


async def tick_events(nc: Client, prefix: str, name: str) -> tuple[list[dict[str, Any]], Any]:
    events: list[dict[str, Any]] = []

    async def on_event(msg: Msg) -> None:
        events.append(msgspec.json.decode(msg.data))

    sub = await nc.subscribe(f"{prefix}.evt.task.recurring.{name}", cb=on_event)
    return events, sub


async def test_two_replicas_run_each_tick_once(
    nc: Client, settings: ServiceSettings, prefix: str, beats: Counter[str]
) -> None:
    schedules = {"beat": every_second()}
    events, sub = await tick_events(nc, prefix, "beat")
    async with replica(settings, "a", schedules), replica(settings, "b", schedules):
        # Both replicas handle each tick; wait for four ticks handled by both.
        def ticks_by_both() -> set[float]:
            by_instance: dict[str, set[float]] = {"a": set(), "b": set()}
            for e in events:
                by_instance[e["instance"]].add(e["tick"])
            return by_instance["a"] & by_instance["b"]

        await until(lambda: len(ticks_by_both()) >= 4, 10, "four ticks handled by both replicas")
    await sub.unsubscribe()
    ticks = ticks_by_both()
    outcomes: dict[float, Counter[str]] = {}
    for e in events:
        if e["tick"] in ticks:
            outcomes.setdefault(e["tick"], Counter())[e["outcome"]] += 1
    for tick, seen in outcomes.items():
        # One replica created the task, the other found it: never two tasks for one tick.
        assert seen == {"submitted": 1, "duplicate": 1}, (tick, seen)
    expected = {id_for_key(idempotency_key("beat", tick)) for tick in ticks}
    await until(lambda: expected <= set(beats), 10, "every tick's task to run")
    assert all(beats[task_id] == 1 for task_id in expected), beats
    same_task = {e["task_id"] for e in events if e["tick"] == min(ticks)}
    assert len(same_task) == 1  # both replicas got the same task id back


async def test_a_tick_over_the_memory_threshold_is_skipped_and_counted(
    nc: Client, settings: ServiceSettings, prefix: str, beats: Counter[str]
) -> None:
    # No machine runs with under 0.01% of its memory in use: every tick is over the threshold.
    schedules = {"lean": every_second(max_memory_percent=0.01)}
    async with replica(settings, "a", schedules) as scheduler:
        runner = scheduler.recurring
        assert runner is not None
        await until(lambda: runner.trackers["lean"].counts[Outcome.SKIPPED] >= 2, 10, "two skipped ticks")
        [view] = (await ok(nc, prefix, "recurring.list"))["schedules"]
        tasks = (await ok(nc, prefix, "list", {"type": "beat"}))["tasks"]
    assert view["name"] == "lean"
    assert view["source"] == "config"
    assert view["counts"]["skipped"] >= 2
    assert "submitted" not in view["counts"]
    assert "missed" not in view["counts"]  # ticks before the start are nobody's misses
    assert view["last_outcome"] == "skipped"
    assert view["last_reason"].startswith("memory ")
    assert view["last_reason"].endswith("% > max_memory_percent 0.01%")
    assert tasks == []
    assert not beats


async def test_api_schedules_are_stored_shared_by_replicas_and_removed(
    nc: Client, settings: ServiceSettings, prefix: str, beats: Counter[str]
) -> None:
    configured = {"from-toml": every_second(enabled=False)}
    async with replica(settings, "a", configured) as a, replica(settings, "b", configured) as b:
        added = await ok(nc, prefix, "recurring.add", {"name": "pulse", "type": "beat", "every": "1s"})
        assert added["replaced"] is False
        assert added["schedule"]["source"] == "api"
        assert added["schedule"]["schedule"]["every"] == 1.0
        runners = [r for r in (a.recurring, b.recurring) if r is not None]
        # The replica that did not store it reads the bucket within its refresh period.
        await until(lambda: all("pulse" in r.trackers for r in runners), 5, "both replicas to track it")
        await until(lambda: len(beats) >= 2, 10, "two pulse tasks to run")
        assert all(count == 1 for count in beats.values())

        conflict = await fails(
            nc, prefix, "recurring.add", {"name": "from-toml", "type": "beat", "every": 5}, "CONFLICT"
        )
        assert "defined in corral.toml ([scheduler.recurring.from-toml])" in conflict
        listing = await ok(nc, prefix, "recurring.list")
        names = [s["name"] for s in listing["schedules"]]
        assert names == ["from-toml", "pulse"]

        removed = await ok(nc, prefix, "recurring.remove", {"name": "pulse"})
        assert removed == {"name": "pulse", "removed": True}
        await until(lambda: all("pulse" not in r.trackers for r in runners), 5, "both replicas to drop it")
        missing = await fails(nc, prefix, "recurring.remove", {"name": "pulse"}, "NOT_FOUND")
        assert missing == "no recurring task named 'pulse': see recurring.list"

        await ok(nc, prefix, "recurring.add", {"name": "kept", "type": "beat", "cron": "0 0 1 1 *"})
    # A scheduler started later finds the stored schedule.
    async with replica(settings, "c", {}):
        names = [s["name"] for s in (await ok(nc, prefix, "recurring.list"))["schedules"]]
        assert names == ["kept"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"type": "beat", "every": 5}, "Object missing required field `name`"),
        ({"name": "x", "every": 5}, "Object missing required field `type`"),
        ({"name": "a.b", "type": "beat", "every": 5}, "- at `$.name`"),
        ({"name": "x", "type": "beat"}, "set exactly one of every (an interval) and cron (an expression)"),
        ({"name": "x", "type": "beat", "cron": "61 * * * *"}, "(Bad minute)"),
        ({"name": "x", "type": "beat", "cron": "61 * * * *"}, "- at `$.cron`"),
        ({"name": "x", "type": "beat", "every": "soon"}, "every 'soon' is not a duration"),
        ({"name": "x", "type": "beat", "every": 5, "timezone": "Nowhere/City"}, "- at `$.timezone`"),
        ({"name": "x", "type": "beat", "every": 5, "max_cpu_percent": 150}, "- at `$.max_cpu_percent`"),
        ({"name": "x", "type": "beat", "every": 5, "priority": "asap"}, "- at `$.priority`"),
        ({"name": "x", "type": "beat", "every": 5, "evry": 5}, "unknown field `evry`"),
    ],
)
async def test_bad_schedules_get_validation_naming_the_field(
    nc: Client, settings: ServiceSettings, prefix: str, body: dict[str, Any], message: str
) -> None:
    async with replica(settings, "a", {}):
        error = await fails(nc, prefix, "recurring.add", body, "VALIDATION")
        assert message in error
        assert (await ok(nc, prefix, "recurring.list"))["schedules"] == []


async def test_a_refused_tick_is_submitted_again_within_grace(
    nc: Client, settings: ServiceSettings, prefix: str, beats: Counter[str]
) -> None:
    # A queue of one, held full by a task no worker takes: the tick's submission is OVERLOADED.
    scheduler = SchedulerService(
        msgspec.structs.replace(settings, instance="a"),
        msgspec.structs.replace(FAST, max_queued=1),
        recurring={},
    )
    events, sub = await tick_events(nc, prefix, "beat")
    async with scheduler:
        blocker = await ok(nc, prefix, "submit", {"type": "beat", "capabilities": ["nobody-has-it"]})
        await ok(nc, prefix, "recurring.add", {"name": "beat", "type": "beat", "every": 1, "grace": 5})
        await until(lambda: any(e["outcome"] == "failed" for e in events), 10, "a refused tick")
        await ok(nc, prefix, "cancel", {"id": blocker["id"]})  # room again
        await until(lambda: any(e["outcome"] == "submitted" for e in events), 10, "a submitted tick")
    await sub.unsubscribe()
    failed = [e for e in events if e["outcome"] == "failed"]
    assert "OverloadedError: the task queue is full" in failed[0]["reason"]
    submitted = next(e for e in events if e["outcome"] == "submitted")
    # The tick that was refused is the one submitted (retried every second within grace).
    assert submitted["tick"] == failed[-1]["tick"]
    await until(lambda: submitted["task_id"] in beats, 10, "the retried tick's task to run")


async def test_a_cron_schedule_submits_at_its_matches(
    nc: Client, settings: ServiceSettings, prefix: str, beats: Counter[str]
) -> None:
    every_two = msgspec.convert({"type": "beat", "cron": "*/2 * * * * *"}, RecurringConfig)
    events, sub = await tick_events(nc, prefix, "even")
    async with replica(settings, "a", {"even": every_two}):
        await until(lambda: len(events) >= 2, 10, "two cron ticks")
    await sub.unsubscribe()
    ticks = [e["tick"] for e in events]
    assert all(tick % 2 == 0 for tick in ticks)  # even seconds, as the expression says
    assert ticks[1] - ticks[0] == 2
    assert {e["outcome"] for e in events} == {"submitted"}
    await until(lambda: {e["task_id"] for e in events} <= set(beats), 10, "both ticks' tasks to run")
