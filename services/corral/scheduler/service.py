"""The scheduler service: `<prefix>.scheduler.<verb>` over the task queue.

Thin by design: requests decode into the Structs of `corral.scheduling.messages` (bad input is
a VALIDATION reply naming the field), submission is `Submitter`, held tasks `HeldTasks`, dead
letters `DeadLetters`, and a JetStream that does not answer becomes UNAVAILABLE.

The scheduler is not on a task's execution path: workers pull from CORRAL_TASKS and write
results themselves, so tasks already queued keep running while the scheduler restarts.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from corral.bus import ensure_stream, events_stream_spec
from corral.config import RecurringConfig
from corral.errors import NotFoundError, UnavailableError
from corral.protocol import TRACEPARENT_HEADER
from corral.runtime import RequestContext, Service, ServiceSettings
from corral.scheduler.dlq import DeadLetters
from corral.scheduler.held import HeldTasks
from corral.scheduler.monitor import Monitor, Workers
from corral.scheduler.queue import TaskQueue
from corral.scheduler.recurring_api import register_recurring_endpoints
from corral.scheduler.recurring_runner import (
    RecurringRunner,
    TickCollector,
    TickSubmission,
    TickSubmitted,
    recurring_from_env,
)
from corral.scheduler.submit import Submitter
from corral.scheduling.messages import (
    FINAL,
    CancelReply,
    DeadLetter,
    DlqIdRequest,
    DlqListRequest,
    DlqPurgeRequest,
    ListRequest,
    Status,
    SubmitManyRequest,
    SubmitRequest,
    Submitted,
    TaskDone,
    TaskIdRequest,
    TaskRecord,
    TaskResult,
)
from corral.scheduling.publisher import AsyncPublisher
from corral.scheduling.resources import ensure_resources
from corral.scheduling.routing import LEVELS
from corral.scheduling.settings import SchedulerSettings
from corral.scheduling.store import TaskStore, overlay

__all__ = ["SchedulerService"]

log = logging.getLogger("corral.scheduler")

R = TypeVar("R")
_encode = msgspec.json.Encoder().encode

_JETSTREAM_DOWN = (
    TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionClosedError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
)


def _jetstream_errors(func: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    @functools.wraps(func)
    async def wrapped(*args: Any, **kwargs: Any) -> R:
        try:
            return await func(*args, **kwargs)
        except _JETSTREAM_DOWN as exc:
            raise UnavailableError(f"JetStream did not complete the request ({exc!r}); retry") from exc

    return wrapped


class SchedulerService(Service):
    def __init__(
        self,
        settings: ServiceSettings | None = None,
        scheduler: SchedulerSettings | None = None,
        *,
        recurring: dict[str, RecurringConfig] | None = None,
    ) -> None:
        """`recurring`: the schedules of corral.toml (default: from the `CORRAL_CONFIG` file)."""
        super().__init__(
            "scheduler", settings=settings, description="corral scheduler: durable priority task queue"
        )
        self.scheduler_settings = scheduler or SchedulerSettings.from_env()
        self.workers = Workers(expiry=max(10.0, 5 * self.settings.heartbeat_interval))
        self._subs: list[Subscription] = []
        self._outcome_subs: list[Subscription] = []
        self._store: TaskStore | None = None
        self._queue: TaskQueue | None = None
        self._held: HeldTasks | None = None
        self._submitter: Submitter | None = None
        self._dlq: DeadLetters | None = None
        self._monitor: Monitor | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._gauges = False
        self._recurring_configured = recurring
        self.recurring: RecurringRunner | None = None

    # --- wiring ---------------------------------------------------------------------------------
    @property
    def store(self) -> TaskStore:
        assert self._store is not None, "the scheduler is not started"
        return self._store

    @property
    def held(self) -> HeldTasks:
        assert self._held is not None, "the scheduler is not started"
        return self._held

    @property
    def monitor(self) -> Monitor:
        assert self._monitor is not None, "the scheduler is not started"
        return self._monitor

    async def setup(self) -> None:
        s, subjects = self.scheduler_settings, self.subjects
        await ensure_stream(self.js, events_stream_spec(subjects))
        buckets = await ensure_resources(self.js, subjects, s)
        publisher = AsyncPublisher(self.nc)
        self._store = TaskStore(self.js, subjects, buckets, publisher)
        self._queue = TaskQueue(self.nc, self.js, subjects, s, publisher)
        self._held = HeldTasks(
            self._release,
            self._cancel_held,
            self.store.status,
            refresh=self._adopt_held,
            interval=min(2.0, s.monitor_interval),
        )
        self._submitter = Submitter(s, self.store, self._queue, self._held, self._sync_outcome_watch)
        self._dlq = DeadLetters(self.js, subjects)
        self._monitor = Monitor(self.js, subjects.tasks_stream, self.workers, interval=s.monitor_interval)
        await self._load_held()
        self._subs = [await self.nc.subscribe(subjects.worker_heartbeats_all, cb=self.workers.on_heartbeat)]
        await self._sync_outcome_watch()
        await self._held.start()
        await self._monitor.start()
        if not self._gauges:
            self._gauges = True
            m = self.metrics
            m.add_gauge_callback(
                "tasks_queued", "Tasks in CORRAL_TASKS (waiting or running)", lambda: self.monitor.depth
            )
            m.add_gauge_callback(
                "tasks_held", "Tasks waiting for dependencies or their time", lambda: len(self.held)
            )
            m.add_gauge_callback(
                "consumers_stalled",
                "Queue consumers at max_ack_pending with tasks waiting (JetStream delivers no more)",
                lambda: len(self.monitor.stalled),
            )
            m.add_gauge_callback("workers", "Live workers", lambda: len(self.workers.alive()))
        for verb, payload_type, handler in (
            ("status", None, self._status),
            ("submit", SubmitRequest, self._submit),
            ("submit_many", SubmitManyRequest, self._submit_many),
            ("get", TaskIdRequest, self._get),
            ("cancel", TaskIdRequest, self._cancel),
            ("list", ListRequest, self._list),
            ("workers", None, self._workers),
            ("dlq.list", DlqListRequest, self._dlq_list),
            ("dlq.show", DlqIdRequest, self._dlq_show),
            ("dlq.retry", DlqIdRequest, self._dlq_retry),
            ("dlq.purge", DlqPurgeRequest, self._dlq_purge),
        ):
            self.endpoint(verb, payload_type)(_jetstream_errors(handler))
        await self._start_recurring()

    async def teardown(self) -> None:
        if self.recurring is not None:
            await self.recurring.stop()
        for sub in [*self._subs, *self._outcome_subs]:
            await sub.unsubscribe()
        self._subs, self._outcome_subs = [], []
        if self._held is not None:
            await self._held.stop()
        if self._monitor is not None:
            await self._monitor.stop()
        if self._background:
            await asyncio.wait(list(self._background), timeout=5)
        if self._submitter is not None:
            await self._submitter.flush()

    async def _load_held(self) -> None:
        """Rebuild the registry of held tasks from their index keys in KV."""
        adopted = await self._adopt_held()
        if adopted:
            log.info("holding %d tasks from before the restart", adopted)
            await self.held.reconcile()

    async def _adopt_held(self) -> int:
        """Hold the tasks whose index key exists but which this replica does not know (held by a
        replica that stopped); forget those another replica released or cancelled."""
        keys = set(await self.store.keys("held"))
        adopted = 0
        for task_id in keys - set(self.held.tasks):
            record = await self.store.raw_record(task_id)
            if record is None or record.status in FINAL:
                await self.store.unhold(task_id)
                continue
            waiting = {d for d in record.dependencies if await self.store.status(d) is not Status.SUCCEEDED}
            self.held.add(record, waiting)
            adopted += 1
        for task_id in set(self.held.tasks) - keys:
            if time.time() - self.held.tasks[task_id].record.submitted > 5.0:  # not one being written
                self.held.remove(task_id)
        await self._sync_outcome_watch()
        return adopted

    # --- recurring tasks: corral.scheduler.recurring_runner, submitting through _submitter ------
    async def _start_recurring(self) -> None:
        if self._recurring_configured is None:
            self._recurring_configured = recurring_from_env()
        if self.recurring is None:  # once per process: restart() runs setup() again
            self.metrics.registry.register(
                TickCollector(self.metrics.prefix, lambda: self.recurring.trackers if self.recurring else {})
            )
        self.recurring = RecurringRunner(
            self.nc,
            self.js,
            self.subjects,
            self._submit_tick,
            configured=self._recurring_configured,
            instance=self.instance,
        )
        register_recurring_endpoints(self, self.recurring)
        await self.recurring.start()

    async def _submit_tick(self, tick: TickSubmission) -> TickSubmitted:
        assert self._submitter is not None
        request = SubmitRequest(
            type=tick.type,
            payload=tick.payload,
            name=tick.name,
            priority=tick.priority,
            capabilities=tick.capabilities,
            idempotency_key=tick.idempotency_key,
        )
        [reply] = await self._submitter.submit([request])
        return TickSubmitted(reply.id, reply.duplicate)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- outcomes of tasks ----------------------------------------------------------------------
    async def _sync_outcome_watch(self) -> None:
        """Listen to the end events of tasks only while some held task waits for one: otherwise
        every task's done event would cost the scheduler a message. The subscription is made
        before the dependency is queued (same connection, so the server has it first); the
        held-task pass re-reads outcomes, covering anything missed in between."""
        needed = self.held.has_dependents()
        if needed and not self._outcome_subs:
            self._outcome_subs = [
                await self.nc.subscribe(self.subjects.task_events_of(kind), cb=self._on_outcome)
                for kind in ("done", "failed", "cancelled")
            ]
        elif not needed and self._outcome_subs:
            subs, self._outcome_subs = self._outcome_subs, []
            for sub in subs:
                await sub.unsubscribe()

    async def _on_outcome(self, msg: Msg) -> None:
        # Every task's done event lands here: only the id is read unless someone waits for it.
        parts = msg.subject.split(".")
        task_id, kind = parts[-2], parts[-1]
        if not self.held.is_awaited(task_id):
            return
        status = {"done": Status.SUCCEEDED, "failed": Status.FAILED}.get(kind, Status.CANCELLED)
        self._spawn(self.held.finished(task_id, status))

    async def _release(self, records: list[TaskRecord]) -> None:
        assert self._queue is not None
        claims = await asyncio.gather(*(self.store.claim(r.id) for r in records))
        records = [r for r, mine in zip(records, claims, strict=True) if mine]
        if not records:
            return
        # The queued record replaces the held one only if no worker has written since (a fast
        # task may finish before this write lands).
        revisions = await asyncio.gather(*(self.store.revision(r.id) for r in records))
        acks = await self._queue.enqueue([r.spec for r in records])
        now = time.time()
        writes = [
            await self.store.put_async(
                msgspec.structs.replace(r, status=Status.QUEUED, seq=ack.seq, queued=now), expect=rev
            )
            for r, ack, rev in zip(records, acks, revisions, strict=True)
        ]
        await asyncio.gather(*writes, return_exceptions=True)

    async def _cancel_held(self, record: TaskRecord, reason: str) -> None:
        if await self.store.claim(record.id):
            await self._finish_cancelled(record, reason)

    async def _finish_cancelled(self, record: TaskRecord, reason: str) -> None:
        now = time.time()
        cancelled = msgspec.structs.replace(record, status=Status.CANCELLED, reason=reason, finished=now)
        result = TaskResult(
            id=record.id, status=Status.CANCELLED, reason=reason, attempts=record.attempts, finished=now
        )
        await asyncio.gather(self.store.put(cancelled), self.store.put_result(result))
        event = _encode(TaskDone(id=record.id, status=Status.CANCELLED, reason=reason))
        headers = {TRACEPARENT_HEADER: record.traceparent} if record.traceparent else None
        await self.nc.publish(self.subjects.task_event(record.id, "cancelled"), event, headers=headers)
        await self.nc.publish(self.subjects.event("task", "cancelled"), event, headers=headers)

    # --- endpoints ------------------------------------------------------------------------------
    async def _submit(self, req: SubmitRequest, ctx: RequestContext) -> Submitted:
        assert self._submitter is not None
        replies = await self._submitter.submit([req], ctx.headers.get(TRACEPARENT_HEADER, ""))
        return replies[0]

    async def _submit_many(self, req: SubmitManyRequest, ctx: RequestContext) -> dict[str, list[Submitted]]:
        assert self._submitter is not None
        return {"tasks": await self._submitter.submit(req.tasks, ctx.headers.get(TRACEPARENT_HEADER, ""))}

    async def _record(self, task_id: str) -> TaskRecord:
        record = await self.store.record(task_id)
        if record is None and self._submitter is not None and task_id in self._submitter.pending:
            record = overlay(self._submitter.pending[task_id], await self.store.result(task_id))
        if record is None:
            raise NotFoundError(f"no task {task_id!r}: `corral tasks` lists the tasks there are")
        return record

    async def _get(self, req: TaskIdRequest, ctx: RequestContext) -> TaskRecord:
        return await self._record(req.id)

    async def _cancel(self, req: TaskIdRequest, ctx: RequestContext) -> CancelReply:
        held = self.held.remove(req.id)
        record = held.record if held else await self._record(req.id)
        if record.status in FINAL:
            return CancelReply(req.id, record.status, False)
        if record.seq:
            # A queued task never runs: its message leaves the queue. A running one is told below.
            try:
                await self.js.delete_msg(self.subjects.tasks_stream, record.seq)
            except nats.js.errors.NotFoundError:
                pass
            except nats.js.errors.APIError as exc:
                log.info("task %s: its message was not deleted: %s", req.id, exc)
        reason = req.reason or "cancelled on request"
        await self._finish_cancelled(record, reason)
        if held:
            await self.store.unhold(req.id)
        await self.held.finished(req.id, Status.CANCELLED)
        return CancelReply(req.id, Status.CANCELLED, True)

    async def _list(self, req: ListRequest, ctx: RequestContext) -> dict[str, list[TaskRecord]]:
        ids = sorted(await self.store.keys("task"), reverse=True)  # ids sort by submission: newest first
        found: list[TaskRecord] = []
        batch = 64
        for start in range(0, len(ids), batch):
            records = await asyncio.gather(*(self.store.record(i) for i in ids[start : start + batch]))
            for record in records:
                if record is None:
                    continue
                if (req.status is None or record.status is req.status) and (req.type in (None, record.type)):
                    found.append(record)
                    if len(found) >= req.limit:
                        return {"tasks": found}
        return {"tasks": found}

    async def _workers(self, _: None, ctx: RequestContext) -> dict[str, Any]:
        return {"workers": self.workers.alive()}

    async def _status(self, _: None, ctx: RequestContext) -> dict[str, Any]:
        monitor = self.monitor
        assert self._submitter is not None
        return {
            **self.identity(),
            "queued": monitor.depth,
            "queued_by_priority": {str(p): monitor.queued_at(p) for p in LEVELS},
            "max_queued": self.scheduler_settings.max_queued,
            "held": len(self.held),
            "submitted": self._submitter.submitted,
            "workers": len(self.workers.alive()),
            "consumers": monitor.consumers,
            "stalled": [c.name for c in monitor.stalled],
            "unserved": [c.name for c in monitor.consumers if c.unserved],
            "checked": monitor.checked,
        }

    # --- dead letters ---------------------------------------------------------------------------
    @property
    def dlq(self) -> DeadLetters:
        assert self._dlq is not None, "the scheduler is not started"
        return self._dlq

    async def _dlq_list(self, req: DlqListRequest, ctx: RequestContext) -> dict[str, Any]:
        letters, total = await asyncio.gather(self.dlq.list(req.limit), self.dlq.count())
        return {"dead_letters": letters, "total": total}

    async def _dlq_show(self, req: DlqIdRequest, ctx: RequestContext) -> DeadLetter:
        return await self.dlq.show(req.id)

    async def _dlq_retry(self, req: DlqIdRequest, ctx: RequestContext) -> Submitted:
        """Queue a dead-lettered task again, as a fresh run of the same id (attempts from 1)."""
        assert self._queue is not None
        letter = await self.dlq.show(req.id)
        spec = letter.task
        await self.store.delete_result(spec.id)
        revision = await self.store.revision(spec.id)
        acks = await self._queue.enqueue([spec], msg_ids=[f"{spec.id}.retry.{letter.seq}"])
        record = spec.record(status=Status.QUEUED, seq=acks[0].seq, queued=time.time())
        await asyncio.gather(await self.store.put_async(record, expect=revision), return_exceptions=True)
        await self.dlq.remove(spec.id)
        event = _encode(
            TaskDone(id=spec.id, status=Status.QUEUED, reason="retried from the dead-letter queue")
        )
        await self.nc.publish(self.subjects.event("task", "dlq_retried"), event)
        return Submitted(spec.id, Status.QUEUED)

    async def _dlq_purge(self, req: DlqPurgeRequest, ctx: RequestContext) -> dict[str, int]:
        if req.id is None:
            purged = await self.dlq.purge()
        else:
            purged = await self.dlq.remove(req.id)
            if not purged:
                raise NotFoundError(f"task {req.id!r} is not in the dead-letter queue")
        await self.nc.publish(
            self.subjects.event("task", "dlq_purged"), _encode({"purged": purged, "id": req.id})
        )
        return {"purged": purged}
