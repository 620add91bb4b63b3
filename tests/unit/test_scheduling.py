"""Pure parts of the scheduler: routes, dependency cycles, backoff, ids, request validation,
the aging order of a worker's queues and progress snapshots."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import msgspec
import pytest

from corral.errors import ConfigError
from corral.scheduling.graph import find_cycle
from corral.scheduling.ids import id_for_key, new_task_id
from corral.scheduling.messages import Backoff, SubmitManyRequest, SubmitRequest, TaskSpec
from corral.scheduling.routing import consumer_name, route, worker_routes
from corral.scheduling.settings import SchedulerSettings
from corral.sdk.puller import TaskQueueView
from corral.sdk.task_context import TaskContext


def test_a_route_names_the_type_and_its_sorted_capabilities() -> None:
    assert route("echo") == "echo"
    assert route("render", ["gpu", "cuda", "gpu"]) == "render+cuda+gpu"
    assert route("render", ["render"]) == "render"  # the type is always offered by its handler
    assert consumer_name(0, "render+gpu") == "p0_render+gpu"


def test_a_worker_serves_every_subset_of_its_capabilities() -> None:
    assert worker_routes(["b", "a"], []) == ["a", "b"]
    assert worker_routes(["render"], ["gpu", "cuda"]) == [
        "render",
        "render+cuda",
        "render+gpu",
        "render+cuda+gpu",
    ]
    # A task needing capabilities the worker lacks never matches one of its routes.
    assert route("render", ["gpu", "tpu"]) not in worker_routes(["render"], ["gpu", "cuda"])
    with pytest.raises(ValueError, match="at most 6 capabilities"):
        worker_routes(["x"], [f"c{i}" for i in range(7)])


def test_find_cycle_reports_the_path() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"], "c": []}) is None
    assert find_cycle({"a": ["b"], "b": ["a"]}) == ["a", "b", "a"]
    assert find_cycle({"a": ["a"]}) == ["a", "a"]
    assert find_cycle({"a": ["x"], "b": ["a", "x"]}) is None  # x exists already: not followed
    cycle = find_cycle({"a": ["b"], "b": ["c"], "c": ["b"]})
    assert cycle == ["b", "c", "b"]


def test_backoff_grows_to_its_cap_with_bounded_jitter() -> None:
    plain = Backoff(initial=1, multiplier=2, max=5, jitter=0)
    assert [plain.delay(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]
    jittery = Backoff(initial=1, multiplier=2, max=60, jitter=0.5)
    rng = random.Random(7)
    delays = [jittery.delay(3, rng) for _ in range(200)]
    assert all(2.0 <= d <= 6.0 for d in delays)
    assert len(set(delays)) > 100


def test_ids() -> None:
    first, second = new_task_id(), new_task_id()
    assert first != second
    assert len(first) == 23
    assert id_for_key("order-1") == id_for_key("order-1") != id_for_key("order-2")
    assert id_for_key("order-1").startswith("k")


def test_submit_request_validation_names_the_field() -> None:
    req = msgspec.json.decode(
        b'{"type": "echo", "priority": "HIGH", "capabilities": ["b", "a", "b"]}', type=SubmitRequest
    )
    assert req.priority == 1
    assert req.capabilities == ["a", "b"]
    for body, where in (
        (b'{"type": "echo", "priority": "soon"}', "$.priority"),
        (b'{"type": "echo", "dependencies": ["a", "a"]}', "$.dependencies"),
        (b'{"type": "echo", "delay": -1}', "$.delay"),
        (b'{"type": "echo", "capabilities": ["a b"]}', "$.capabilities[0]"),
    ):
        with pytest.raises(msgspec.ValidationError) as failed:
            msgspec.json.decode(body, type=SubmitRequest)
        assert where in str(failed.value), (body, str(failed.value))
    with pytest.raises(msgspec.ValidationError, match=r"\$\.tasks\[0\]"):
        msgspec.json.decode(b'{"tasks": [{"type": ""}]}', type=SubmitManyRequest)


def test_a_task_spec_round_trips_into_its_record() -> None:
    spec = TaskSpec(id="t1", type="echo", route="echo", payload={"a": 1}, priority=0)
    record = spec.record(status="running", attempts=2)
    assert record.spec == spec
    assert msgspec.json.decode(msgspec.json.encode(record))["status"] == "running"


def test_aging_raises_a_queue_one_level_per_interval() -> None:
    view = TaskQueueView(4, "echo", "p4_echo", "next", "inbox")
    assert view.effective(now=100.0, aging=10.0) == 4  # nothing sampled yet
    view.oldest = 95.0
    assert view.effective(now=100.0, aging=10.0) == 4
    view.oldest = 75.0
    assert view.effective(now=100.0, aging=10.0) == 2
    view.oldest = 0.0
    assert view.effective(now=100.0, aging=10.0) == 0  # never above critical


def test_settings_from_the_environment() -> None:
    settings = SchedulerSettings.from_env(
        {"CORRAL_SCHEDULER_MAX_QUEUED": "50", "CORRAL_SCHEDULER_AGING": "2.5"}
    )
    assert settings.max_queued == 50
    assert settings.aging == 2.5
    with pytest.raises(ConfigError, match="max_queued"):
        SchedulerSettings.from_env({"CORRAL_SCHEDULER_MAX_QUEUED": "0"})


async def test_progress_publishes_deltas_and_a_merged_snapshot_every_n() -> None:
    published: list[tuple[str, Any]] = []

    async def publish(kind: str, data: bytes) -> None:
        published.append((kind, msgspec.json.decode(data)))

    async def save(task_id: str, data: bytes) -> None:
        published.append(("checkpoint", msgspec.json.decode(data)))

    ctx = TaskContext(
        task_id="t", type_="x", attempt=1, max_retries=0, resume_state=None, traceparent="",
        worker="w", publish=publish, save_checkpoint=save, snapshot_every=3,
    )  # fmt: skip
    for i in range(7):
        await ctx.progress(i * 10, {f"k{i}": i})
    await ctx.checkpoint({"at": 7})
    kinds = [k for k, _ in published]
    assert kinds.count("progress") == 7
    assert kinds.count("snapshot") == 2
    snapshot = [d for k, d in published if k == "snapshot"][-1]
    assert snapshot["seq"] == 6
    assert snapshot["percent"] == 50
    assert snapshot["data"] == {f"k{i}": i for i in range(6)}
    assert published[-1] == ("checkpoint", {"at": 7})
    assert ctx.checkpointed
    assert not ctx.cancelled
    ctx.cancel("stop")
    assert ctx.cancelled
    assert ctx.cancel_reason == "stop"
    assert ctx.is_last_attempt
    await asyncio.sleep(0)


def test_routes_of_one_level_take_turns_and_urgency_comes_first() -> None:
    from typing import cast

    from corral.sdk.puller import Puller
    from corral.subjects import Subjects

    routes = ["a", "b"]
    puller = Puller(
        cast(Any, None), cast(Any, None), Subjects("t"), SchedulerSettings(), routes, lambda m: None
    )
    puller.queues = [
        TaskQueueView(p, r, f"p{p}_{r}", "next", f"inbox.{p}.{r}", position=routes.index(r))
        for r in routes
        for p in (0, 2)
    ]
    firsts = []
    for _ in range(4):
        order = [v.name for v in puller.order()]
        assert order[:2] in (["p0_a", "p0_b"], ["p0_b", "p0_a"])  # critical before normal, always
        firsts.append(order[2])
    assert firsts == ["p2_a", "p2_b", "p2_a", "p2_b"] or firsts == ["p2_b", "p2_a", "p2_b", "p2_a"]


def test_worker_concurrency_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from corral.sdk import Worker
    from corral.sdk.worker import _concurrency

    worker = Worker("w", concurrency=8)
    assert _concurrency(worker) == 8
    monkeypatch.setenv("CORRAL_WORKER_CONCURRENCY", "64")
    assert _concurrency(worker) == 64
    monkeypatch.setenv("CORRAL_WORKER_CONCURRENCY", "0")
    with pytest.raises(ConfigError, match="CORRAL_WORKER_CONCURRENCY"):
        _concurrency(worker)
