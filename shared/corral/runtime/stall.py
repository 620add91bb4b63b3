"""`StallWatch`: says so, with the line it is stuck at, when a service's event loop is blocked.

A handler that runs CPU-bound code or a blocking call without awaiting holds the whole loop:
no heartbeat goes out, no task lease is renewed, no other request is answered. The
orchestrator then takes the instance for hung and restarts it, and the scheduler takes a
worker's task for lost and runs it again elsewhere. From the outside that looks like corral
misbehaving, so the instance says what happened, as asyncio's debug mode would, but always on
and while it happens:

* a thread checks a timestamp the loop refreshes every `tick`; once it is older than
  `threshold`, it logs a warning with the loop thread's current stack, once per stall;
* when the loop runs again, it logs how long it was blocked, and counts the stall.

The thread takes the GIL for a moment every tick and costs the loop one timer callback per tick.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable

__all__ = ["StallWatch"]

log = logging.getLogger("corral.runtime")

STACK_FRAMES = 12  # the innermost frames: where the loop is stuck, and what called it


class StallWatch:
    def __init__(
        self,
        name: str,
        threshold: float,
        *,
        on_stall: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.threshold = threshold
        self.tick = min(max(threshold / 4, 0.01), 0.25)
        self.on_stall = on_stall  # called in the loop with the seconds a stall lasted
        self.clock = clock
        self.stalls = 0
        self._beat = 0.0
        self._warned_at = 0.0  # the beat the current warning is about (0.0: none)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._timer: asyncio.TimerHandle | None = None
        self._lock = threading.Lock()  # the beat and the warning, between loop and watcher
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Watch the running loop (call from it)."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stop.clear()
        self._refresh()
        self._thread = threading.Thread(target=self._watch, name=f"{self.name}-stall-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _refresh(self) -> None:
        now = self.clock()
        with self._lock:
            self._beat = now
            warned_at, self._warned_at = self._warned_at, 0.0
        if warned_at:
            blocked = now - warned_at
            self.stalls += 1
            log.warning(
                "%s: the event loop ran again after being blocked for %.1fs",
                self.name,
                blocked,
                extra={"blocked_seconds": round(blocked, 3)},
            )
            if self.on_stall is not None:
                self.on_stall(blocked)
        assert self._loop is not None
        self._timer = self._loop.call_later(self.tick, self._refresh)

    def _watch(self) -> None:
        while not self._stop.wait(self.tick):
            with self._lock:
                beat = self._beat
                blocked = self.clock() - beat
                if self._warned_at == beat or blocked <= self.threshold:
                    continue  # running, or this stall is reported already
                self._warned_at = beat
            log.warning(
                "%s: the event loop is blocked (%.1fs so far): heartbeats, task leases and "
                "replies wait until it runs again. Run CPU-bound or blocking work with "
                "`await asyncio.to_thread(...)`. It is at:\n%s",
                self.name,
                blocked,
                self._stack(),
                extra={"blocked_seconds": round(blocked, 3)},
            )

    def _stack(self) -> str:
        frame = sys._current_frames().get(self._loop_thread)
        if frame is None:
            return "(the loop's thread is gone)"
        return "".join(traceback.format_stack(frame, limit=STACK_FRAMES)).rstrip()
