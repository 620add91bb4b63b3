"""Verdicts by table, and the health board on a fake clock: limits, throttling, module verdicts."""

from __future__ import annotations

import pytest

from corral.config import ResourceLimits
from corral.health.board import HealthBoard
from corral.health.registry import InstanceRegistry
from corral.health.verdicts import (
    Observation,
    Thresholds,
    Verdict,
    judge,
    module_verdict,
    system_verdict,
    transition,
)
from corral.protocol import Heartbeat

H, D, U, K = Verdict.HEALTHY, Verdict.DEGRADED, Verdict.UNHEALTHY, Verdict.UNKNOWN
TH = Thresholds(interval=1.0, unhealthy_threshold=3, violation_window=5.0, unhealthy_window=30.0)


@pytest.mark.parametrize(
    ("obs", "verdict", "reason"),
    [
        (Observation(None), K, "no heartbeat yet"),
        (Observation(0.5), H, "ok"),
        (Observation(3.0), H, "ok"),  # exactly three intervals: not yet missed
        (Observation(3.1), U, "no heartbeat for 3.1s (limit 3s)"),
        (Observation(0.5, failed_rounds=1, failing=("check:db",)), D, "failing: check:db"),
        (Observation(0.5, failed_rounds=2, failing=("ping",)), D, "failing: ping"),
        (Observation(0.5, failed_rounds=3, failing=("ping",)), U, "3 failed check rounds in a row: ping"),
        (Observation(0.5, over_limit_for=4.9, over_limits=("memory_mb",)), H, "ok"),
        (Observation(0.5, over_limit_for=5.0, over_limits=("memory_mb",)), D, "over memory_mb for 5.0s"),
        (Observation(0.5, over_limit_for=30.0, over_limits=("threads",)), U, "over threads for 30.0s"),
        (Observation(9.0, failed_rounds=1), U, "no heartbeat for 9.0s (limit 3s)"),  # silence wins
        # An instance that says it beats every 5 s is judged by that, not by 1 s.
        (Observation(14.0, interval=5.0), H, "ok"),
        (Observation(15.1, interval=5.0), U, "no heartbeat for 15.1s (limit 15s)"),
        (Observation(3.1, interval=0.2), U, "no heartbeat for 3.1s (limit 3s)"),  # never shorter
    ],
)
def test_judge(obs: Observation, verdict: Verdict, reason: str) -> None:
    assert judge(obs, TH) == (verdict, reason)


@pytest.mark.parametrize(
    ("current", "obs", "new"),
    [
        (K, Observation(0.1), H),  # UNKNOWN -> HEALTHY
        (H, Observation(0.1, failed_rounds=1, failing=("ping",)), D),  # HEALTHY -> DEGRADED
        (D, Observation(0.1), H),  # DEGRADED -> HEALTHY
        (D, Observation(0.1, failed_rounds=3, failing=("ping",)), U),  # DEGRADED -> UNHEALTHY
        (H, Observation(4.0), U),  # HEALTHY -> UNHEALTHY
        (U, Observation(0.1), H),  # UNHEALTHY -> HEALTHY
        (H, Observation(0.1), None),  # no change, no event
        (U, Observation(5.0), None),
    ],
)
def test_transition(current: Verdict, obs: Observation, new: Verdict | None) -> None:
    change = transition(current, obs, TH)
    assert (change.new if change else None) == new
    if change:
        assert change.old == current


@pytest.mark.parametrize(
    ("instances", "verdict"),
    [([], K), ([H, H], H), ([H, U], D), ([D, U], D), ([U, K], U), ([U], U), ([K, K], K)],
)
def test_module_verdict(instances: list[Verdict], verdict: Verdict) -> None:
    assert module_verdict(instances) == verdict


@pytest.mark.parametrize(
    ("required", "verdict"), [([], K), ([H, H], H), ([H, D], D), ([H, K], D), ([D, U], U)]
)
def test_system_verdict(required: list[Verdict], verdict: Verdict) -> None:
    assert system_verdict(required) == verdict


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def beat(service: str, instance: str, rss_mb: float) -> Heartbeat:
    return Heartbeat(
        service=service, instance=instance, role="module", version="1", pid=1, host="h", started=0.0,
        timestamp=0.0, cpu_percent=1.0, rss_bytes=int(rss_mb * 2**20), threads=4, open_fds=10,
        in_flight=0, handled=0, ready=True,
    )  # fmt: skip


def test_board_throttles_a_sustained_violation_then_releases_it() -> None:
    clock = FakeClock()
    registry = InstanceRegistry(interval=1.0, clock=clock)
    limits = ResourceLimits(memory_mb=100)
    board = HealthBoard(registry, TH, limits_for=lambda m: limits if m == "hog" else None, clock=clock)
    registry.record(beat("hog", "a", 50))
    first = board.evaluate()
    assert [(m, c.old, c.new) for m, c in first.module_changes] == [("hog", K, H)]
    for _ in range(5):  # over the limit, but not yet for the violation window
        clock.now += 1.0
        registry.record(beat("hog", "a", 150))
        result = board.evaluate()
        assert not result.violations
        assert not result.throttle
    clock.now += 1.0
    registry.record(beat("hog", "a", 150))
    result = board.evaluate()
    assert [(v.module, v.limits) for v in result.violations] == [("hog", ("memory_mb",))]
    assert result.throttle == ["hog"]
    assert [c.new for _, _, c in result.instance_changes] == [D]
    clock.now += 1.0
    registry.record(beat("hog", "a", 150))
    assert board.evaluate().throttle == []  # throttled once, not on every tick
    clock.now += 1.0
    registry.record(beat("hog", "a", 60))
    result = board.evaluate()
    assert [v.module for v in result.recoveries] == ["hog"]
    assert result.unthrottle == ["hog"]
    assert [c.new for _, c in result.module_changes] == [H]


def test_board_violation_past_the_second_window_is_unhealthy() -> None:
    clock = FakeClock()
    registry = InstanceRegistry(interval=1.0, clock=clock)
    board = HealthBoard(registry, TH, limits_for=lambda _: ResourceLimits(threads=2), clock=clock)
    for _ in range(32):
        registry.record(beat("busy", "a", 10))
        board.evaluate()
        clock.now += 1.0
    assert board.modules["busy"] == U
    assert "over threads" in board.health_of("busy", "a").reason


def test_board_expected_modules_are_unknown_until_heard_from() -> None:
    clock = FakeClock()
    registry = InstanceRegistry(interval=1.0, clock=clock)
    board = HealthBoard(registry, TH, expected=("later",), clock=clock)
    assert board.evaluate().module_changes == []
    assert board.modules == {"later": K}
    board.record_round("later", "x", ["ping"], {})
    registry.record(beat("later", "x", 10))
    result = board.evaluate()
    assert [(m, c.new) for m, c in result.module_changes] == [("later", D)]
