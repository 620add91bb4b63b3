"""A circuit breaker per module, as in resilience4j. Pure logic: no NATS, an injected clock.

    CLOSED --(failure rate over the window >= threshold, or N consecutive failures)--> OPEN
    OPEN --(wait elapsed; the wait grows on every re-open, capped)--> HALF_OPEN
    HALF_OPEN --(success_threshold successful probes)--> CLOSED
    HALF_OPEN --(one failed probe, or no verdict within max_half_open)--> OPEN

Callers take a `Permit` with `acquire()` and report exactly one outcome on it. A permit that is
released without an outcome (the call was cancelled, the classifier raised) gives its
half-open slot back, so a breaker can never be wedged in HALF_OPEN by lost permits.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from corral.errors import CircuitOpenError
from corral.policy import BreakerConfig

__all__ = ["BreakerSnapshot", "BreakerState", "CircuitBreaker", "Permit"]


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerSnapshot(msgspec.Struct, kw_only=True):
    """What replicas share through KV `corral_breakers` and what `corral breakers` shows."""

    module: str
    state: BreakerState
    replica: str = ""  # the orchestrator instance that made the transition
    since: float  # wall-clock time of the last transition
    retry_at: float = 0.0  # wall-clock time of the next probe while OPEN
    opens: int = 0  # consecutive re-opens (drives the growing wait)
    reason: str = ""
    failure_rate: float = 0.0
    calls_in_window: int = 0


@dataclass
class Permit:
    """One admitted call. Report `success(seconds)` or `failure(reason)`, or `release()`."""

    breaker: CircuitBreaker
    probe: bool  # admitted while HALF_OPEN
    generation: int  # the breaker's transition count when admitted; stale permits are ignored
    done: bool = False

    def success(self, seconds: float = 0.0) -> None:
        if not self.done:
            self.done = True
            self.breaker._record(self, ok=True, seconds=seconds, reason="")

    def failure(self, reason: str) -> None:
        if not self.done:
            self.done = True
            self.breaker._record(self, ok=False, seconds=0.0, reason=reason)

    def release(self) -> None:
        """No outcome (cancelled): free the half-open slot without judging the module."""
        if not self.done:
            self.done = True
            self.breaker._release(self)


Transition = Callable[[BreakerSnapshot, BreakerState], None]


@dataclass
class CircuitBreaker:
    module: str
    config: BreakerConfig = field(default_factory=BreakerConfig)
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    on_transition: Transition | None = None

    def __post_init__(self) -> None:
        self.state = BreakerState.CLOSED
        self.generation = 0
        self.opens = 0
        self.reason = ""
        self._since = self.clock()
        self._since_wall = self.wall_clock()
        self._open_until = 0.0
        self._window: deque[bool] = deque(maxlen=self.config.window_size)  # True = failure
        self._failures = 0  # failures in the window, kept as it changes (judged on every call)
        self._consecutive = 0
        self._last_failure = 0.0
        self._probes_in_flight = 0
        self._probe_successes = 0

    # --- admission ---------------------------------------------------------------------------
    def acquire(self) -> Permit:
        """A permit to call the module, or CircuitOpenError saying when to try again."""
        now = self.clock()
        self._tick(now)
        if self.state is BreakerState.CLOSED:
            return Permit(self, probe=False, generation=self.generation)
        if self.state is BreakerState.HALF_OPEN:
            if self._probes_in_flight < self.config.permitted_calls_in_half_open - self._probe_successes:
                self._probes_in_flight += 1
                return Permit(self, probe=True, generation=self.generation)
            raise CircuitOpenError(
                f"circuit for module {self.module!r} is half-open and its "
                f"{self.config.permitted_calls_in_half_open} probe call(s) are in flight; retry shortly"
            )
        wait = max(0.0, self._open_until - now)
        raise CircuitOpenError(
            f"circuit for module {self.module!r} is open ({self.reason}); next probe in {wait:.1f}s"
        )

    def retry_after(self) -> float:
        return max(0.0, self._open_until - self.clock()) if self.state is BreakerState.OPEN else 0.0

    def _tick(self, now: float) -> None:
        """Time-driven transitions, evaluated lazily on every call."""
        if self.state is BreakerState.OPEN and now >= self._open_until:
            self._transition(BreakerState.HALF_OPEN, "wait elapsed; probing")  # OPEN -> HALF_OPEN
        elif self.state is BreakerState.HALF_OPEN and now - self._since >= self.config.max_half_open:
            self._open(now, "no probe verdict within max_half_open")  # HALF_OPEN -> OPEN (stuck)
        elif (
            self.state is BreakerState.CLOSED
            and self._failures  # only failures age out; a window of successes is kept
            and now - self._last_failure >= self.config.reset_timeout
        ):
            self._clear_window()  # CLOSED: failures are old news
            self._consecutive = 0

    # --- outcomes ----------------------------------------------------------------------------
    def _record(self, permit: Permit, *, ok: bool, seconds: float, reason: str) -> None:
        now = self.clock()
        slow = self.config.slow_call_threshold
        if ok and slow is not None and seconds > slow:
            ok, reason = False, f"slow call ({seconds:.3f}s > {slow:g}s)"
        if permit.generation != self.generation:
            return  # admitted before a transition; its verdict belongs to a past state
        self._tick(now)  # a probe verdict after max_half_open comes too late: re-open first
        if permit.generation != self.generation:
            return
        if permit.probe:
            self._probes_in_flight -= 1
            if not ok:
                self._open(now, f"probe failed: {reason}")  # HALF_OPEN -> OPEN
                return
            self._probe_successes += 1
            if self._probe_successes >= self.config.success_threshold:
                self.opens = 0
                self._transition(BreakerState.CLOSED, "probes succeeded")  # HALF_OPEN -> CLOSED
            return
        window = self._window
        if len(window) == window.maxlen and window[0]:
            self._failures -= 1  # the failure about to drop out of the window
        window.append(not ok)
        if not ok:
            self._failures += 1
        if ok:
            self._consecutive = 0
        else:
            self._consecutive += 1
            self._last_failure = now
        self._judge(now, reason)

    def _judge(self, now: float, reason: str) -> None:
        """After every outcome, as resilience4j: a success can complete `minimum_calls`."""
        if self._consecutive >= self.config.consecutive_failures:
            self._open(now, f"{self._consecutive} consecutive failures, last: {reason}")  # CLOSED -> OPEN
            return
        if len(self._window) >= self.config.minimum_calls:
            rate = self._failures / len(self._window)
            if rate >= self.config.failure_rate_threshold:
                last = f", last: {reason}" if self._window[-1] else ""
                self._open(now, f"failure rate {rate:.0%} over {len(self._window)} calls{last}")

    def _release(self, permit: Permit) -> None:
        if permit.probe and permit.generation == self.generation:
            self._probes_in_flight -= 1

    def _clear_window(self) -> None:
        self._window.clear()
        self._failures = 0

    # --- transitions -------------------------------------------------------------------------
    def _open(self, now: float, reason: str) -> None:
        c = self.config
        try:
            wait = min(c.wait_open * c.wait_multiplier**self.opens, c.wait_max)
        except OverflowError:  # after ~1000 re-opens (a long outage, or adopted from a replica)
            wait = c.wait_max
        self.opens += 1
        self._open_until = now + wait
        self._transition(BreakerState.OPEN, reason)

    def _transition(self, new: BreakerState, reason: str) -> None:
        old = self.state
        self.state = new
        self.reason = reason
        self.generation += 1
        self._since = self.clock()
        self._since_wall = self.wall_clock()
        self._probes_in_flight = 0
        self._probe_successes = 0
        if new is not BreakerState.OPEN:
            self._open_until = 0.0
        if new is BreakerState.CLOSED:
            self._clear_window()
            self._consecutive = 0
        if self.on_transition is not None:
            self.on_transition(self.snapshot(), old)

    # --- sharing -----------------------------------------------------------------------------
    def snapshot(self) -> BreakerSnapshot:
        window = len(self._window)
        return BreakerSnapshot(
            module=self.module,
            state=self.state,
            since=self._since_wall,
            # when it opened (wall) plus the wait: the same answer whenever it is asked
            retry_at=self._since_wall + max(0.0, self._open_until - self._since)
            if self.state is BreakerState.OPEN
            else 0.0,
            opens=self.opens,
            reason=self.reason,
            failure_rate=round(self._failures / window, 3) if window else 0.0,
            calls_in_window=window,
        )

    def adopt(self, remote: BreakerSnapshot) -> None:
        """Take the state another replica published, without re-publishing it."""
        if remote.state is BreakerState.HALF_OPEN or (
            remote.state is self.state and remote.opens == self.opens
        ):
            return  # a replica's probing is its own; ours starts when our copy of the wait ends
        callback, self.on_transition = self.on_transition, None
        try:
            self.opens = remote.opens
            if remote.state is BreakerState.OPEN:
                self._open_until = self.clock() + max(0.0, remote.retry_at - self.wall_clock())
                self._transition(BreakerState.OPEN, remote.reason)
            else:
                self._transition(BreakerState.CLOSED, remote.reason or "closed by another replica")
        finally:
            self.on_transition = callback

    def reset(self, reason: str = "reset by operator") -> None:
        self.opens = 0
        self._transition(BreakerState.CLOSED, reason)
