"""InstanceRegistry on a fake clock: alive, then not alive, then forgotten."""

from __future__ import annotations

import pytest

from corral.health.registry import InstanceRegistry, InstanceView
from corral.protocol import Heartbeat


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def beat(
    service: str = "state", instance: str = "i-1", *, role: str = "service", **fields: object
) -> Heartbeat:
    values: dict[str, object] = {
        "version": "0.1.0", "pid": 4242, "host": "host-a", "started": 900.0, "timestamp": 999.0,
        "cpu_percent": 1.5, "rss_bytes": 50_000_000, "threads": 3, "open_fds": 12, "in_flight": 0,
        "handled": 7, "ready": True, "metrics_url": "http://127.0.0.1:9100",
    }  # fmt: skip
    values.update(fields)
    return Heartbeat(service=service, instance=instance, role=role, **values)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> InstanceRegistry:
    # Silent for more than 3 x 1 s: not alive; silent for more than 10 s: forgotten.
    return InstanceRegistry(interval=1.0, missed_beats=3, forget_after=10.0, clock=clock)


def only(registry: InstanceRegistry) -> InstanceView:
    [view] = registry.views()
    return view


def test_an_empty_registry(registry: InstanceRegistry) -> None:
    assert registry.views() == []


def test_a_fresh_heartbeat_is_alive_with_its_figures(registry: InstanceRegistry, clock: FakeClock) -> None:
    registry.record(beat())
    assert only(registry) == InstanceView(
        service="state", instance="i-1", role="service", version="0.1.0", pid=4242, host="host-a",
        alive=True, ready=True, last_seen_seconds=0.0, cpu_percent=1.5, rss_bytes=50_000_000,
        threads=3, open_fds=12, in_flight=0, handled=7, metrics_url="http://127.0.0.1:9100",
        heartbeat_interval=1.0,
    )  # fmt: skip


def test_alive_until_missed_beats_intervals_pass(registry: InstanceRegistry, clock: FakeClock) -> None:
    registry.record(beat())
    clock.advance(2.5)
    assert only(registry).alive is True
    assert only(registry).last_seen_seconds == 2.5
    clock.advance(0.5)  # exactly 3 intervals: still alive
    assert only(registry).alive is True
    clock.advance(0.01)  # past 3 intervals
    view = only(registry)
    assert view.alive is False
    assert view.last_seen_seconds == 3.01
    assert view.ready is True  # what the instance last said; `alive` is the registry's judgement


def test_an_instance_that_says_it_beats_slower_is_judged_by_its_own_interval(clock: FakeClock) -> None:
    registry = InstanceRegistry(interval=1.0, missed_beats=3, forget_after=60.0, clock=clock)
    registry.record(beat(interval=5.0))  # a pod with CORRAL_HEARTBEAT_INTERVAL=5
    clock.advance(14.0)
    assert (only(registry).alive, only(registry).heartbeat_interval) == (True, 5.0)
    clock.advance(1.01)  # past 3 of its intervals
    assert only(registry).alive is False
    registry.record(beat(interval=0.2))  # a faster one is judged by the registry's interval
    clock.advance(2.9)
    assert (only(registry).alive, only(registry).heartbeat_interval) == (True, 1.0)


def test_not_alive_then_forgotten(registry: InstanceRegistry, clock: FakeClock) -> None:
    registry.record(beat())
    clock.advance(9.0)
    assert only(registry).alive is False
    clock.advance(1.0)  # exactly forget_after: still listed
    assert only(registry).alive is False
    clock.advance(0.001)
    assert registry.views() == []
    clock.advance(-5.0)  # forgotten for good, even if the clock is read earlier again
    assert registry.views() == []


def test_a_new_heartbeat_revives_and_replaces(registry: InstanceRegistry, clock: FakeClock) -> None:
    registry.record(beat(handled=1))
    clock.advance(5.0)
    assert only(registry).alive is False
    registry.record(beat(handled=2, ready=False))
    view = only(registry)
    assert (view.alive, view.ready, view.handled, view.last_seen_seconds) == (True, False, 2, 0.0)


def test_the_clock_of_arrival_counts_not_the_senders_timestamp(
    registry: InstanceRegistry, clock: FakeClock
) -> None:
    registry.record(beat(timestamp=1.0))  # a sender with a clock far behind ours
    assert only(registry).alive is True
    assert only(registry).last_seen_seconds == 0.0


def test_instances_age_independently_and_are_ordered(registry: InstanceRegistry, clock: FakeClock) -> None:
    registry.record(beat("state", "s-2"))
    registry.record(beat("interpreter", "m-1", role="module"))
    clock.advance(2.0)
    registry.record(beat("state", "s-1"))
    registry.record(beat("health", "h-1"))
    clock.advance(2.0)
    views = registry.views()
    assert [(v.role, v.service, v.instance, v.alive) for v in views] == [
        ("module", "interpreter", "m-1", False),
        ("service", "health", "h-1", True),
        ("service", "state", "s-1", True),
        ("service", "state", "s-2", False),
    ]
    clock.advance(7.0)  # the first two are 11 s silent, the others 9 s
    assert [(v.service, v.instance) for v in registry.views()] == [("health", "h-1"), ("state", "s-1")]


@pytest.mark.parametrize(
    ("interval", "missed_beats", "alive_until"),
    [(1.0, 1, 1.0), (0.2, 3, 0.6), (5.0, 2, 10.0)],
)
def test_the_alive_window_is_interval_times_missed_beats(
    clock: FakeClock, interval: float, missed_beats: int, alive_until: float
) -> None:
    registry = InstanceRegistry(interval=interval, missed_beats=missed_beats, forget_after=300.0, clock=clock)
    registry.record(beat())
    clock.advance(alive_until - 1e-6)
    assert only(registry).alive is True
    clock.advance(2e-6)
    assert only(registry).alive is False


def test_defaults() -> None:
    registry = InstanceRegistry(interval=1.0)
    assert (registry.missed_beats, registry.forget_after) == (3, 300.0)
    registry.record(beat())
    assert only(registry).alive is True
