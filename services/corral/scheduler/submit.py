"""Submission: validate a batch, give each task its id, hold or queue it, write its record.

One batch costs one round of publishes to CORRAL_TASKS and one round of record writes, each
waited for together, whatever its size.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from corral.errors import ValidationError
from corral.scheduler.held import HeldTasks
from corral.scheduler.queue import TaskQueue
from corral.scheduling.graph import find_cycle
from corral.scheduling.ids import id_for_key, new_task_id
from corral.scheduling.messages import Backoff, Status, SubmitRequest, Submitted, TaskRecord, TaskResult, TaskSpec
from corral.scheduling.routing import route
from corral.scheduling.settings import SchedulerSettings
from corral.scheduling.store import TaskStore

__all__ = ["Submitter"]


class Submitter:
    def __init__(
        self, settings: SchedulerSettings, store: TaskStore, queue: TaskQueue, held: HeldTasks
    ) -> None:
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
        many = len(requests) > 1
        where = (lambda i: f"$.tasks[{i}]") if many else (lambda i: "$")
        ids = [id_for_key(r.idempotency_key) if r.idempotency_key else new_task_id() for r in requests]
        first_of: dict[str, int] = {}
        for index, task_id in enumerate(ids):
            first_of.setdefault(task_id, index)
        edges = {task_id: requests[i].dependencies for task_id, i in first_of.items()}
        if (cycle := find_cycle(edges)) is not None:
            i = first_of[cycle[0]]
            raise ValidationError(
                f"dependency cycle {' -> '.join(cycle)}: a task cannot wait for itself - "
                f"at `{where(i)}.dependencies`"
            )
        existing = await self._existing(requests, ids, first_of)
        outside = sorted({d for r in requests for d in r.dependencies if d not in first_of})
        statuses = dict(
            zip(outside, await asyncio.gather(*(self.store.status(d) for d in outside)), strict=True)
        )
        for index, req in enumerate(requests):
            for position, dep in enumerate(req.dependencies):
                if dep not in first_of and statuses.get(dep) is None:
                    raise ValidationError(
                        f"dependency {dep!r} is not a known task - at `{where(index)}.dependencies[{position}]`"
                    )

        replies: list[Submitted | None] = [None] * len(requests)
        ready: list[TaskSpec] = []
        held: list[tuple[TaskRecord, set[str]]] = []
        cancelled: list[TaskRecord] = []
        for index, (req, task_id) in enumerate(zip(requests, ids, strict=True)):
            if first_of[task_id] != index:  # the same idempotency key twice in one batch
                replies[index] = Submitted(task_id, Status.QUEUED, duplicate=True)
                continue
            if task_id in existing:
                replies[index] = Submitted(task_id, existing[task_id], duplicate=True)
                continue
            spec = self._spec(req, task_id, now, traceparent)
            bad = [d for d in req.dependencies if statuses.get(d) in (Status.FAILED, Status.CANCELLED)]
            waiting = {
                d for d in req.dependencies if d in first_of or statuses.get(d) is not Status.SUCCEEDED
            }
            if bad:
                reason = f"dependency {bad[0]} {statuses[bad[0]]}"
                cancelled.append(spec.record(status=Status.CANCELLED, reason=reason, finished=now))
            elif waiting or spec.not_before:
                status = Status.WAITING if waiting else Status.SCHEDULED
                held.append((spec.record(status=status), waiting))
            else:
                ready.append(spec)
        # Held tasks are registered before anything is queued, so a dependency that finishes at
        # once still finds its dependents.
        if many and ready:
            await self.queue.check_room(len(ready))
        for record, waiting in held:
            self.held.add(record, waiting)
        try:
            acks = await self.queue.enqueue(ready) if ready else []
        except Exception:
            for record, _ in held:
                self.held.remove(record.id)
            raise
        writes: list[asyncio.Future[Any]] = []
        for spec, ack in zip(ready, acks, strict=True):
            index = first_of[spec.id]
            if ack.duplicate and spec.idempotency_key:
                replies[index] = Submitted(spec.id, Status.QUEUED, duplicate=True)
                continue
            writes.append(self.store.put_async(spec.record(status=Status.QUEUED, seq=ack.seq, queued=now)))
            replies[index] = Submitted(spec.id, Status.QUEUED)
        for record, _ in held:
            writes.append(self.store.put_async(record))
            replies[first_of[record.id]] = Submitted(record.id, record.status)
        for record in cancelled:
            writes.append(self.store.put_async(record))
            result = TaskResult(id=record.id, status=Status.CANCELLED, reason=record.reason, finished=now)
            writes.append(self.store.put_result_async(result))
            replies[first_of[record.id]] = Submitted(record.id, Status.CANCELLED)
        await asyncio.gather(*writes)
        if held:
            await asyncio.gather(*(self.store.hold(record.id) for record, _ in held))
        self.submitted += len(ready) + len(held)
        return [r for r in replies if r is not None]

    async def _existing(
        self, requests: list[SubmitRequest], ids: list[str], first_of: dict[str, int]
    ) -> dict[str, Status]:
        """Tasks of this batch whose idempotency key was used before (beyond the dedup window too)."""
        keyed = [task_id for task_id, i in first_of.items() if requests[i].idempotency_key]
        if not keyed:
            return {}
        statuses = await asyncio.gather(*(self.store.status(task_id) for task_id in keyed))
        return {task_id: s for task_id, s in zip(keyed, statuses, strict=True) if s is not None}
