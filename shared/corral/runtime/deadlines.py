"""Many timeouts on one timer: what the call path uses instead of a `call_later` per call.

A `loop.call_later` costs 3-6 us on uvloop (a libuv timer in a heap, created and cancelled
for nearly every call, since nearly every call finishes in time); the orchestrator and each
module paid it on every call. Here a deadline goes into a bucket of `resolution` seconds
(rounded up, so a timeout never fires early, and at most `resolution` late), buckets are
dicts (adding and cancelling are a dict operation each), and one loop timer is armed for the
earliest bucket.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
from collections.abc import Callable

__all__ = ["DEFAULT_RESOLUTION", "Deadlines"]

log = logging.getLogger("corral.runtime")

DEFAULT_RESOLUTION = 0.005  # seconds

Handle = tuple[int, int]  # (bucket, key): what `cancel()` takes


class Deadlines:
    def __init__(self, resolution: float = DEFAULT_RESOLUTION) -> None:
        self.resolution = resolution
        self._buckets: dict[int, dict[int, Callable[[], None]]] = {}
        self._ticks: list[int] = []  # heap of bucket numbers that have a dict in _buckets
        self._keys = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._armed = math.inf  # the bucket the timer is armed for

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    def add(self, delay: float, callback: Callable[[], None]) -> Handle:
        """Call `callback()` once, `delay` seconds from now (up to `resolution` later)."""
        loop = asyncio.get_running_loop()
        tick = math.ceil((loop.time() + delay) / self.resolution)
        key = next(self._keys)
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = {}
            heapq.heappush(self._ticks, tick)
            if tick < self._armed:
                self._arm(loop, tick)
        bucket[key] = callback
        return tick, key

    def cancel(self, handle: Handle) -> None:
        """Forget a deadline (no-op when it has fired or was cancelled)."""
        bucket = self._buckets.get(handle[0])
        if bucket is not None:
            bucket.pop(handle[1], None)

    def clear(self) -> None:
        self._buckets.clear()
        self._ticks.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed = math.inf

    def _arm(self, loop: asyncio.AbstractEventLoop, tick: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = tick
        self._timer = loop.call_at(tick * self.resolution, self._fire)

    def _fire(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = None
        self._armed = math.inf
        now = loop.time()
        ticks = self._ticks
        while ticks and ticks[0] * self.resolution <= now:
            for callback in self._buckets.pop(heapq.heappop(ticks), {}).values():
                try:
                    callback()
                except Exception:  # one caller's timeout handling must not stop the others'
                    log.exception("a deadline callback failed")
        while ticks and not self._buckets.get(ticks[0]):  # cancelled to the last one
            self._buckets.pop(heapq.heappop(ticks), None)
        if ticks:
            self._arm(loop, ticks[0])
