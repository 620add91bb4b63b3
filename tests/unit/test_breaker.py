"""CircuitBreaker on a fake clock: every transition edge, probes, stale permits, sharing, and a
stateful comparison against a small reference model written from the requirements."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from corral.errors import CircuitOpenError
from corral.orchestrator.breaker import BreakerSnapshot, BreakerState, CircuitBreaker, Permit
from corral.policy import BreakerConfig

CLOSED, OPEN, HALF = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
WALL_OFFSET = 1_700_000_000.0


class FakeClock:
    """A monotonic clock and a wall clock that move together (the wall one far from zero)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + WALL_OFFSET

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Harness:
    clock: FakeClock
    breaker: CircuitBreaker
    events: list[tuple[BreakerState, BreakerState, str]] = field(default_factory=list)
    snapshots: list[BreakerSnapshot] = field(default_factory=list)
    held: list[Permit] = field(default_factory=list)

    def run(self, script: str) -> None:
        """Tokens: S/F/L = a call that succeeds / fails / succeeds slowly (2 s); +N = advance N s;
        A = take a permit and hold it; s/f/l/r = settle the oldest held permit (success, failure,
        slow success, release); X = a call that must be refused; reset."""
        for token in script.split():
            if token.startswith("+"):
                self.clock.advance(float(token[1:]))
            elif token in ("S", "F", "L"):
                self._settle(self.breaker.acquire(), token.lower())
            elif token == "A":
                self.held.append(self.breaker.acquire())
            elif token in ("s", "f", "l", "r"):
                self._settle(self.held.pop(0), token)
            elif token == "X":
                with pytest.raises(CircuitOpenError):
                    self.breaker.acquire()
            elif token == "reset":
                self.breaker.reset()
            else:  # pragma: no cover - a typo in a table
                raise AssertionError(f"unknown token {token!r}")

    @staticmethod
    def _settle(permit: Permit, how: str) -> None:
        if how == "s":
            permit.success(0.01)
        elif how == "l":
            permit.success(2.0)
        elif how == "f":
            permit.failure("boom")
        else:
            permit.release()

    @property
    def edges(self) -> list[tuple[BreakerState, BreakerState]]:
        return [(old, new) for old, new, _ in self.events]


def make(clock: FakeClock | None = None, **config: Any) -> Harness:
    clock = clock or FakeClock()
    harness = Harness(clock, CircuitBreaker("m", BreakerConfig(**config), clock.monotonic, clock.wall))

    def on_transition(snapshot: BreakerSnapshot, old: BreakerState) -> None:
        harness.snapshots.append(snapshot)
        harness.events.append((old, snapshot.state, snapshot.reason))

    harness.breaker.on_transition = on_transition
    return harness


def open_message(reason: str, wait: str) -> str:
    return f"circuit for module 'm' is open ({reason}); next probe in {wait}s"


# --- every transition edge -------------------------------------------------------------------
# (id, config, script, final state, [(old, new, reason), ...])
FAST: dict[str, Any] = {"window_size": 10, "minimum_calls": 10, "consecutive_failures": 3, "wait_open": 5.0}
EDGES: list[tuple[str, dict[str, Any], str, BreakerState, list[tuple[BreakerState, BreakerState, str]]]] = [
    ("no failures stays closed", FAST, "S S S S S", CLOSED, []),
    ("successes break a run of failures", FAST, "F F S F F", CLOSED, []),
    (
        "closed->open: consecutive failures",
        FAST,
        "S F F F",
        OPEN,
        [(CLOSED, OPEN, "3 consecutive failures, last: boom")],
    ),
    (
        "closed->open: failure rate, judged on a failure",
        {"window_size": 10, "minimum_calls": 4, "consecutive_failures": 99},
        "S F S F",
        OPEN,
        [(CLOSED, OPEN, "failure rate 50% over 4 calls, last: boom")],
    ),
    (
        "closed->open: failure rate, judged when minimum_calls is reached by a success",
        {"window_size": 10, "minimum_calls": 4, "consecutive_failures": 99},
        "F F S S",
        OPEN,
        [(CLOSED, OPEN, "failure rate 50% over 4 calls")],
    ),
    (
        "closed->open: slow calls count as failures",
        {**FAST, "slow_call_threshold": 1.0},
        "L L L",
        OPEN,
        [(CLOSED, OPEN, "3 consecutive failures, last: slow call (2.000s > 1s)")],
    ),
    ("slow calls are fine when not configured", FAST, "L L L L", CLOSED, []),
    (
        "open stays open before the wait",
        FAST,
        "F F F +4.9 X",
        OPEN,
        [(CLOSED, OPEN, "3 consecutive failures, last: boom")],
    ),
    (
        "open->half-open when the wait has elapsed",
        FAST,
        "F F F +5 A",
        HALF,
        [(CLOSED, OPEN, "3 consecutive failures, last: boom"), (OPEN, HALF, "wait elapsed; probing")],
    ),
    (
        "half-open->closed: a successful probe",
        FAST,
        "F F F +5 S",
        CLOSED,
        [
            (CLOSED, OPEN, "3 consecutive failures, last: boom"),
            (OPEN, HALF, "wait elapsed; probing"),
            (HALF, CLOSED, "probes succeeded"),
        ],
    ),
    (
        "half-open->open: a failed probe",
        FAST,
        "F F F +5 F",
        OPEN,
        [
            (CLOSED, OPEN, "3 consecutive failures, last: boom"),
            (OPEN, HALF, "wait elapsed; probing"),
            (HALF, OPEN, "probe failed: boom"),
        ],
    ),
    (
        "half-open->open: a slow probe",
        {**FAST, "slow_call_threshold": 1.0},
        "F F F +5 L",
        OPEN,
        [
            (CLOSED, OPEN, "3 consecutive failures, last: boom"),
            (OPEN, HALF, "wait elapsed; probing"),
            (HALF, OPEN, "probe failed: slow call (2.000s > 1s)"),
        ],
    ),
    (
        "half-open->open: no verdict within max_half_open",
        {**FAST, "max_half_open": 30.0},
        "F F F +5 A +29.5 X +0.5 X",
        OPEN,
        [
            (CLOSED, OPEN, "3 consecutive failures, last: boom"),
            (OPEN, HALF, "wait elapsed; probing"),
            (HALF, OPEN, "no probe verdict within max_half_open"),
        ],
    ),
    (
        "half-open: success_threshold probes are needed",
        {**FAST, "permitted_calls_in_half_open": 2, "success_threshold": 2},
        "F F F +5 S",
        HALF,
        [(CLOSED, OPEN, "3 consecutive failures, last: boom"), (OPEN, HALF, "wait elapsed; probing")],
    ),
    (
        "half-open->closed after success_threshold probes",
        {**FAST, "permitted_calls_in_half_open": 2, "success_threshold": 2},
        "F F F +5 S S",
        CLOSED,
        [
            (CLOSED, OPEN, "3 consecutive failures, last: boom"),
            (OPEN, HALF, "wait elapsed; probing"),
            (HALF, CLOSED, "probes succeeded"),
        ],
    ),
    (
        "half-open->open: one failure after successes",
        {**FAST, "permitted_calls_in_half_open": 3, "success_threshold": 3},
        "F F F +5 S S F",
        OPEN,
        [
            (CLOSED, OPEN, "3 consecutive failures, last: boom"),
            (OPEN, HALF, "wait elapsed; probing"),
            (HALF, OPEN, "probe failed: boom"),
        ],
    ),
    (
        "open->closed: reset",
        FAST,
        "F F F reset",
        CLOSED,
        [(CLOSED, OPEN, "3 consecutive failures, last: boom"), (OPEN, CLOSED, "reset by operator")],
    ),
    (
        "half-open->closed: reset",
        FAST,
        "F F F +5 A reset",
        CLOSED,
        [
            (CLOSED, OPEN, "3 consecutive failures, last: boom"),
            (OPEN, HALF, "wait elapsed; probing"),
            (HALF, CLOSED, "reset by operator"),
        ],
    ),
]


@pytest.mark.parametrize(
    ("config", "script", "state", "events"), [c[1:] for c in EDGES], ids=[c[0] for c in EDGES]
)
def test_transition_edges(
    config: dict[str, Any],
    script: str,
    state: BreakerState,
    events: list[tuple[BreakerState, BreakerState, str]],
) -> None:
    h = make(**config)
    h.run(script)
    assert h.breaker.state is state
    assert h.events == events
    # every event carried a snapshot of the state it announced
    assert [s.state for s in h.snapshots] == [new for _, new, _ in events]


def test_transition_snapshot_fields() -> None:
    h = make(**FAST)
    h.run("S F F F")
    (snap,) = h.snapshots
    assert snap.module == "m"
    assert snap.state is OPEN
    assert snap.since == 1000.0 + WALL_OFFSET
    assert snap.retry_at == 1005.0 + WALL_OFFSET
    assert snap.opens == 1
    assert snap.calls_in_window == 4
    assert snap.failure_rate == 0.75


# --- opening: failure rate vs consecutive failures, minimum_calls ------------------------------
def test_failure_rate_opens_without_a_consecutive_run() -> None:
    h = make(window_size=10, minimum_calls=6, failure_rate_threshold=0.5, consecutive_failures=3)
    h.run("F S F S F")  # rate 3/5, but minimum_calls not reached; never two failures in a row
    assert h.breaker.state is CLOSED
    h.run("S")  # 3/6 = 50% >= 50%
    assert h.events == [(CLOSED, OPEN, "failure rate 50% over 6 calls")]


def test_consecutive_failures_open_below_minimum_calls() -> None:
    h = make(window_size=20, minimum_calls=20, consecutive_failures=2)
    h.run("S S S F F")
    assert h.events == [(CLOSED, OPEN, "2 consecutive failures, last: boom")]


def test_minimum_calls_holds_back_the_rate() -> None:
    h = make(window_size=10, minimum_calls=5, failure_rate_threshold=0.5, consecutive_failures=99)
    h.run("F F F F")
    assert h.breaker.state is CLOSED
    assert h.breaker.snapshot().failure_rate == 1.0
    h.run("F")
    assert h.events == [(CLOSED, OPEN, "failure rate 100% over 5 calls, last: boom")]


def test_window_slides() -> None:
    h = make(window_size=4, minimum_calls=4, failure_rate_threshold=0.75, consecutive_failures=99)
    h.run("F S F S S S")  # the early failures slide out: F S F S -> S F S S -> F S S S
    assert h.breaker.state is CLOSED
    h.run("F F")  # S S F F = 50%
    assert h.breaker.state is CLOSED
    h.run("F")  # S F F F = 75%
    assert h.events == [(CLOSED, OPEN, "failure rate 75% over 4 calls, last: boom")]


def test_rate_below_threshold_stays_closed() -> None:
    h = make(window_size=10, minimum_calls=4, failure_rate_threshold=0.5, consecutive_failures=99)
    h.run("F S S S F S S S F S")  # 3/10
    assert h.breaker.state is CLOSED
    assert h.breaker.snapshot().failure_rate == 0.3


def test_successes_before_the_first_failure_count_in_the_window() -> None:
    # A monotonic clock far from zero (a host up for a day): successes must not be "forgotten".
    h = make(FakeClock(86_400.0), window_size=20, minimum_calls=10, consecutive_failures=99)
    h.run(" ".join(["S"] * 10))
    assert h.breaker.snapshot().calls_in_window == 10
    h.run("F S F S F S F S F S")  # 5 failures in the last 20 calls = 25%
    assert h.breaker.state is CLOSED
    assert h.breaker.snapshot().failure_rate == 0.25


@pytest.mark.parametrize(("seconds", "state"), [(0.999, CLOSED), (1.0, CLOSED), (1.001, OPEN)])
def test_slow_call_threshold_is_strict(seconds: float, state: BreakerState) -> None:
    h = make(consecutive_failures=1, slow_call_threshold=1.0)
    h.breaker.acquire().success(seconds)
    assert h.breaker.state is state


def test_slow_call_counts_in_the_rate() -> None:
    h = make(window_size=4, minimum_calls=4, consecutive_failures=99, slow_call_threshold=0.5)
    h.run("S L S L")
    assert h.events == [(CLOSED, OPEN, "failure rate 50% over 4 calls, last: slow call (2.000s > 0.5s)")]


# --- reset_timeout ------------------------------------------------------------------------------
def test_reset_timeout_forgets_failures() -> None:
    h = make(consecutive_failures=3, reset_timeout=60.0)
    h.run("F F +60 F")
    assert h.breaker.state is CLOSED
    assert h.breaker.snapshot().calls_in_window == 1
    h.run("F F")
    assert h.events == [(CLOSED, OPEN, "3 consecutive failures, last: boom")]


def test_failures_within_reset_timeout_are_kept() -> None:
    h = make(consecutive_failures=3, reset_timeout=60.0)
    h.run("F F +59.9 F")
    assert h.breaker.state is OPEN


def test_reset_timeout_counts_from_the_last_failure() -> None:
    h = make(consecutive_failures=3, window_size=4, minimum_calls=4, reset_timeout=60.0)
    h.run("F +50 F +50 F")  # never 60 s without a failure
    assert h.breaker.state is OPEN


# --- open: message, growing wait, cap -----------------------------------------------------------
def test_open_error_message_exact() -> None:
    h = make(consecutive_failures=2, wait_open=5.0)
    h.run("F F +1.25")
    with pytest.raises(CircuitOpenError) as info:
        h.breaker.acquire()
    assert str(info.value) == open_message("2 consecutive failures, last: boom", "3.8")
    assert info.value.code.value == "CIRCUIT_OPEN"
    assert h.breaker.retry_after() == pytest.approx(3.75)


def test_half_open_error_message_exact() -> None:
    h = make(consecutive_failures=1, wait_open=1.0, permitted_calls_in_half_open=2)
    h.run("F +1 A A")
    with pytest.raises(CircuitOpenError) as info:
        h.breaker.acquire()
    assert str(info.value) == (
        "circuit for module 'm' is half-open and its 2 probe call(s) are in flight; retry shortly"
    )


def test_wait_grows_and_is_capped() -> None:
    h = make(consecutive_failures=1, wait_open=1.0, wait_multiplier=2.0, wait_max=5.0)
    h.run("F")
    waits = []
    for _ in range(6):
        waits.append(h.breaker.retry_after())
        with pytest.raises(CircuitOpenError, match=rf"next probe in {waits[-1]:.1f}s$"):
            h.breaker.acquire()
        h.clock.advance(waits[-1] - 0.25)
        h.run("X")  # not yet
        h.clock.advance(0.25)
        h.run("F")  # the probe fails: re-open with a longer wait
    assert waits == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert h.breaker.opens == 7
    assert [s.opens for s in h.snapshots if s.state is OPEN] == [1, 2, 3, 4, 5, 6, 7]


def test_closing_resets_the_wait() -> None:
    h = make(consecutive_failures=1, wait_open=1.0, wait_multiplier=3.0, wait_max=60.0)
    h.run("F +1 F +3 S")  # opens 1 s, then 3 s, then a probe closes it
    assert h.breaker.state is CLOSED
    assert h.breaker.opens == 0
    h.run("F")
    assert h.breaker.retry_after() == 1.0


def test_wait_max_holds_after_very_many_reopens() -> None:
    # 2.0 ** 1100 overflows a float: the wait must stay at wait_max, not raise OverflowError.
    h = make(consecutive_failures=1, wait_open=1.0, wait_max=60.0)
    h.breaker.adopt(remote(OPEN, retry_at=0.0, opens=1100))
    h.run("+0 A")
    assert h.breaker.state is HALF
    h.run("f")
    assert h.breaker.state is OPEN
    assert h.breaker.opens == 1101
    assert h.breaker.retry_after() == 60.0


def test_snapshot_retry_at_is_stable_while_open() -> None:
    h = make(consecutive_failures=1, wait_open=10.0)
    h.run("F")
    opened = h.clock.wall()
    h.clock.advance(4.0)
    snap = h.breaker.snapshot()
    assert snap.state is OPEN
    assert snap.retry_at == opened + 10.0
    assert snap.since == opened


# --- half-open: exactly N probes ----------------------------------------------------------------
@pytest.mark.parametrize("permitted", [1, 2, 3])
def test_exactly_n_probes(permitted: int) -> None:
    h = make(
        consecutive_failures=1, wait_open=1.0, permitted_calls_in_half_open=permitted, success_threshold=1
    )
    h.run("F +1")
    for _ in range(permitted):
        h.run("A")
    assert all(p.probe for p in h.held)
    for _ in range(3):
        with pytest.raises(CircuitOpenError, match="half-open"):
            h.breaker.acquire()
    assert h.breaker.state is HALF


async def test_exactly_n_probes_with_concurrent_callers() -> None:
    h = make(consecutive_failures=1, wait_open=1.0, permitted_calls_in_half_open=3, success_threshold=3)
    h.run("F +1")
    gate = asyncio.Event()
    admitted: list[int] = []
    refused: list[str] = []

    async def caller(i: int) -> None:
        await asyncio.sleep(0)
        try:
            permit = h.breaker.acquire()
        except CircuitOpenError as exc:
            refused.append(str(exc))
            return
        admitted.append(i)
        try:
            await gate.wait()
            permit.success(0.01)
        finally:
            permit.release()

    tasks = [asyncio.create_task(caller(i)) for i in range(10)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(admitted) == 3
    assert len(refused) == 7
    assert all("half-open" in message for message in refused)
    gate.set()
    await asyncio.gather(*tasks)
    assert h.breaker.state is CLOSED
    assert h.edges == [(CLOSED, OPEN), (OPEN, HALF), (HALF, CLOSED)]


def test_successful_probes_do_not_free_slots_for_more_probes() -> None:
    h = make(consecutive_failures=1, wait_open=1.0, permitted_calls_in_half_open=3, success_threshold=3)
    h.run("F +1 A A A s X s X")
    assert h.breaker.state is HALF
    h.run("s")
    assert h.breaker.state is CLOSED


def test_release_frees_a_probe_slot() -> None:
    h = make(consecutive_failures=1, wait_open=1.0)
    h.run("F +1 A X r A X")
    assert h.breaker.state is HALF
    h.run("s")
    assert h.breaker.state is CLOSED


def test_release_twice_frees_one_slot() -> None:
    h = make(consecutive_failures=1, wait_open=1.0, permitted_calls_in_half_open=2, success_threshold=2)
    h.run("F +1 A A")
    first = h.held.pop(0)
    first.release()
    first.release()
    first.success()  # ignored: already released
    h.run("A X")
    assert h.breaker.state is HALF


def test_classifier_exception_does_not_wedge_half_open() -> None:
    h = make(consecutive_failures=1, wait_open=1.0)
    h.run("F +1")

    def classify(_: object) -> str:
        raise KeyError("bad reply")

    def call() -> None:
        permit = h.breaker.acquire()
        try:
            permit.failure(classify(None))
        finally:
            permit.release()

    with pytest.raises(KeyError):
        call()
    h.run("S")
    assert h.breaker.state is CLOSED


def test_release_after_verdict_is_a_no_op() -> None:
    h = make(consecutive_failures=1, wait_open=1.0, permitted_calls_in_half_open=2, success_threshold=2)
    h.run("F +1 A A")
    first = h.held.pop(0)
    first.success()
    first.release()  # must not free a second slot: one success + one in flight = 2
    h.run("X")
    assert h.breaker.state is HALF


# --- stale permits ------------------------------------------------------------------------------
def test_stale_closed_permit_does_not_count_after_opening() -> None:
    h = make(consecutive_failures=2, wait_open=1.0)
    h.run("A A A f f")  # two opened it; the third is from the closed generation
    assert h.breaker.state is OPEN
    opens = h.breaker.opens
    h.run("f")
    assert h.breaker.opens == opens
    assert h.edges == [(CLOSED, OPEN)]


def test_stale_verdict_after_the_wait_does_not_start_probing() -> None:
    h = make(consecutive_failures=1, wait_open=1.0, max_half_open=10.0)
    h.run("A F +1")
    h.run("f +10")  # a stale verdict: no transition, so no half-open clock started here
    assert h.breaker.state is OPEN
    assert h.edges == [(CLOSED, OPEN)]
    h.run("A")  # the half-open period starts with this caller, who is admitted
    assert h.edges == [(CLOSED, OPEN), (OPEN, HALF)]


def test_stale_closed_permit_does_not_count_in_the_new_window() -> None:
    h = make(consecutive_failures=2, wait_open=1.0)
    h.run("A F F +1 S")
    assert h.breaker.state is CLOSED
    h.run("f")  # admitted two generations ago
    assert h.breaker.snapshot().calls_in_window == 0
    h.run("F")
    assert h.breaker.state is CLOSED


def test_stale_probes_cannot_close_reopen_or_free_a_new_slot() -> None:
    h = make(consecutive_failures=1, wait_open=1.0, permitted_calls_in_half_open=3, success_threshold=3)
    h.run("F +1 A A A")
    stale = list(h.held)
    h.held.clear()
    h.run("reset F +1 A A A X")  # a new half-open generation, its 3 probe slots taken
    events = list(h.events)
    stale[0].release()
    h.run("X")  # the release did not free one of the new slots
    stale[1].success()
    stale[2].failure("late")
    assert h.breaker.state is HALF
    assert h.events == events
    h.run("s s")  # had the stale success counted, this would close it
    assert h.breaker.state is HALF
    h.run("s")
    assert h.breaker.state is CLOSED


def test_stale_probe_failure_does_not_reopen() -> None:
    h = make(consecutive_failures=1, wait_open=1.0, max_half_open=10.0)
    h.run("F +1 A +10 X")  # the probe took too long: re-opened
    assert h.breaker.state is OPEN
    opens = h.breaker.opens
    h.run("+2 S")  # the next probe closes it
    h.run("f")  # the old probe finally fails: too late to matter
    assert h.breaker.state is CLOSED
    assert opens == 2
    assert h.breaker.opens == 0


def test_late_probe_verdict_after_max_half_open_does_not_close() -> None:
    h = make(consecutive_failures=1, wait_open=1.0, max_half_open=10.0)
    h.run("F +1 A +10")  # nobody asked since, but the probe is past max_half_open
    h.run("s")
    assert h.breaker.state is OPEN
    assert h.edges == [(CLOSED, OPEN), (OPEN, HALF), (HALF, OPEN)]
    assert h.events[-1][2] == "no probe verdict within max_half_open"


def test_max_half_open_after_released_probes() -> None:
    h = make(consecutive_failures=1, wait_open=1.0, max_half_open=10.0)
    h.run("F +1 A r +10")
    with pytest.raises(CircuitOpenError, match=r"is open \(no probe verdict within max_half_open\)"):
        h.breaker.acquire()


# --- adopt and reset ----------------------------------------------------------------------------
def remote(state: BreakerState, **fields: Any) -> BreakerSnapshot:
    return BreakerSnapshot(module="m", state=state, replica="other", since=WALL_OFFSET, **fields)


def test_adopt_open_uses_the_remote_retry_at() -> None:
    h = make(wait_open=5.0)
    h.breaker.adopt(remote(OPEN, retry_at=h.clock.wall() + 7.0, opens=3, reason="seen elsewhere"))
    assert h.breaker.state is OPEN
    assert h.events == []
    assert h.breaker.opens == 3
    with pytest.raises(CircuitOpenError) as info:
        h.breaker.acquire()
    assert str(info.value) == open_message("seen elsewhere", "7.0")
    h.run("+6.9 X +0.1 A")
    assert h.events == [(OPEN, HALF, "wait elapsed; probing")]  # our own transitions are published
    h.run("f")
    assert h.breaker.retry_after() == min(5.0 * 2**3, 60.0)


def test_adopt_open_with_past_retry_at_probes_at_once() -> None:
    h = make()
    h.breaker.adopt(remote(OPEN, retry_at=h.clock.wall() - 3.0, opens=1))
    assert h.breaker.state is OPEN
    h.run("A")
    assert h.breaker.state is HALF


def test_adopt_ignores_remote_half_open() -> None:
    h = make(consecutive_failures=1)
    h.breaker.adopt(remote(HALF, opens=1))
    assert h.breaker.state is CLOSED
    h.run("F")
    h.breaker.adopt(remote(HALF, opens=2))
    assert h.breaker.state is OPEN
    assert h.breaker.opens == 1


def test_adopt_closed_closes_without_events() -> None:
    h = make(consecutive_failures=1)
    h.run("F")
    h.breaker.adopt(remote(CLOSED, opens=0, reason="probes succeeded"))
    assert h.breaker.state is CLOSED
    assert h.breaker.opens == 0
    assert h.edges == [(CLOSED, OPEN)]
    h.run("S S S")


def test_adopt_makes_local_permits_stale() -> None:
    h = make(consecutive_failures=1, wait_open=1.0)
    h.run("F +1 A")
    h.breaker.adopt(remote(CLOSED, opens=0))
    h.run("f")  # the probe we admitted before adopting
    assert h.breaker.state is CLOSED


def test_adopt_keeps_the_callback_for_later_transitions() -> None:
    h = make()
    h.breaker.adopt(remote(OPEN, retry_at=h.clock.wall() + 1.0, opens=1))
    assert h.breaker.on_transition is not None
    h.run("+1 A")
    assert h.edges == [(OPEN, HALF)]


def test_reset_closes_and_forgets() -> None:
    h = make(consecutive_failures=2, wait_open=1.0, wait_multiplier=2.0)
    h.run("F F +1 F +2 F")
    assert h.breaker.opens == 3
    h.breaker.reset("operator says so")
    assert h.breaker.state is CLOSED
    assert h.events[-1] == (OPEN, CLOSED, "operator says so")
    assert h.breaker.opens == 0
    assert h.breaker.snapshot().calls_in_window == 0
    h.run("F F")
    assert h.breaker.retry_after() == 1.0


def test_config_rejects_impossible_settings() -> None:
    with pytest.raises(ValueError, match="success_threshold"):
        BreakerConfig(permitted_calls_in_half_open=1, success_threshold=2)
    with pytest.raises(ValueError, match="minimum_calls"):
        BreakerConfig(window_size=5, minimum_calls=6)


# --- a reference model, and a stateful comparison ------------------------------------------------
class Model:
    """The requirements, plainly: states, a count window, a run of failures, the growing wait."""

    def __init__(self, c: BreakerConfig, now: float) -> None:
        self.c = c
        self.state = CLOSED
        self.epoch = 0  # bumps on every transition; permits from an older epoch are ignored
        self.since = now
        self.window: list[bool] = []  # True = failure; the last c.window_size outcomes
        self.consecutive = 0
        self.last_failure = now
        self.opens = 0
        self.open_until = 0.0
        self.probes = 0  # admitted probes without a verdict
        self.probe_successes = 0
        self.edges: list[tuple[BreakerState, BreakerState]] = []

    def move(self, new: BreakerState, now: float) -> None:
        self.edges.append((self.state, new))
        self.state, self.epoch, self.since = new, self.epoch + 1, now
        self.probes = self.probe_successes = 0
        if new is CLOSED:
            self.window, self.consecutive = [], 0

    def open(self, now: float) -> None:
        wait = self.c.wait_open
        for _ in range(self.opens):
            wait = min(wait * self.c.wait_multiplier, self.c.wait_max)
        self.opens += 1
        self.open_until = now + min(wait, self.c.wait_max)
        self.move(OPEN, now)

    def tick(self, now: float) -> None:
        if self.state is OPEN and now >= self.open_until:
            self.move(HALF, now)
        elif self.state is HALF and now - self.since >= self.c.max_half_open:
            self.open(now)
        elif self.state is CLOSED and True in self.window and now - self.last_failure >= self.c.reset_timeout:
            self.window, self.consecutive = [], 0

    def acquire(self, now: float) -> tuple[str, tuple[bool, int] | None]:
        self.tick(now)
        if self.state is CLOSED:
            return "closed", (False, self.epoch)
        if self.state is HALF:
            if self.probes + self.probe_successes < self.c.permitted_calls_in_half_open:
                self.probes += 1
                return "probe", (True, self.epoch)
            return "half-open", None
        return "open", None

    def outcome(self, token: tuple[bool, int], ok: bool, seconds: float, now: float) -> None:
        probe, epoch = token
        slow = self.c.slow_call_threshold
        failed = not ok or (slow is not None and seconds > slow)
        if epoch != self.epoch:
            return
        self.tick(now)
        if epoch != self.epoch:
            return
        if probe:
            self.probes -= 1
            if failed:
                self.open(now)
                return
            self.probe_successes += 1
            if self.probe_successes >= self.c.success_threshold:
                self.opens = 0
                self.move(CLOSED, now)
            return
        self.window = [*self.window, failed][-self.c.window_size :]
        self.consecutive = self.consecutive + 1 if failed else 0
        if failed:
            self.last_failure = now
        if self.consecutive >= self.c.consecutive_failures or (
            len(self.window) >= self.c.minimum_calls
            and sum(self.window) / len(self.window) >= self.c.failure_rate_threshold
        ):
            self.open(now)

    def release(self, token: tuple[bool, int]) -> None:
        probe, epoch = token
        if probe and epoch == self.epoch:
            self.probes -= 1


@st.composite
def breaker_configs(draw: st.DrawFn) -> BreakerConfig:
    window = draw(st.integers(1, 6))
    permitted = draw(st.integers(1, 3))
    return BreakerConfig(
        window_size=window,
        minimum_calls=draw(st.integers(1, window)),
        failure_rate_threshold=draw(st.sampled_from([0.25, 0.5, 1.0])),
        consecutive_failures=draw(st.integers(1, 4)),
        slow_call_threshold=draw(st.sampled_from([None, 1.0])),
        wait_open=draw(st.sampled_from([1.0, 2.0])),
        wait_multiplier=draw(st.sampled_from([1.0, 2.0, 3.0])),
        wait_max=draw(st.sampled_from([1.5, 4.0, 60.0])),
        permitted_calls_in_half_open=permitted,
        success_threshold=draw(st.integers(1, permitted)),
        reset_timeout=draw(st.sampled_from([5.0, 20.0])),
        max_half_open=draw(st.sampled_from([3.0, 10.0])),
    )


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[Permit, tuple[bool, int]]] = []

    @initialize(config=breaker_configs())
    def start(self, config: BreakerConfig) -> None:
        self.clock = FakeClock(500.0)
        self.edges: list[tuple[BreakerState, BreakerState]] = []
        self.breaker = CircuitBreaker(
            "m",
            config,
            self.clock.monotonic,
            self.clock.wall,
            lambda s, old: self.edges.append((old, s.state)),
        )
        self.model = Model(config, self.clock.now)

    @rule()
    def acquire(self) -> None:
        expected, token = self.model.acquire(self.clock.now)
        try:
            permit = self.breaker.acquire()
        except CircuitOpenError as exc:
            message = str(exc)
            got = "half-open" if "half-open" in message else "open"
        else:
            message = ""
            got = "probe" if permit.probe else "closed"
            if token is not None:
                self.held.append((permit, token))
        assert got == expected
        if got == "open":
            assert re.search(r"is open \(.*\); next probe in \d+\.\ds$", message), message

    @rule(outcome=st.sampled_from(["ok", "slow", "fail"]))
    def call(self, outcome: str) -> None:
        """A whole call: acquire, and if admitted report at once."""
        before = len(self.held)
        self.acquire()
        if len(self.held) > before:
            if outcome == "fail":
                self.fail(len(self.held) - 1)
            else:
                self.succeed(len(self.held) - 1, 1.5 if outcome == "slow" else 0.0)

    @precondition(lambda self: self.held)
    @rule(i=st.integers(0, 20), seconds=st.sampled_from([0.0, 0.5, 1.0, 1.5]))
    def succeed(self, i: int, seconds: float) -> None:
        permit, token = self.held.pop(i % len(self.held))
        permit.success(seconds)
        self.model.outcome(token, True, seconds, self.clock.now)

    @precondition(lambda self: self.held)
    @rule(i=st.integers(0, 20))
    def fail(self, i: int) -> None:
        permit, token = self.held.pop(i % len(self.held))
        permit.failure("boom")
        self.model.outcome(token, False, 0.0, self.clock.now)

    @precondition(lambda self: self.held)
    @rule(i=st.integers(0, 20))
    def release(self, i: int) -> None:
        permit, token = self.held.pop(i % len(self.held))
        permit.release()
        self.model.release(token)

    @rule()
    def burst(self) -> None:
        """Concurrent callers: several acquire before anyone reports."""
        for _ in range(3):
            self.acquire()

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.0, 3.0, 10.0, 21.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: self.held)
    @rule(i=st.integers(0, 20), seconds=st.sampled_from([1.0, 3.0, 10.0]), ok=st.booleans())
    def late_verdict(self, i: int, seconds: float, ok: bool) -> None:
        """Time passes with no other caller, then a held call reports."""
        self.advance(seconds)
        if ok:
            self.succeed(i, 0.0)
        else:
            self.fail(i)

    @invariant()
    def agree(self) -> None:
        b, m = self.breaker, self.model
        assert b.state is m.state
        assert b.opens == m.opens
        assert self.edges == m.edges
        assert b._probes_in_flight == m.probes  # a leaked or double-freed probe slot shows at once
        expected_retry = max(0.0, m.open_until - self.clock.now) if m.state is OPEN else 0.0
        assert b.retry_after() == expected_retry
        snap = b.snapshot()
        assert snap.calls_in_window == len(m.window)
        assert snap.failure_rate == (round(sum(m.window) / len(m.window), 3) if m.window else 0.0)


BreakerMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_breaker_matches_model = BreakerMachine.TestCase
