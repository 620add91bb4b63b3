"""`Limiter`: at most `limit` holders at once, the rest wait in turn; the limit can change live.

Used for a handler's `concurrency=` (fixed) and for the module-wide cap the `throttle` control
verb sets (changed at run time; `None` removes it). Lowering the limit never interrupts a holder:
the excess finishes, and newcomers wait until the count is under the new limit.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ["Limiter"]


class Limiter:
    def __init__(self, limit: int | None = None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"a concurrency limit must be at least 1, got {limit}")
        self.limit = limit
        self.active = 0
        self.waiting = 0
        self._changed = asyncio.Condition()

    def _has_room(self) -> bool:
        return self.limit is None or self.active < self.limit

    def try_acquire(self) -> bool:
        """Take a place if one is free and nobody waits ahead (the common case, no coroutine)."""
        if self._has_room() and not self.waiting:
            self.active += 1  # no lock: one event loop, no await in between
            return True
        return False

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        async with self._changed:
            self.waiting += 1
            try:
                await self._changed.wait_for(self._has_room)
            finally:
                self.waiting -= 1
            self.active += 1

    async def release(self) -> None:
        if self.release_nowait():
            await self.wake()

    def release_nowait(self) -> bool:
        """Give the place back; True when someone waits and `wake()` must be awaited."""
        self.active -= 1
        return self.waiting > 0

    async def wake(self) -> None:
        async with self._changed:
            self._changed.notify_all()  # a woken waiter that was cancelled must not strand the rest

    async def set_limit(self, limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"a concurrency limit must be at least 1, got {limit}")
        async with self._changed:
            self.limit = limit
            self._changed.notify_all()

    async def __aenter__(self) -> Limiter:
        await self.acquire()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release()
