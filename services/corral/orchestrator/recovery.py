"""What to do when a module fails: strategy, delay, restart intensity and escalation. Pure logic.

A `RecoveryPlanner` per module is fed failures with the time they happened (monotonic seconds;
tests pass a fake clock) and answers with a `Decision`. It counts the recoveries of the current
strategy in a sliding window (Erlang/OTP's restart intensity): the failure that would make it
`max_attempts + 1` within `window` seconds escalates to the next strategy of the policy, and past
the last one the answer is `give_up`. A module that stays up for a whole window goes back to its
first strategy with a clean count.
"""

from __future__ import annotations

import random
from collections import deque

import msgspec

from corral.config import RestartPolicy

__all__ = ["GIVE_UP", "Decision", "RecoveryPlanner", "backoff_delay"]

GIVE_UP = "give_up"


class Decision(msgspec.Struct, kw_only=True):
    action: str  # a strategy name, or "give_up"
    delay: float  # seconds to wait before acting
    # This recovery's number within the window (1-based); for give_up and manual, the attempts
    # spent at the strategy that ran out (0 when manual is the first strategy).
    attempt: int
    max_attempts: int
    reason: str  # one line for the lifecycle event and the recovery history
    escalated_from: str = ""  # the strategy whose intensity ran out, when this decision escalated


def backoff_delay(policy: RestartPolicy, attempt: int, rng: random.Random) -> float:
    """Capped exponential backoff for the `attempt`-th recovery (1-based), with up to `jitter` of
    it taken off at random so instances failing together do not come back together."""
    base = min(policy.backoff_max, policy.backoff_initial * policy.backoff_multiplier ** (attempt - 1))
    return base * (1.0 - policy.jitter * rng.random())


class RecoveryPlanner:
    def __init__(self, policy: RestartPolicy, *, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.rng = rng or random.Random()
        self.level = 0  # index into policy.chain
        self.recent: deque[float] = deque()  # times of recoveries at the current level
        self.last_failure: float | None = None

    @property
    def strategy(self) -> str:
        chain = self.policy.chain
        return chain[self.level] if self.level < len(chain) else GIVE_UP

    def attempts_in_window(self, now: float) -> int:
        self._forget_before(now - self.policy.window)
        return len(self.recent)

    def decide(self, now: float, failure: str) -> Decision:
        policy = self.policy
        if self.last_failure is not None and now - self.last_failure > policy.window:
            # Up for a whole window since the last failure: forgive and start over.
            self.level = 0
            self.recent.clear()
        self.last_failure = now
        self._forget_before(now - policy.window)
        escalated_from = ""
        while (
            self.strategy != GIVE_UP and self.strategy != "manual" and len(self.recent) >= policy.max_attempts
        ):
            escalated_from = escalated_from or self.strategy
            self.level += 1
            self.recent.clear()
        limit = (
            f"{policy.max_attempts} recoveries within {policy.window:g}s ({escalated_from})"
            if escalated_from
            else ""
        )
        strategy = self.strategy
        if strategy == GIVE_UP:
            return Decision(
                action=GIVE_UP, delay=0.0, attempt=policy.max_attempts, max_attempts=policy.max_attempts,
                reason=f"restart intensity limit reached: {limit}; giving up after: {failure}",
                escalated_from=escalated_from,
            )  # fmt: skip
        if strategy == "manual":
            why = f"restart intensity limit reached: {limit}; " if limit else ""
            return Decision(
                action="manual", delay=0.0, attempt=policy.max_attempts if escalated_from else 0,
                max_attempts=policy.max_attempts,
                reason=f"{why}waiting for an operator (strategy manual) after: {failure}",
                escalated_from=escalated_from,
            )  # fmt: skip
        self.recent.append(now)
        attempt = len(self.recent)
        delay = backoff_delay(policy, attempt, self.rng)
        escalation = f"escalated from {escalated_from} after {limit}; " if escalated_from else ""
        return Decision(
            action=strategy,
            delay=delay,
            attempt=attempt,
            max_attempts=policy.max_attempts,
            reason=(
                f"{escalation}{strategy} {attempt}/{policy.max_attempts} in {delay:.2f}s after: {failure}"
            ),
            escalated_from=escalated_from,
        )

    def reset(self) -> None:
        """An operator acted (start/restart): the count starts over at the first strategy."""
        self.level = 0
        self.recent.clear()
        self.last_failure = None

    def _forget_before(self, cutoff: float) -> None:
        while self.recent and self.recent[0] < cutoff:
            self.recent.popleft()
