"""Submission: validate a batch, give each task its id, hold or queue it, write its record.

One batch costs one round of publishes to CORRAL_TASKS, waited for together whatever its size,
before the reply; the records of queued tasks are written right after, without holding it up.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from corral.errors import ValidationError
from corral.scheduler.held import HeldTasks
from corral.scheduler.queue import TaskQueue
from corral.scheduling.graph import find_cycle
from corral.scheduling.ids import id_for_key, new_task_id
from corral.scheduling.messages import (
    Backoff,
    Status,
    SubmitRequest,
    Submitted,
    TaskRecord,
    TaskResult,
    TaskSpec,
)
from corral.scheduling.publisher import WRONG_LAST_SEQUENCE, PublishRefused
from corral.scheduling.routing import route
from corral.scheduling.settings import SchedulerSettings
from corral.scheduling.store import TaskStore

__all__ = ["Submitter"]

log = logging.getLogger("corral.scheduler")


class Submitter:
    def __init__(
        self,
        settings: SchedulerSettings,
        store: TaskStore,
        queue: TaskQueue,
        held: HeldTasks,
        on_hold: Callable[[], Awaitable[None]],
    ) -> None:
        self.on_hold = on_hold  # called after tasks are held, before their dependencies are queued
        self.pending: dict[str, TaskRecord] = {}  # queued records whose write is in flight
        self._writing: set[asyncio.Future[Any]] = set()  # record writes in flight
        self.settings = settings
        self.store = store
        self.queue = queue
        self.held = held
        self.submitted = 0

    def _spec(self, req: SubmitRequest, task_id: str, now: float, traceparent: str) -> TaskSpec:
        s = self.settings
        not_before = req.not_before if req.not_before is not None else None
        if req.delay:
            not_before = now + req.delay
        return TaskSpec(
            id=task_id,
            type=req.type,
            route=route(req.type, req.capabilities),
            payload=req.payload,
            name=req.name,
            priority=int(req.priority),
            capabilities=req.capabilities,
            dependencies=req.dependencies,
            timeout=req.timeout or s.default_timeout,
            max_retries=s.default_max_retries if req.max_retries is None else req.max_retries,
            backoff=req.backoff
            or Backoff(
                initial=s.backoff_initial,
                multiplier=s.backoff_multiplier,
                max=s.backoff_max,
                jitter=s.backoff_jitter,
            ),
            idempotency_key=req.idempotency_key,
            not_before=not_before if not_before and not_before > now else None,
            submitted=now,
            traceparent=traceparent,
        )

    async def submit(self, requests: list[SubmitRequest], traceparent: str = "") -> list[Submitted]:
        now = time.time()
        batch = _Batch(requests)
        if any(r.dependencies for r in requests):
            batch.refuse_cycles()
        existing = await self._existing(batch)
        statuses = await self._dependency_statuses(batch)
        plan = _Plan(len(requests))
        for index, (req, task_id) in enumerate(zip(requests, batch.ids, strict=True)):
            if batch.first_of[task_id] != index:  # the same idempotency key twice in one batch
                plan.replies[index] = Submitted(task_id, Status.QUEUED, duplicate=True)
            elif task_id in existing:
                plan.replies[index] = Submitted(task_id, existing[task_id], duplicate=True)
            else:
                plan.add(self._spec(req, task_id, now, traceparent), batch, statuses, now)
        await self._queue_and_record(plan, batch, now)
        return [r for r in plan.replies if r is not None]

    async def _dependency_statuses(self, batch: _Batch) -> dict[str, Status | None]:
        """How the dependencies outside the batch stand; an unknown one is refused."""
        if not any(r.dependencies for r in batch.requests):
            return {}
        outside = sorted({d for r in batch.requests for d in r.dependencies if d not in batch.first_of})
        found = await asyncio.gather(*(self.store.status(d) for d in outside))
        statuses = dict(zip(outside, found, strict=True))
        for index, req in enumerate(batch.requests):
            for position, dep in enumerate(req.dependencies):
                if dep not in batch.first_of and statuses.get(dep) is None:
                    raise ValidationError(
                        f"dependency {dep!r} is not a known task "
                        f"- at `{batch.where(index)}.dependencies[{position}]`"
                    )
        return statuses

    async def _queue_and_record(self, plan: _Plan, batch: _Batch, now: float) -> None:
        if len(batch.requests) > 1 and plan.ready:
            await self.queue.check_room(len(plan.ready))
        # Held and cancelled tasks are stored before anything is queued, so a dependency that
        # finishes at once finds its dependents, their index keys and their records.
        writes: list[asyncio.Future[Any]] = []
        for record, waiting in plan.held:
            self.held.add(record, waiting)
            writes.append(await self.store.put_async(record))
            plan.replies[batch.first_of[record.id]] = Submitted(record.id, record.status)
        for record in plan.cancelled:
            writes.append(await self.store.put_async(record))
            result = TaskResult(id=record.id, status=Status.CANCELLED, reason=record.reason, finished=now)
            writes.append(await self.store.put_result_async(result))
            plan.replies[batch.first_of[record.id]] = Submitted(record.id, Status.CANCELLED)
        if writes or plan.held:
            await asyncio.gather(*writes, *(self.store.hold(record.id) for record, _ in plan.held))
        if plan.held:
            await self.on_hold()
        try:
            acks = await self.queue.enqueue(plan.ready) if plan.ready else []
        except Exception:
            for record, _ in plan.held:  # the batch is refused whole
                self.held.remove(record.id)
                await self.store.unhold(record.id)
                await self.store.delete_record(record.id)
            raise
        queued: list[TaskRecord] = []
        for spec, ack in zip(plan.ready, acks, strict=True):
            index = batch.first_of[spec.id]
            if ack.duplicate and spec.idempotency_key:
                plan.replies[index] = Submitted(spec.id, Status.QUEUED, duplicate=True)
                continue
            queued.append(spec.record(status=Status.QUEUED, seq=ack.seq, queued=now))
            plan.replies[index] = Submitted(spec.id, Status.QUEUED)
        await self._record_queued(queued)
        self.submitted += len(plan.ready) + len(plan.held)

    async def _record_queued(self, records: list[TaskRecord]) -> None:
        """Write the records of queued tasks without holding up the reply: the task is durable
        in CORRAL_TASKS already. Until their writes are acknowledged the records are served
        from `pending`. Each write is create-only, so it never overwrites the final record of a
        task a worker has already finished. A callback settles each write (no task per
        submission); only a failed one gets a task, to try once more."""
        for record in records:
            self.pending[record.id] = record
            write = await self.store.put_async(record, create=True)
            self._writing.add(write)
            write.add_done_callback(functools.partial(self._settled, record))

    def _settled(self, record: TaskRecord, write: asyncio.Future[Any]) -> None:
        self._writing.discard(write)
        failure = None if write.cancelled() else write.exception()
        if write.cancelled() or (failure is not None and not _already_written(failure)):
            retry = asyncio.ensure_future(self._write_again(record))
            self._writing.add(retry)
            retry.add_done_callback(self._writing.discard)
            return
        self.pending.pop(record.id, None)

    async def _write_again(self, record: TaskRecord) -> None:
        try:  # once more, then the record is the worker's to write
            await (await self.store.put_async(record, create=True))
        except Exception as exc:
            if not _already_written(exc):
                log.warning("task %s: its queued record was not written: %r", record.id, exc)
        finally:
            self.pending.pop(record.id, None)

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait for the record writes still in flight (the scheduler is stopping)."""
        if self._writing:
            await asyncio.wait(list(self._writing), timeout=timeout)

    async def _existing(self, batch: _Batch) -> dict[str, Status]:
        """Tasks of this batch whose idempotency key was used before (beyond the dedup window too)."""
        keyed = [task_id for task_id, i in batch.first_of.items() if batch.requests[i].idempotency_key]
        if not keyed:
            return {}
        statuses = await asyncio.gather(*(self.store.status(task_id) for task_id in keyed))
        return {task_id: s for task_id, s in zip(keyed, statuses, strict=True) if s is not None}


def _already_written(exc: BaseException) -> bool:
    """A create-only write refused because the record exists (the worker wrote it first)."""
    return isinstance(exc, PublishRefused) and exc.err_code == WRONG_LAST_SEQUENCE


class _Batch:
    """The requests of one submission, their ids, and where each sits in the request body."""

    def __init__(self, requests: list[SubmitRequest]) -> None:
        self.requests = requests
        self.ids = [id_for_key(r.idempotency_key) if r.idempotency_key else new_task_id() for r in requests]
        self.first_of: dict[str, int] = {}
        for index, task_id in enumerate(self.ids):
            self.first_of.setdefault(task_id, index)

    def where(self, index: int) -> str:
        return f"$.tasks[{index}]" if len(self.requests) > 1 else "$"

    def refuse_cycles(self) -> None:
        edges = {task_id: self.requests[i].dependencies for task_id, i in self.first_of.items()}
        if (cycle := find_cycle(edges)) is not None:
            raise ValidationError(
                f"dependency cycle {' -> '.join(cycle)}: a task cannot wait for itself "
                f"- at `{self.where(self.first_of[cycle[0]])}.dependencies`"
            )


class _Plan:
    """What becomes of each new task: queued now, held back, or cancelled at once."""

    def __init__(self, size: int) -> None:
        self.replies: list[Submitted | None] = [None] * size
        self.ready: list[TaskSpec] = []
        self.held: list[tuple[TaskRecord, set[str]]] = []
        self.cancelled: list[TaskRecord] = []

    def add(self, spec: TaskSpec, batch: _Batch, statuses: dict[str, Status | None], now: float) -> None:
        deps = spec.dependencies
        bad = [d for d in deps if statuses.get(d) in (Status.FAILED, Status.CANCELLED)]
        waiting = {d for d in deps if d in batch.first_of or statuses.get(d) is not Status.SUCCEEDED}
        if bad:
            reason = f"dependency {bad[0]} {statuses[bad[0]]}"
            self.cancelled.append(spec.record(status=Status.CANCELLED, reason=reason, finished=now))
        elif waiting or spec.not_before:
            status = Status.WAITING if waiting else Status.SCHEDULED
            self.held.append((spec.record(status=status), waiting))
        else:
            self.ready.append(spec)
