"""Tasks held back by the scheduler: waiting for dependencies, or for their `not_before` time.

A held task has its record (status waiting or scheduled) and an index key `held.<id>` in KV
`corral_tasks`, so a restarted scheduler rebuilds this registry from KV, and every replica
adopts the held tasks of one that stopped. Releasing or cancelling a held task first claims it
(deletes its index key at the revision read), so of several replicas exactly one acts. It is released onto
the queue when every dependency has succeeded and its time has come; a dependency that failed
or was cancelled cancels it, and that cascades to its own dependents.

Dependency outcomes arrive as core events (`<prefix>.task.<id>.done|failed|cancelled`); a
periodic pass re-reads the outcome of every dependency still awaited, so a missed event (the
scheduler was restarting) delays a release by at most one pass, never forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from corral.component import cancel_and_wait
from corral.scheduling.messages import FINAL, Status, TaskRecord

__all__ = ["HeldTask", "HeldTasks"]

log = logging.getLogger("corral.scheduler")


@dataclass(slots=True)
class HeldTask:
    record: TaskRecord
    waiting_on: set[str] = field(default_factory=set)


Release = Callable[[list[TaskRecord]], Awaitable[None]]
Cancel = Callable[[TaskRecord, str], Awaitable[None]]
StatusOf = Callable[[str], Awaitable[Status | None]]


class HeldTasks:
    def __init__(
        self,
        release: Release,
        cancel: Cancel,
        status_of: StatusOf,
        *,
        refresh: Callable[[], Awaitable[int]] | None = None,
        interval: float,
    ) -> None:
        self._release = release
        self._refresh = refresh
        self._cancel = cancel
        self._status_of = status_of
        self.interval = interval
        self.tasks: dict[str, HeldTask] = {}
        self.dependents: dict[str, set[str]] = {}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._loop_task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self.tasks)

    def add(self, record: TaskRecord, waiting_on: set[str]) -> None:
        self.tasks[record.id] = HeldTask(record, set(waiting_on))
        for dep in waiting_on:
            self.dependents.setdefault(dep, set()).add(record.id)
        self._wake.set()

    def remove(self, task_id: str) -> HeldTask | None:
        held = self.tasks.pop(task_id, None)
        if held is not None:
            for dep in held.waiting_on:
                if (waiting := self.dependents.get(dep)) is not None:
                    waiting.discard(task_id)
                    if not waiting:
                        del self.dependents[dep]
        return held

    def has_dependents(self) -> bool:
        return bool(self.dependents)

    def is_awaited(self, task_id: str) -> bool:
        return task_id in self.dependents

    async def finished(self, task_id: str, status: Status) -> None:
        """A task ended: release or cancel the tasks that waited for it."""
        if status not in FINAL or task_id not in self.dependents:
            return
        async with self._lock:
            waiting = self.dependents.pop(task_id, set())
            if status is Status.SUCCEEDED:
                for dependent in waiting:
                    if (held := self.tasks.get(dependent)) is not None:
                        held.waiting_on.discard(task_id)
                await self._release_due()
            else:
                for dependent in sorted(waiting):
                    held = self.remove(dependent)
                    if held is not None:
                        reason = f"dependency {task_id} {status.value}"
                        await self._cancel(held.record, reason)
                        # Its own dependents go the same way.
                        await self._cascade(dependent, reason)

    async def _cascade(self, task_id: str, reason: str) -> None:
        for dependent in sorted(self.dependents.pop(task_id, set())):
            held = self.remove(dependent)
            if held is not None:
                await self._cancel(held.record, f"{reason} (via {task_id})")
                await self._cascade(dependent, reason)

    async def _release_due(self) -> None:
        now = time.time()
        due = [
            h.record
            for h in self.tasks.values()
            if not h.waiting_on and (h.record.not_before is None or h.record.not_before <= now)
        ]
        if not due:
            return
        for record in due:
            self.remove(record.id)
        try:
            await self._release(due)
        except Exception:
            for record in due:  # keep them held; the next pass tries again
                self.add(record, set())
            raise

    async def reconcile(self) -> None:
        """Re-read the outcome of every awaited dependency (covers missed events)."""
        for dep in list(self.dependents):
            status = await self._status_of(dep)
            if status is None:
                status = Status.CANCELLED  # the dependency's record is gone: it can never succeed
            await self.finished(dep, status)

    async def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop(), name="scheduler-held")

    async def stop(self) -> None:
        if self._loop_task is not None:
            await cancel_and_wait(self._loop_task)
            self._loop_task = None

    def _next_wake(self) -> float:
        times = [h.record.not_before for h in self.tasks.values() if not h.waiting_on and h.record.not_before]
        return max(0.0, min(times) - time.time()) if times else self.interval

    async def _loop(self) -> None:
        last_reconcile = 0.0
        while True:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(self.interval, self._next_wake()))
            try:
                async with self._lock:
                    await self._release_due()
                if time.monotonic() - last_reconcile >= self.interval:
                    last_reconcile = time.monotonic()
                    if self._refresh is not None:
                        await self._refresh()
                    await self.reconcile()
            except Exception as exc:  # JetStream restarting: try again next pass
                log.warning("held tasks pass failed: %r", exc)
                await asyncio.sleep(min(1.0, self.interval))
