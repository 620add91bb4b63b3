"""Who has heartbeated, and how long ago. Pure logic: no NATS."""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

from corral.protocol import Heartbeat

__all__ = ["InstanceRegistry", "InstanceView"]


class InstanceView(msgspec.Struct):
    service: str
    instance: str
    role: str
    version: str
    pid: int
    host: str
    alive: bool
    ready: bool
    last_seen_seconds: float
    cpu_percent: float
    rss_bytes: int
    threads: int
    open_fds: int
    in_flight: int
    handled: int
    metrics_url: str
    service_id: str = ""
    modctl: bool = False
    # Seconds between its beats as it is judged: the health service's interval, or the one the
    # instance's heartbeats say it keeps if that is longer.
    heartbeat_interval: float = 0.0


class InstanceRegistry:
    """The latest heartbeat of every instance; an instance silent for `missed_beats`
    heartbeat intervals (`interval`, or its own if its beats say it is longer) counts as not
    alive and is forgotten after `forget_after` seconds."""

    def __init__(
        self,
        *,
        interval: float,
        missed_beats: int = 3,
        forget_after: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.interval = interval
        self.missed_beats = missed_beats
        self.forget_after = forget_after
        self.clock = clock
        self._latest: dict[tuple[str, str], tuple[float, Heartbeat]] = {}

    def record(self, beat: Heartbeat) -> None:
        self._latest[(beat.service, beat.instance)] = (self.clock(), beat)

    def views(self) -> list[InstanceView]:
        now = self.clock()
        for key, (seen, _) in list(self._latest.items()):
            if now - seen > self.forget_after:
                del self._latest[key]
        return [self._view(now, seen, beat) for seen, beat in sorted(self._latest.values(), key=_order)]

    def _view(self, now: float, seen: float, beat: Heartbeat) -> InstanceView:
        age = now - seen
        interval = max(self.interval, beat.interval)
        return InstanceView(
            service=beat.service,
            instance=beat.instance,
            role=beat.role,
            version=beat.version,
            pid=beat.pid,
            host=beat.host,
            alive=age <= interval * self.missed_beats,
            ready=beat.ready,
            last_seen_seconds=round(age, 3),
            cpu_percent=beat.cpu_percent,
            rss_bytes=beat.rss_bytes,
            threads=beat.threads,
            open_fds=beat.open_fds,
            in_flight=beat.in_flight,
            handled=beat.handled,
            metrics_url=beat.metrics_url,
            service_id=beat.service_id,
            modctl=beat.modctl,
            heartbeat_interval=interval,
        )


def _order(item: tuple[float, Heartbeat]) -> tuple[str, str, str]:
    beat = item[1]
    return (beat.role, beat.service, beat.instance)
