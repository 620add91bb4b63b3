"""Recovery decisions on a fake clock: backoff with jitter, restart intensity, escalation."""

from __future__ import annotations

import random

import msgspec
import pytest

from corral.config import RestartPolicy
from corral.orchestrator.recovery import GIVE_UP, RecoveryPlanner, backoff_delay


def policy(**fields: object) -> RestartPolicy:
    return msgspec.convert({"jitter": 0.0, **fields}, RestartPolicy)


def test_backoff_grows_by_the_multiplier_up_to_the_cap() -> None:
    p = policy(backoff_initial=0.5, backoff_multiplier=3.0, backoff_max=10.0)
    rng = random.Random(1)
    assert [backoff_delay(p, n, rng) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10.0, 10.0]


def test_jitter_only_shortens_a_delay_and_by_at_most_its_share() -> None:
    p = policy(backoff_initial=2.0, jitter=0.25)
    delays = [backoff_delay(p, 1, random.Random(seed)) for seed in range(200)]
    assert all(1.5 <= d <= 2.0 for d in delays)
    assert len(set(delays)) > 100  # spread, not one value


def test_intensity_limit_then_give_up() -> None:
    planner = RecoveryPlanner(policy(max_attempts=3, window=10.0, backoff_initial=1.0))
    decisions = [planner.decide(t, f"crash {t}") for t in (0.0, 1.0, 2.0, 3.0)]
    assert [(d.action, d.attempt, d.delay) for d in decisions] == [
        ("restart", 1, 1.0), ("restart", 2, 2.0), ("restart", 3, 4.0), (GIVE_UP, 3, 0.0),
    ]  # fmt: skip
    assert decisions[0].reason == "restart 1/3 in 1.00s after: crash 0.0"
    assert decisions[3].reason == (
        "restart intensity limit reached: 3 recoveries within 10s (restart); giving up after: crash 3.0"
    )


def test_failures_spread_wider_than_the_window_never_hit_the_limit() -> None:
    planner = RecoveryPlanner(policy(max_attempts=2, window=10.0))
    # One failure every 6 s: the window never holds more than two recoveries.
    actions = [planner.decide(t * 6.0, "crash").action for t in range(10)]
    assert actions == ["restart"] * 10


def test_a_whole_window_up_forgives_and_returns_to_the_first_strategy() -> None:
    planner = RecoveryPlanner(policy(max_attempts=1, window=5.0, escalation=["restart_with_reset"]))
    assert planner.decide(0.0, "x").action == "restart"
    assert planner.decide(1.0, "x").action == "restart_with_reset"  # escalated
    assert planner.decide(20.0, "x").action == "restart"  # up for more than a window
    assert planner.decide(20.5, "x").attempt == 1


def test_escalation_walks_the_chain_and_ends_with_manual() -> None:
    chain = ["restart_with_reset", "degraded", "manual"]
    planner = RecoveryPlanner(policy(max_attempts=2, window=60.0, escalation=chain))
    actions = [planner.decide(float(t), "x") for t in range(8)]
    assert [d.action for d in actions] == [
        "restart", "restart", "restart_with_reset", "restart_with_reset", "degraded", "degraded",
        "manual", "manual",
    ]  # fmt: skip
    assert actions[2].escalated_from == "restart"
    assert actions[2].reason.startswith(
        "escalated from restart after 2 recoveries within 60s (restart); restart_with_reset 1/2"
    )
    assert actions[6].reason.startswith(
        "restart intensity limit reached: 2 recoveries within 60s (degraded); waiting"
    )


def test_manual_first_waits_for_an_operator_at_once() -> None:
    decision = RecoveryPlanner(policy(strategy="manual")).decide(0.0, "exit 1")
    assert (decision.action, decision.attempt, decision.reason) == (
        "manual", 0, "waiting for an operator (strategy manual) after: exit 1",
    )  # fmt: skip


def test_an_operator_reset_starts_the_count_over() -> None:
    planner = RecoveryPlanner(policy(max_attempts=1))
    planner.decide(0.0, "x")
    assert planner.decide(1.0, "x").action == GIVE_UP
    planner.reset()
    assert planner.decide(2.0, "x").action == "restart"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"backoff_initial": 5.0, "backoff_max": 1.0}, "backoff_max (1) is below backoff_initial (5)"),
        ({"escalation": ["restart"]}, "escalation repeats a strategy: restart -> restart"),
        ({"strategy": "manual", "escalation": ["restart"]}, "manual waits for an operator"),
        ({"max_attempts": 0}, "Expected `int` >= 1 - at `$.max_attempts`"),
        ({"strategy": "reboot"}, "Invalid enum value 'reboot' - at `$.strategy`"),
    ],
)
def test_bad_policies_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert(fields, RestartPolicy)
    assert message in str(info.value)
