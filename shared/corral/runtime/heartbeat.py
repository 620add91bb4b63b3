"""Heartbeats, cheap enough to send every second from every process.

Monitoring must cost an idle process next to nothing (the goal: under 1% of one core for the
health service plus 20 modules heartbeating every second; bench/health_overhead.py measures
it), and on a small VM each wake-up and each read of /proc costs tens to hundreds of
microseconds. So a beat:

* takes cpu % from the process's own CPU clock (one `clock_gettime`), fresh on every beat;
* reads the slower figures (rss, threads, open fds) with one psutil `oneshot()` every
  `REFRESH_EVERY` beats and repeats them in between. They move slowly, and a resource limit
  counts only once it has been exceeded for a window (`CORRAL_HEALTH_VIOLATION_WINDOW`), so
  this delays a violation (and its recovery) by at most `REFRESH_EVERY` heartbeat intervals;
* encodes only the fields that change (HeartbeatEncoder);
* falls on the wall-clock boundaries every process shares (`next_beat`), so the health
  service takes a round of heartbeats in a few wake-ups rather than one per instance.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import msgspec
import psutil

from corral.protocol import Heartbeat

__all__ = ["REFRESH_EVERY", "HeartbeatEncoder", "ProcessProbe", "next_beat"]

REFRESH_EVERY = 10  # beats between psutil reads of rss, threads and open fds


class ProcessProbe:
    """This process's cpu % (since the previous read; the first: since it started), rss,
    threads and open fds."""

    def __init__(
        self,
        *,
        refresh_every: int = REFRESH_EVERY,
        cpu_clock: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be at least 1, got {refresh_every}")
        self.process = psutil.Process(os.getpid())
        self.host = socket.gethostname()
        self.refresh_every = refresh_every
        self._cpu_clock, self._clock = cpu_clock, clock
        # The first read covers the process's life so far (the CPU clock starts at 0 with it).
        age = max(1e-3, time.time() - self.process.create_time())
        self._last_cpu, self._last_wall = 0.0, clock() - age
        self._reads = 0
        self._slow: tuple[int, int, int] = (0, 0, 0)

    def read(self) -> tuple[float, int, int, int]:
        """(cpu %, rss bytes, threads, open fds); cpu % is of one core, so it can exceed 100."""
        cpu, wall = self._cpu_clock(), self._clock()
        elapsed = wall - self._last_wall
        percent = round((cpu - self._last_cpu) / elapsed * 100, 2) if elapsed > 0 else 0.0
        self._last_cpu, self._last_wall = cpu, wall
        if self._reads % self.refresh_every == 0:
            self._slow = self._read_slow()
        self._reads += 1
        return (percent, *self._slow)

    def _read_slow(self) -> tuple[int, int, int]:
        with self.process.oneshot():
            rss = self.process.memory_info().rss
            threads = self.process.num_threads()
            try:
                fds = self.process.num_fds()
            except (AttributeError, psutil.Error):  # num_fds is POSIX-only
                fds = -1
        return rss, threads, fds


def next_beat(now: float, interval: float) -> float:
    """The next multiple of `interval` on the wall clock, at least a tenth of an interval away.

    Every process beats on the same boundaries, so the health service receives a round of
    heartbeats in one burst and handles it in few wake-ups instead of one per instance. The
    margin keeps a timer that fires a little early from beating twice on one boundary.
    """
    return ((now + interval / 10) // interval + 1) * interval


class _Changing(msgspec.Struct):
    """The fields of a Heartbeat that change from one beat to the next."""

    timestamp: float
    cpu_percent: float
    rss_bytes: int
    threads: int
    open_fds: int
    in_flight: int
    handled: int
    ready: bool


class HeartbeatEncoder:
    """Encodes the heartbeats of one instance as JSON, the same bytes a Heartbeat encodes to up
    to the order of the fields: the fields that do not change (who, where, since when) are
    encoded once, and each beat encodes only the eight that do."""

    def __init__(self, template: Heartbeat) -> None:
        """`template`: a Heartbeat with the fixed fields; its changing ones are ignored."""
        fixed = msgspec.to_builtins(template)
        for name in _Changing.__struct_fields__:
            fixed.pop(name, None)
        self._head = msgspec.json.encode(fixed)[:-1] + b","  # `{"service":...,` open for the rest
        self._encode = msgspec.json.Encoder().encode

    def encode(
        self,
        timestamp: float,
        cpu_percent: float,
        rss_bytes: int,
        threads: int,
        open_fds: int,
        in_flight: int,
        handled: int,
        ready: bool,
    ) -> bytes:
        changing = _Changing(timestamp, cpu_percent, rss_bytes, threads, open_fds, in_flight, handled, ready)
        return self._head + self._encode(changing)[1:]
