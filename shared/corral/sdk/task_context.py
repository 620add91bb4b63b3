"""`TaskContext`: what a task handler gets besides its payload.

@worker.task("resize")
async def resize(ctx: TaskContext, payload: Resize) -> dict[str, int]:
    state = ctx.resume_state or {"done": 0}       # the last checkpoint after a redelivery
    for i in range(state["done"], payload.count):
        if ctx.cancelled:                           # cancel() was called: stop early
            break
        ...
        await ctx.progress(100 * i / payload.count, {"done": i})
        await ctx.checkpoint({"done": i})
    return {"resized": payload.count}
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from corral.scheduling.messages import TaskProgress

__all__ = ["TaskContext"]

_encode = msgspec.json.Encoder().encode


class TaskContext:
    def __init__(
        self,
        *,
        task_id: str,
        type_: str,
        attempt: int,
        max_retries: int,
        resume_state: Any,
        traceparent: str,
        worker: str,
        publish: Callable[[str, bytes], Awaitable[None]],
        save_checkpoint: Callable[[str, bytes], Awaitable[None]],
        snapshot_every: int,
    ) -> None:
        self.task_id = task_id
        self.type = type_
        self.attempt = attempt  # 1 on the first delivery
        self.max_retries = max_retries
        self.resume_state = resume_state  # the last checkpoint of an earlier attempt, or None
        self.traceparent = traceparent
        self.worker = worker
        self.cancel_event = asyncio.Event()  # set when the task is cancelled or times out
        self.cancel_reason = ""
        self._publish = publish
        self._save_checkpoint = save_checkpoint
        self._snapshot_every = snapshot_every
        self._seq = 0
        self._percent: float | None = None
        self._data: Any = None
        self.checkpointed = False

    @property
    def cancelled(self) -> bool:
        """True once cancel() was called for this task (or it ran out of time): stop soon. Safe to
        read from a thread running CPU-bound work."""
        return self.cancel_event.is_set()

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt > self.max_retries

    def cancel(self, reason: str) -> None:
        if not self.cancel_event.is_set():
            self.cancel_reason = reason
            self.cancel_event.set()

    async def progress(self, percent: float | None = None, data: Any = None) -> None:
        """Publish a delta on `<prefix>.task.<id>.progress`; every N deltas also a full snapshot
        (the latest percent and every data key so far) on `.snapshot`. Fire and forget: a slow
        watcher misses deltas, never the snapshot that follows or the final result."""
        self._seq += 1
        if percent is not None:
            self._percent = float(percent)
        if isinstance(data, dict) and isinstance(self._data, dict):
            self._data = {**self._data, **data}
        elif data is not None:
            self._data = data
        delta = TaskProgress(
            id=self.task_id, seq=self._seq, percent=percent, data=data, timestamp=time.time()
        )
        await self._publish("progress", _encode(delta))
        if self._seq % self._snapshot_every == 0:
            await self.publish_snapshot()

    async def publish_snapshot(self) -> None:
        snapshot = TaskProgress(
            id=self.task_id, seq=self._seq, percent=self._percent, data=self._data, snapshot=True
        )
        await self._publish("snapshot", _encode(snapshot))

    async def checkpoint(self, state: Any) -> None:
        """Persist `state` (JSON-able) in KV; a redelivery of this task starts with it as
        `resume_state`. Waits until JetStream has stored it."""
        await self._save_checkpoint(self.task_id, _encode(state))
        self.checkpointed = True
