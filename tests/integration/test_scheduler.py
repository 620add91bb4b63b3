"""The scheduler against the session's real nats-server: submission over plain JSON, validation
of every verb, idempotency, backpressure, priorities (FIFO within a level, aging), capability
routing, retries into the dead-letter queue, progress, checkpoints, timeouts, cancellation,
dependencies, stalled-consumer reporting and trace propagation. Scheduler and workers run in
this process, with short leases and backoffs (see scheduler_helpers.FAST)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from corral.runtime import ServiceSettings
from corral.runtime.logs import current_trace_id
from corral.scheduler.service import SchedulerService
from corral.scheduling.ids import id_for_key
from corral.scheduling.settings import SchedulerSettings
from corral.sdk import Client, TaskCancelledError, TaskContext, TaskFailedError, Worker
from corral.tracing import traceparent_var
from tests.integration.scheduler_helpers import FAST, call, fails, ok


@pytest.fixture
async def scheduler(settings: ServiceSettings) -> AsyncIterator[SchedulerService]:
    async with SchedulerService(settings, FAST) as service:
        yield service


@pytest.fixture
async def client(nc: NatsClient, prefix: str, scheduler: SchedulerService) -> Client:
    return Client(nc, prefix=prefix)


class Recorder:
    """What the test workers ran, in order."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, Any, int, str]] = []  # (type, payload, attempt, worker instance)
        self.began: list[float] = []  # time.monotonic() as each run began, in the order of runs
        self.gate = asyncio.Event()
        self.started = asyncio.Event()

    def names(self) -> list[Any]:
        return [p["n"] for t, p, _, _ in self.runs if t == "note"]


def make_worker(  # noqa: C901 - one small closure per task type
    settings: ServiceSettings,
    rec: Recorder,
    *,
    concurrency: int = 4,
    capabilities: list[str] | None = None,
    sched: SchedulerSettings = FAST,
    name: str = "testworker",
) -> Worker:
    own = msgspec.structs.replace(settings, instance=f"{name}-{uuid.uuid4().hex[:6]}")
    worker = Worker(name, capabilities=capabilities, concurrency=concurrency, settings=own, scheduler=sched)

    def note(ctx: TaskContext, type_: str, payload: Any) -> None:
        rec.runs.append((type_, payload, ctx.attempt, ctx.worker))
        rec.began.append(time.monotonic())

    @worker.task("echo")
    async def echo(ctx: TaskContext, payload: Any) -> Any:
        note(ctx, "echo", payload)
        return payload

    @worker.task("note")
    async def note_task(ctx: TaskContext, payload: dict[str, Any]) -> None:
        note(ctx, "note", payload)

    @worker.task("block")
    async def block(ctx: TaskContext, payload: Any) -> str:
        note(ctx, "block", payload)
        rec.started.set()
        await rec.gate.wait()
        return "unblocked"

    @worker.task("fail")
    async def fail(ctx: TaskContext, payload: Any) -> None:
        note(ctx, "fail", payload)
        raise ValueError(f"always fails (attempt {ctx.attempt})")

    @worker.task("flaky")
    async def flaky(ctx: TaskContext, payload: dict[str, int]) -> int:
        note(ctx, "flaky", payload)
        if ctx.attempt <= payload["fail_times"]:
            await ctx.checkpoint({"step": ctx.attempt * 10})
            raise RuntimeError(f"flaky {ctx.attempt}")
        return ctx.attempt

    @worker.task("resume")
    async def resume(ctx: TaskContext, payload: Any) -> Any:
        note(ctx, "resume", payload)
        if ctx.attempt == 1:
            await ctx.checkpoint({"step": 3})
            raise RuntimeError("crash after the checkpoint")
        return ctx.resume_state

    @worker.task("slow")
    async def slow(ctx: TaskContext, payload: dict[str, float]) -> int:
        note(ctx, "slow", payload)
        if ctx.attempt == 1:
            await asyncio.sleep(payload["seconds"])
        return ctx.attempt

    @worker.task("progress")
    async def progress(ctx: TaskContext, payload: dict[str, Any]) -> str:
        await asyncio.sleep(payload.get("pause", 0))  # long enough to be announced as started
        for i in range(payload["steps"]):
            await ctx.progress(100 * (i + 1) / payload["steps"], {f"k{i}": i})
        return "done"

    @worker.task("stoppable")
    async def stoppable(ctx: TaskContext, payload: Any) -> str:
        rec.started.set()
        await ctx.cancel_event.wait()
        return "saw the cancellation"

    @worker.task("trace")
    async def trace(ctx: TaskContext, payload: Any) -> dict[str, Any]:
        return {"traceparent": ctx.traceparent, "trace_id": current_trace_id()}

    return worker


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# --- submit, get, list over plain JSON ------------------------------------------------------------
async def test_submit_then_get_over_plain_json(
    scheduler: SchedulerService, nc: NatsClient, prefix: str, settings: ServiceSettings
) -> None:
    submitted = await ok(
        nc, prefix, "submit", {"type": "echo", "payload": {"x": 1}, "name": "first", "priority": "high"}
    )
    assert submitted["status"] == "queued"
    assert submitted["duplicate"] is False
    record = await ok(nc, prefix, "get", {"id": submitted["id"]})
    assert record["status"] == "queued"
    assert record["priority"] == 1
    assert record["name"] == "first"
    assert record["payload"] == {"x": 1}
    rec = Recorder()
    async with make_worker(settings, rec), Client(nc, prefix=prefix) as client:
        assert await client.handle(submitted["id"]).result(timeout=5) == {"x": 1}
        record = await ok(nc, prefix, "get", {"id": submitted["id"]})
    assert record["status"] == "succeeded"
    assert record["attempts"] == 1
    assert record["result"] == {"x": 1}
    assert record["worker"]
    assert record["started"] >= record["submitted"]
    assert record["finished"] >= record["started"]
    listed = await ok(nc, prefix, "list", {"status": "succeeded"})
    assert [t["id"] for t in listed["tasks"]] == [submitted["id"]]
    assert (await ok(nc, prefix, "list", {"status": "failed"}))["tasks"] == []


async def test_every_verb_validates_its_input(
    scheduler: SchedulerService, nc: NatsClient, prefix: str
) -> None:
    assert "field `type`" in await fails(nc, prefix, "submit", {"payload": {}}, "VALIDATION")
    assert "priority" in await fails(
        nc, prefix, "submit", {"type": "echo", "priority": "urgent"}, "VALIDATION"
    )
    assert "priority" in await fails(nc, prefix, "submit", {"type": "echo", "priority": 7}, "VALIDATION")
    assert "`$.type`" in await fails(nc, prefix, "submit", {"type": "no spaces"}, "VALIDATION")
    assert "timeout" in await fails(nc, prefix, "submit", {"type": "echo", "timeout": -1}, "VALIDATION")
    assert "max_retries" in await fails(
        nc, prefix, "submit", {"type": "echo", "max_retries": 1000}, "VALIDATION"
    )
    assert "backoff.multiplier" in await fails(
        nc, prefix, "submit", {"type": "echo", "backoff": {"multiplier": 0.5}}, "VALIDATION"
    )
    assert "colour" in await fails(nc, prefix, "submit", {"type": "echo", "colour": "red"}, "VALIDATION")
    assert "dependencies[0]" in await fails(
        nc, prefix, "submit", {"type": "echo", "dependencies": ["nope"]}, "VALIDATION"
    )
    assert "malformed" in await fails(nc, prefix, "submit", b"{not json", "VALIDATION")
    assert "`$.tasks`" in await fails(nc, prefix, "submit_many", {"tasks": []}, "VALIDATION")
    assert "field `type` - at `$.tasks[1]`" in await fails(
        nc, prefix, "submit_many", {"tasks": [{"type": "echo"}, {}]}, "VALIDATION"
    )
    assert "field `id`" in await fails(nc, prefix, "get", {}, "VALIDATION")
    assert "`$.id`" in await fails(nc, prefix, "cancel", {"id": "a.b"}, "VALIDATION")
    assert "`$.status`" in await fails(nc, prefix, "list", {"status": "sleeping"}, "VALIDATION")
    assert "`$.limit`" in await fails(nc, prefix, "dlq.list", {"limit": 0}, "VALIDATION")
    assert "field `id`" in await fails(nc, prefix, "dlq.show", {}, "VALIDATION")
    assert "`$.id`" in await fails(nc, prefix, "dlq.retry", {"id": ""}, "VALIDATION")
    assert "`$.id`" in await fails(nc, prefix, "dlq.purge", {"id": 5}, "VALIDATION")
    # Unknown ids
    assert "no task" in await fails(nc, prefix, "get", {"id": "missing"}, "NOT_FOUND")
    assert "no task" in await fails(nc, prefix, "cancel", {"id": "missing"}, "NOT_FOUND")
    assert "dead-letter" in await fails(nc, prefix, "dlq.show", {"id": "missing"}, "NOT_FOUND")
    assert "dead-letter" in await fails(nc, prefix, "dlq.retry", {"id": "missing"}, "NOT_FOUND")
    assert "dead-letter" in await fails(nc, prefix, "dlq.purge", {"id": "missing"}, "NOT_FOUND")
    # Nothing was queued by any of that.
    assert (await ok(nc, prefix, "list", {}))["tasks"] == []


# --- exactly-once submission and backpressure -----------------------------------------------------
async def test_the_same_idempotency_key_runs_once(
    client: Client, settings: ServiceSettings, nc: NatsClient, prefix: str
) -> None:
    first = await client.submit("echo", {"n": 1}, idempotency_key="order-42")
    again = await client.submit("echo", {"n": 2}, idempotency_key="order-42")
    assert again.id == first.id == id_for_key("order-42")
    assert (first.duplicate, again.duplicate) == (False, True)
    many = await client.submit_many(
        [{"type": "echo", "payload": {"n": 3}, "idempotency_key": "order-42"}] * 2
    )
    assert [h.id for h in many] == [first.id, first.id]
    rec = Recorder()
    async with make_worker(settings, rec):
        assert await first.result(timeout=5) == {"n": 1}
        late = await client.submit("echo", {"n": 4}, idempotency_key="order-42")  # after it ran
        assert late.id == first.id
        assert late.duplicate
        await asyncio.sleep(0.3)
    assert [p for t, p, _, _ in rec.runs] == [{"n": 1}]


async def test_a_full_queue_refuses_with_overloaded_and_its_depth(
    settings: ServiceSettings, nc: NatsClient, prefix: str
) -> None:
    small = msgspec.structs.replace(FAST, max_queued=3)
    async with SchedulerService(settings, small):
        for n in range(3):
            await ok(nc, prefix, "submit", {"type": "echo", "payload": {"n": n}})
        message = await fails(nc, prefix, "submit", {"type": "echo"}, "OVERLOADED")
        assert "3 tasks queued" in message
        assert "limit is 3" in message
        message = await fails(nc, prefix, "submit_many", {"tasks": [{"type": "echo"}] * 2}, "OVERLOADED")
        assert "3 tasks queued" in message
        assert len((await ok(nc, prefix, "list", {}))["tasks"]) == 3
        # A worker started with other settings declares what is missing, never the queue's limits.
        other = Worker("other", settings=settings, scheduler=FAST)

        @other.task("other")
        async def nothing(ctx: TaskContext, payload: Any) -> None:
            return None

        async with other:
            info = await nc.jetstream().stream_info(f"{prefix.upper()}_TASKS")
        assert info.config.max_msgs == 3


# --- priorities -----------------------------------------------------------------------------------
async def test_priority_order_and_fifo_within_a_level_with_one_busy_worker(
    client: Client, settings: ServiceSettings
) -> None:
    rec = Recorder()
    async with make_worker(settings, rec, concurrency=1):
        blocker = await client.submit("block", {})
        await asyncio.wait_for(rec.started.wait(), 5)
        handles = []
        for level in (4, 3, 2, 1, 0):  # least urgent first
            for order in ("a", "b"):
                handles.append(await client.submit("note", {"n": f"{level}{order}"}, priority=level))
        rec.gate.set()
        await blocker.result(timeout=5)
        for handle in handles:
            await handle.result(timeout=5)
    assert rec.names() == ["0a", "0b", "1a", "1b", "2a", "2b", "3a", "3b", "4a", "4b"]


async def test_aging_lets_a_waiting_background_task_overtake(
    client: Client, settings: ServiceSettings
) -> None:
    aging = msgspec.structs.replace(FAST, aging=0.3)
    rec = Recorder()
    async with make_worker(settings, rec, concurrency=1, sched=aging):
        blocker = await client.submit("block", {})
        await asyncio.wait_for(rec.started.wait(), 5)
        old = await client.submit("note", {"n": "old-background"}, priority="background")
        await asyncio.sleep(1.5)  # 5 aging periods: it competes as critical now
        fresh = [await client.submit("note", {"n": f"normal-{i}"}) for i in range(3)]
        await asyncio.sleep(0.2)  # a sample of the queue ages after the new ones arrived
        rec.gate.set()
        for handle in (blocker, old, *fresh):
            await handle.result(timeout=5)
    assert rec.names()[0] == "old-background"


async def test_tasks_go_only_to_workers_offering_their_capabilities(
    client: Client, settings: ServiceSettings
) -> None:
    plain, gpu = Recorder(), Recorder()
    async with (
        make_worker(settings, plain, name="plain"),
        make_worker(settings, gpu, name="gpu", capabilities=["gpu"]) as gpu_worker,
    ):
        needs = [await client.submit("echo", {"i": i}, capabilities=["gpu"]) for i in range(5)]
        for handle in needs:
            await handle.result(timeout=5)
        gpu_instance = gpu_worker.running.instance
        assert {(await h.record()).worker for h in needs} == {gpu_instance}
        workers = (await client._scheduler("workers", None))["workers"]
    assert plain.runs == []
    assert len(gpu.runs) == 5
    by_name = {w["name"]: w for w in workers}
    assert by_name["gpu"]["capabilities"] == ["gpu"]
    assert by_name["gpu"]["concurrency"] == 4
    assert "echo" in by_name["plain"]["types"]


# --- failures -------------------------------------------------------------------------------------
async def test_a_poison_task_is_dead_lettered_after_exactly_max_retries_plus_one(
    client: Client, settings: ServiceSettings, nc: NatsClient, prefix: str
) -> None:
    rec = Recorder()
    events: list[Msg] = []

    async def on_event(msg: Msg) -> None:
        events.append(msg)

    sub = await nc.subscribe(f"{prefix}.evt.task.>", cb=on_event)
    async with make_worker(settings, rec):
        handle = await client.submit(
            "fail", {"p": 1}, max_retries=2, backoff={"initial": 0.1, "multiplier": 2, "jitter": 0}
        )
        with pytest.raises(TaskFailedError) as failed:
            await handle.result(timeout=10)
        await wait_for(lambda: len(events) >= 3)
        await asyncio.sleep(0.3)  # a fourth attempt would come within this
    await sub.unsubscribe()
    assert [attempt for _, _, attempt, _ in rec.runs] == [1, 2, 3]
    assert failed.value.attempts == 3
    assert "always fails (attempt 3)" in failed.value.error
    assert "ValueError" in failed.value.traceback
    letter = await ok(nc, prefix, "dlq.show", {"id": handle.id})
    assert letter["attempts"] == 3
    assert letter["task"]["payload"] == {"p": 1}
    assert "Traceback" in letter["traceback"]
    record = await client.task(handle.id)
    assert record.status == "failed"
    assert record.attempts == 3
    kinds = [m.subject.rsplit(".", 1)[-1] for m in events]
    assert kinds == ["retrying", "retrying", "failed"]


async def test_retries_wait_for_their_backoff(
    client: Client, settings: ServiceSettings, nc: NatsClient, prefix: str
) -> None:
    moments: list[tuple[str, float]] = []

    async def on_event(msg: Msg) -> None:
        moments.append((msg.subject.rsplit(".", 1)[-1], time.monotonic()))

    subs = [await nc.subscribe(f"{prefix}.task.*.{kind}", cb=on_event) for kind in ("retry", "done")]
    rec = Recorder()
    async with make_worker(settings, rec):
        handle = await client.submit(
            "flaky", {"fail_times": 2}, max_retries=3, backoff={"initial": 0.2, "multiplier": 2, "jitter": 0}
        )
        assert await handle.result(timeout=10) == 3
        await wait_for(lambda: len(moments) == 3)
    for sub in subs:
        await sub.unsubscribe()
    assert [kind for kind, _ in moments] == ["retry", "retry", "done"]
    # Measured where the attempts ran, not where their events arrived (a late event would
    # shorten the gap after it): an attempt can begin late, never early.
    assert [attempt for _, _, attempt, _ in rec.runs] == [1, 2, 3]
    first, second, third = rec.began
    assert second - first >= 0.2  # the first retry waited 0.2 s
    assert third - second >= 0.4  # the second 0.4 s


async def test_dlq_retry_and_purge(
    client: Client, settings: ServiceSettings, nc: NatsClient, prefix: str
) -> None:
    rec = Recorder()
    async with make_worker(settings, rec):
        doomed = [await client.submit("flaky", {"fail_times": 1}, max_retries=0) for _ in range(3)]
        for handle in doomed:
            with pytest.raises(TaskFailedError):
                await handle.result(timeout=5)
        listed = await ok(nc, prefix, "dlq.list", {})
        assert listed["total"] == 3
        assert {d["task"]["id"] for d in listed["dead_letters"]} == {h.id for h in doomed}
        # Retry: the same id runs again from attempt 1 (and flaky now passes, fail_times=1... of the new run)
        retried = await ok(nc, prefix, "dlq.retry", {"id": doomed[0].id})
        assert retried["id"] == doomed[0].id
        with pytest.raises(TaskFailedError):  # a fresh run fails its first attempt again: max_retries=0
            await doomed[0].result(timeout=5)
        assert [a for t, _, a, _ in rec.runs if t == "flaky"] == [1, 1, 1, 1]
        assert (await ok(nc, prefix, "dlq.purge", {"id": doomed[1].id}))["purged"] == 1
        assert (await ok(nc, prefix, "dlq.list", {}))["total"] == 2
        assert (await ok(nc, prefix, "dlq.purge", {}))["purged"] == 2
        assert (await ok(nc, prefix, "dlq.list", {}))["dead_letters"] == []


async def test_a_timeout_fails_the_attempt_and_the_retry_succeeds(
    client: Client, settings: ServiceSettings
) -> None:
    rec = Recorder()
    async with make_worker(settings, rec):
        handle = await client.submit("slow", {"seconds": 5}, timeout=0.3, max_retries=1)
        assert await handle.result(timeout=5) == 2
        record = await handle.record()
    assert record.attempts == 2
    assert record.status == "succeeded"


async def test_checkpoint_is_resume_state_after_a_redelivery(
    client: Client, settings: ServiceSettings
) -> None:
    rec = Recorder()
    async with make_worker(settings, rec):
        assert await (await client.submit("resume", {}, max_retries=1)).result(timeout=5) == {"step": 3}


# --- progress -------------------------------------------------------------------------------------
async def test_progress_deltas_snapshots_and_the_end(client: Client, settings: ServiceSettings) -> None:
    rec = Recorder()
    async with make_worker(settings, rec):
        handle = await client.submit("progress", {"steps": 25, "pause": 0.3}, delay=0.3)  # time to subscribe
        updates = [u async for u in handle.updates()]
    kinds = [u.kind for u in updates]
    assert kinds.count("progress") == 25
    assert kinds.count("snapshot") == 2
    assert kinds[0] == "started"
    assert kinds[-1] == "done"
    assert updates[-1].final
    assert updates[-1].data.result == "done"
    last_snapshot = [u.data for u in updates if u.kind == "snapshot"][-1]
    assert last_snapshot["seq"] == 20
    assert last_snapshot["percent"] == 80.0
    assert last_snapshot["data"] == {f"k{i}": i for i in range(20)}


async def test_a_slow_reader_still_gets_the_result(client: Client, settings: ServiceSettings) -> None:
    rec = Recorder()
    async with make_worker(settings, rec):
        handle = await client.submit("progress", {"steps": 500})
        await handle.result(timeout=5)
        updates = [u async for u in handle.updates()]  # subscribed after the end
    assert updates[-1].kind == "done"
    assert updates[-1].data.result == "done"


# --- cancellation ---------------------------------------------------------------------------------
async def test_a_cancelled_queued_task_never_runs(client: Client, settings: ServiceSettings) -> None:
    handle = await client.submit("echo", {"never": True})
    assert await client.cancel(handle, "changed my mind") is True
    rec = Recorder()
    async with make_worker(settings, rec):
        with pytest.raises(TaskCancelledError) as cancelled:
            await handle.result(timeout=5)
        canary = await client.submit("echo", {"after": True})
        await canary.result(timeout=5)
    assert cancelled.value.reason == "changed my mind"
    assert [p for _, p, _, _ in rec.runs] == [{"after": True}]
    assert await client.cancel(handle) is False  # already over


async def test_a_running_task_sees_ctx_cancelled(client: Client, settings: ServiceSettings) -> None:
    rec = Recorder()
    async with make_worker(settings, rec):
        handle = await client.submit("stoppable", {})
        await asyncio.wait_for(rec.started.wait(), 5)
        assert await client.cancel(handle) is True
        with pytest.raises(TaskCancelledError):
            await handle.result(timeout=5)
        record = await handle.record()
    assert record.status == "cancelled"


# --- dependencies ---------------------------------------------------------------------------------
async def test_a_task_waits_for_its_dependencies(client: Client, settings: ServiceSettings) -> None:
    rec = Recorder()
    async with make_worker(settings, rec, concurrency=4):
        first = await client.submit("slow", {"seconds": 0.0})
        second = await client.submit("note", {"n": "second"}, delay=0.3)
        last = await client.submit("note", {"n": "last"}, dependencies=[first, second])
        assert (await client.task(last.id)).status == "waiting"
        await last.result(timeout=5)
        records = [await h.record() for h in (first, second, last)]
    assert records[2].started >= max(records[0].finished, records[1].finished)
    assert rec.names() == ["second", "last"]


async def test_a_failed_dependency_cancels_its_dependents_in_cascade(
    client: Client, settings: ServiceSettings
) -> None:
    rec = Recorder()
    async with make_worker(settings, rec):
        root = await client.submit("fail", {}, max_retries=0)
        child = await client.submit("note", {"n": "child"}, dependencies=[root])
        grandchild = await client.submit("note", {"n": "grandchild"}, dependencies=[child])
        with pytest.raises(TaskCancelledError) as cancelled:
            await grandchild.result(timeout=5)
        with pytest.raises(TaskCancelledError) as child_cancelled:
            await child.result(timeout=5)
        late = await client.submit("note", {"n": "late"}, dependencies=[root])
        with pytest.raises(TaskCancelledError):
            await late.result(timeout=5)
    assert f"dependency {root.id} failed" in child_cancelled.value.reason
    assert root.id in cancelled.value.reason
    assert child.id in cancelled.value.reason
    assert rec.names() == []


async def test_cycles_and_unknown_dependencies_are_refused(
    client: Client, nc: NatsClient, prefix: str
) -> None:
    a, b = id_for_key("a"), id_for_key("b")
    message = await fails(
        nc, prefix, "submit_many",
        {"tasks": [{"type": "echo", "idempotency_key": "a", "dependencies": [b]},
                   {"type": "echo", "idempotency_key": "b", "dependencies": [a]}]},
        "VALIDATION",
    )  # fmt: skip
    assert "cycle" in message
    assert a in message
    assert b in message
    assert "`$.tasks[0].dependencies`" in message
    message = await fails(
        nc,
        prefix,
        "submit",
        {"type": "echo", "idempotency_key": "self", "dependencies": [id_for_key("self")]},
        "VALIDATION",
    )
    assert "cycle" in message
    message = await fails(nc, prefix, "submit", {"type": "echo", "dependencies": ["ghost"]}, "VALIDATION")
    assert "'ghost' is not a known task" in message
    assert (await ok(nc, prefix, "list", {}))["tasks"] == []


# --- monitoring and tracing -----------------------------------------------------------------------
async def test_a_consumer_at_max_ack_pending_is_reported_stalled(
    client: Client, settings: ServiceSettings, nc: NatsClient, prefix: str
) -> None:
    tight = msgspec.structs.replace(FAST, max_ack_pending=1)
    rec = Recorder()
    async with make_worker(settings, rec, concurrency=2, sched=tight):
        for _ in range(3):
            await client.submit("block", {})
        await asyncio.wait_for(rec.started.wait(), 5)
        deadline = time.monotonic() + 5
        while True:
            status = await ok(nc, prefix, "status")
            if status["stalled"]:
                break
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.1)
        rec.gate.set()
    assert status["stalled"] == ["p2_block"]
    assert status["queued"] == 3
    assert status["workers"] == 1


async def test_traceparent_reaches_the_worker_and_its_events(
    client: Client, settings: ServiceSettings, nc: NatsClient, prefix: str
) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    seen: list[str | None] = []

    async def on_done(msg: Msg) -> None:
        seen.append((msg.headers or {}).get("traceparent"))

    sub = await nc.subscribe(f"{prefix}.task.*.done", cb=on_done)
    rec = Recorder()
    async with make_worker(settings, rec):
        result = await (await client.submit("trace", {}, traceparent=traceparent)).result(timeout=5)
        await wait_for(lambda: bool(seen))
    await sub.unsubscribe()
    assert result == {"traceparent": traceparent, "trace_id": "0af7651916cd43dd8448eb211c80319c"}
    assert seen == [traceparent]


async def test_a_submission_made_while_serving_a_trace_continues_it(
    client: Client, settings: ServiceSettings
) -> None:
    serving = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    rec = Recorder()
    async with make_worker(settings, rec):
        token = traceparent_var.set(serving)  # as the runtime does for the request it serves
        try:
            handle = await client.submit("trace", {})
        finally:
            traceparent_var.reset(token)
        result = await handle.result(timeout=5)
    assert result["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert result["traceparent"] != serving  # a child span of the request, not the request itself


async def test_status_counts_queued_tasks_by_priority(
    scheduler: SchedulerService, nc: NatsClient, prefix: str
) -> None:
    await ok(nc, prefix, "submit_many", {"tasks": [{"type": "echo", "priority": p} for p in (0, 0, 3)]})
    await scheduler.monitor.check()
    status = await ok(nc, prefix, "status")
    assert status["queued"] == 3
    assert status["max_queued"] == FAST.max_queued
    reply = await call(nc, prefix, "workers")
    assert reply["payload"]["workers"] == []


async def test_stopping_a_worker_lets_running_tasks_finish_and_hands_back_the_rest(
    client: Client, settings: ServiceSettings
) -> None:
    rec = Recorder()
    short = msgspec.structs.replace(settings, drain_timeout=0.5)
    worker = make_worker(short, rec, concurrency=2)
    await worker.start()
    quick = await client.submit("slow", {"seconds": 0.3})
    stuck = await client.submit("block", {})
    await asyncio.wait_for(rec.started.wait(), 5)
    await wait_for(lambda: len(worker.running.running) == 2)  # both are running
    await worker.stop()  # drains: `quick` finishes, `stuck` is NAKed back at the drain timeout
    assert (await quick.record()).status == "succeeded"
    assert (await stuck.record()).status != "succeeded"
    rec.gate.set()
    async with make_worker(settings, rec):
        assert await stuck.result(timeout=3) == "unblocked"  # at once, not after ack_wait


async def test_a_lost_worker_s_task_is_redelivered_after_its_lease_with_its_checkpoint(
    client: Client, settings: ServiceSettings
) -> None:
    alone = msgspec.structs.replace(settings, instance="lost-1", metrics_port=-1)
    lost = Worker("lost", settings=alone, scheduler=FAST)
    resumed: list[Any] = []

    @lost.task("long")
    async def long_lost(ctx: TaskContext, payload: Any) -> None:
        await ctx.checkpoint({"done": 7})
        await asyncio.Event().wait()  # never returns: its process is about to vanish

    await lost.start()
    handle = await client.submit("long", {})
    await wait_for(lambda: bool(lost.running.running), 5)
    await asyncio.sleep(0.1)
    # The worker vanishes without a word (as under kill -9): its connection just closes.
    gone = lost.running
    for loop_task in [*gone._loops, gone._heartbeat_task]:
        assert loop_task is not None
        loop_task.cancel()
    await gone.nc.close()
    survivor = Worker(
        "survivor", settings=msgspec.structs.replace(settings, instance="survivor-1"), scheduler=FAST
    )

    @survivor.task("long")
    async def long_resumed(ctx: TaskContext, payload: Any) -> Any:
        resumed.append((ctx.attempt, ctx.resume_state))
        return ctx.resume_state

    async with survivor:
        assert await handle.result(timeout=FAST.ack_wait + 5) == {"done": 7}
    for running in list(gone.running.values()):
        running.task.cancel()
    assert resumed == [(2, {"done": 7})]
    assert (await handle.record()).worker == "survivor-1"


async def test_results_of_many_tasks_in_order(client: Client, settings: ServiceSettings) -> None:
    rec = Recorder()
    async with make_worker(settings, rec, concurrency=8):
        items: list[dict[str, Any]] = [{"type": "echo", "payload": {"i": i}} for i in range(200)]
        items.insert(7, {"type": "fail", "max_retries": 0})
        handles = await client.submit_many(items)
        results = await client.results(handles, timeout=10)
    assert [r.id for r in results] == [h.id for h in handles]
    assert results[7].status == "failed"
    assert [r.result for r in results[:7] + results[8:]] == [{"i": i} for i in range(200)]


async def test_held_tasks_survive_their_scheduler_and_another_replica_adopts_them(
    nc: NatsClient, prefix: str, settings: ServiceSettings
) -> None:
    client = Client(nc, prefix=prefix)
    rec = Recorder()
    first = SchedulerService(msgspec.structs.replace(settings, instance="sched-a"), FAST)
    second = SchedulerService(msgspec.structs.replace(settings, instance="sched-b"), FAST)
    await first.start()
    async with make_worker(settings, rec, concurrency=2):
        blocker = await client.submit("block", {})
        dependent = await client.submit("note", {"n": "after the blocker"}, dependencies=[blocker])
        assert len(first.held) == 1
        await second.start()
        await first.stop()  # the replica that held it is gone
        await wait_for(lambda: len(second.held) == 1, 5)
        rec.gate.set()
        await dependent.result(timeout=5)
        await second.stop()
    assert rec.names() == ["after the blocker"]


async def test_not_before_holds_a_task_until_its_time(client: Client, settings: ServiceSettings) -> None:
    import datetime

    rec = Recorder()
    async with make_worker(settings, rec):
        when = datetime.datetime.now(tz=datetime.UTC) + datetime.timedelta(seconds=0.4)
        handle = await client.submit("note", {"n": "later"}, not_before=when)
        assert (await handle.record()).status == "scheduled"
        await handle.result(timeout=5)
        record = await handle.record()
    assert record.started is not None
    assert record.started >= when.timestamp()


async def test_a_task_longer_than_the_lease_keeps_it(client: Client, settings: ServiceSettings) -> None:
    short_lease = msgspec.structs.replace(FAST, ack_wait=0.6)
    rec = Recorder()
    async with make_worker(settings, rec, sched=short_lease), make_worker(settings, rec, sched=short_lease):
        handle = await client.submit("slow", {"seconds": 1.5})  # 2.5 leases
        assert await handle.result(timeout=5) == 1  # attempt 1 finished: never redelivered
    assert [(t, a) for t, _, a, _ in rec.runs] == [("slow", 1)]


async def test_a_slow_reader_loses_deltas_but_not_snapshots_or_the_end(
    client: Client, settings: ServiceSettings
) -> None:
    rec = Recorder()
    async with make_worker(settings, rec):
        handle = await client.submit("progress", {"steps": 400, "pause": 0.3}, delay=0.3)
        updates = []
        async for update in handle.updates():
            updates.append(update)
            await asyncio.sleep(0.005)  # slower than the task publishes
    kinds = [u.kind for u in updates]
    assert kinds.count("progress") < 400  # deltas were dropped ...
    assert kinds.count("snapshot") == 40  # ... snapshots were not
    assert kinds[-1] == "done"
    assert updates[-1].data.result == "done"
