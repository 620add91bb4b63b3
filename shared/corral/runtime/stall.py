"""`StallWatch`: says so, with the line it is stuck at, when a service's event loop is blocked.

A handler that runs CPU-bound code or a blocking call without awaiting holds the whole loop:
no heartbeat goes out, no task lease is renewed, no other request is answered. The
orchestrator then takes the instance for hung and restarts it, and the scheduler takes a
worker's task for lost and runs it again elsewhere. From the outside that looks like corral
misbehaving, so the instance says what happened, while it happens:

* the heartbeat loop tells the watch when its next beat is due (`beat`);
* a thread sleeps until that beat is `threshold` seconds late; if it has not come by then, the
  loop is blocked, and the thread logs a warning with the loop thread's current stack, once;
* the late beat, when the loop runs again, logs how late it was and counts the stall.

So watching costs an idle process no wake-up of its loop (the heartbeat wakes it anyway) and
one short wake-up of the thread per beat. It sees what delays a heartbeat: what the
orchestrator and the health service would otherwise take for a dead process.
"""

from __future__ import annotations

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
        self.on_stall = on_stall  # called from the loop with how late the blocked beat was
        self.clock = clock
        self.stalls = 0
        self._due = 0.0  # clock() time the next beat is due
        self._warned_due = 0.0  # the due time the current warning is about (0.0: none)
        self._lock = threading.Lock()  # _due and _warned_due, between the loop and the thread
        self._loop_thread = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, next_due: float) -> None:
        """From the loop, at each beat: the next one is due at `next_due` (clock() time). The
        first call starts the watching thread."""
        now = self.clock()
        with self._lock:
            warned_due, self._warned_due = self._warned_due, 0.0
            self._due = next_due
        if warned_due:
            late = now - warned_due
            self.stalls += 1
            log.warning(
                "%s: the event loop ran again; it had been blocked for at least %.1fs",
                self.name,
                late,
                extra={"blocked_seconds": round(late, 3)},
            )
            if self.on_stall is not None:
                self.on_stall(late)
        if self._thread is None:
            self._loop_thread = threading.get_ident()
            self._stop.clear()
            self._thread = threading.Thread(target=self._watch, name=f"{self.name}-stall-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None

    def _watch(self) -> None:
        while True:
            with self._lock:
                due, warned = self._due, self._warned_due == self._due
            # Asleep until the beat is `threshold` late; once warned, until the loop runs again.
            wait = self.threshold if warned else max(due + self.threshold - self.clock(), 0.001)
            if self._stop.wait(wait):
                return
            with self._lock:
                late = self.clock() - self._due
                if self._warned_due == self._due or late <= self.threshold:
                    continue  # the beat came (a new due time), or this stall is reported already
                self._warned_due = self._due
            log.warning(
                "%s: the event loop is blocked (at least %.1fs so far): heartbeats, task leases "
                "and replies wait until it runs again. Run CPU-bound or blocking work with "
                "`await asyncio.to_thread(...)`. It is at:\n%s",
                self.name,
                late,
                self._stack(),
                extra={"blocked_seconds": round(late, 3)},
            )

    def _stack(self) -> str:
        frame = sys._current_frames().get(self._loop_thread)
        if frame is None:
            return "(the loop's thread is gone)"
        return "".join(traceback.format_stack(frame, limit=STACK_FRAMES)).rstrip()
