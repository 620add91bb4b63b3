"""A bulkhead per module: at most `max_concurrent` calls in flight, the rest wait in a bounded
queue served by priority (0 critical first), FIFO within a priority."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from corral.errors import CallTimeoutError, OverloadedError
from corral.policy import BulkheadConfig
from corral.runtime.deadlines import Deadlines

__all__ = ["Bulkhead"]


class Bulkhead:
    def __init__(self, module: str, config: BulkheadConfig, deadlines: Deadlines | None = None) -> None:
        self.module = module
        self.config = config
        self._deadlines = deadlines or Deadlines()  # queue timeouts, without a loop timer each
        self.in_flight = 0
        # A heap of (priority, arrival, future); futures of callers who gave up stay in the heap
        # until popped, so `queued` counts only live ones.
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self.queued = 0

    @asynccontextmanager
    async def slot(self, priority: int, timeout: float) -> AsyncIterator[None]:
        """Hold one of the module's call slots; waiting counts against `timeout`."""
        await self.acquire(priority, timeout)
        try:
            yield
        finally:
            self.release()

    async def acquire(self, priority: int, timeout: float) -> None:
        """`slot()` without the context manager: then `release()` exactly once."""
        if not self.try_acquire():
            await self._wait(priority, timeout)

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody waits ahead; then `release()` it exactly once."""
        if self.in_flight < self.config.max_concurrent and not self.queued:
            self.in_flight += 1
            return True
        return False

    def release(self) -> None:
        """Give back a slot taken with `try_acquire()` (or held by `slot()`)."""
        self._hand_over()

    async def _wait(self, priority: int, timeout: float) -> None:
        if self.queued >= self.config.max_queue:
            raise OverloadedError(
                f"module {self.module!r} has {self.in_flight} calls in flight and {self.queued} queued "
                f"(max_concurrent {self.config.max_concurrent}, max_queue {self.config.max_queue}); back off"
            )
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        waiter: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), waiter))
        self.queued += 1
        timed_out = False

        def expire() -> None:
            nonlocal timed_out
            if not waiter.done():  # still queued at the deadline: leave the queue now
                timed_out = True
                waiter.cancel()
                self.queued -= 1

        # Not asyncio.wait_for: on 3.11 it swallows a cancellation that lands just as the slot is
        # handed over, and the cancelled caller would go on to make its call.
        deadline = self._deadlines.add(timeout, expire)
        try:
            await asyncio.shield(waiter)  # our cancellation must not cancel the waiter behind our back
        except asyncio.CancelledError:
            if timed_out:
                if task.cancelling() > cancelling:
                    raise  # cancelled as well: cancellation wins
                raise CallTimeoutError(
                    f"module {self.module!r}: no free call slot within {timeout:g}s "
                    f"({self.in_flight} in flight, max_concurrent {self.config.max_concurrent})"
                ) from None
            if waiter.done() and not waiter.cancelled():
                self._hand_over()  # we were given a slot but will not use it
            else:
                waiter.cancel()
                self.queued -= 1
            raise
        finally:
            self._deadlines.cancel(deadline)

    def _hand_over(self) -> None:
        """Give the freed slot to the most urgent live waiter, or return it."""
        while self._waiters:
            _, _, waiter = heapq.heappop(self._waiters)
            if not waiter.done():
                waiter.set_result(None)  # in_flight stays the same: the slot changes hands
                self.queued -= 1
                return
        self.in_flight -= 1
