"""Health verdicts: what the health service concludes about an instance, a module, the system.

Pure logic (no NATS, no clock of its own): the service gathers an Observation per instance and
calls `transition()`, which returns the change to publish, if any.

Instance verdict (`judge`), first rule that applies:

* unknown   - never heard from (no heartbeat yet);
* unhealthy - silent for `unhealthy_threshold` heartbeat intervals, or `unhealthy_threshold`
              consecutive failed check rounds, or over a resource limit for `unhealthy_window`;
* degraded  - the last check round failed (a ping, or one of the module's own checks), or over a
              resource limit for `violation_window`;
* healthy   - otherwise.

Module verdict (`module_verdict`) over its instances: no instances -> unknown; every instance
healthy -> healthy; some instance healthy or degraded -> degraded (it still serves, but not
fully); otherwise some instance unhealthy -> unhealthy; else unknown.

System verdict (`system_verdict`) over the required modules: none seen -> unknown; every one
healthy -> healthy; any unhealthy -> unhealthy; else degraded. Modules with `required = false`
do not count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "Observation",
    "Thresholds",
    "Verdict",
    "VerdictChange",
    "judge",
    "module_verdict",
    "system_verdict",
    "transition",
]


class Verdict(IntEnum):
    """The value is what `corral_health_verdict` exports."""

    HEALTHY = 0
    DEGRADED = 1
    UNHEALTHY = 2
    UNKNOWN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Thresholds:
    interval: float = 1.0  # the heartbeat interval, seconds
    unhealthy_threshold: int = 3  # missed heartbeats, or failed check rounds in a row
    violation_window: float = 5.0  # seconds over a limit before it counts (degraded, throttle)
    unhealthy_window: float = 30.0  # seconds over a limit before it counts as unhealthy


@dataclass(frozen=True, slots=True)
class Observation:
    """What is known about one instance now."""

    heartbeat_age: float | None  # seconds since its last heartbeat; None: never heard from
    failed_rounds: int = 0  # consecutive check rounds with a failure (0: the last one passed)
    failing: tuple[str, ...] = ()  # what failed in the last round ("ping", "check:db", ...)
    over_limit_for: float = 0.0  # seconds it has been over a resource limit (0: within limits)
    over_limits: tuple[str, ...] = ()  # which limits ("memory_mb", ...)
    interval: float = 0.0  # seconds between its beats, when longer than the thresholds' interval


@dataclass(frozen=True, slots=True)
class VerdictChange:
    old: Verdict
    new: Verdict
    reason: str


def judge(obs: Observation, th: Thresholds) -> tuple[Verdict, str]:
    """The verdict an observation deserves, and why."""
    if obs.heartbeat_age is None:
        return Verdict.UNKNOWN, "no heartbeat yet"
    silent_for = max(th.interval, obs.interval) * th.unhealthy_threshold
    if obs.heartbeat_age > silent_for:
        return Verdict.UNHEALTHY, f"no heartbeat for {obs.heartbeat_age:.1f}s (limit {silent_for:g}s)"
    if obs.failed_rounds >= th.unhealthy_threshold:
        return Verdict.UNHEALTHY, f"{obs.failed_rounds} failed check rounds in a row: {_list(obs.failing)}"
    if obs.over_limit_for >= th.unhealthy_window:
        return Verdict.UNHEALTHY, f"over {_list(obs.over_limits)} for {obs.over_limit_for:.1f}s"
    if obs.failed_rounds > 0:
        return Verdict.DEGRADED, f"failing: {_list(obs.failing)}"
    if obs.over_limit_for >= th.violation_window:
        return Verdict.DEGRADED, f"over {_list(obs.over_limits)} for {obs.over_limit_for:.1f}s"
    return Verdict.HEALTHY, "ok"


def transition(current: Verdict, obs: Observation, th: Thresholds) -> VerdictChange | None:
    """The change from `current` the observation calls for, or None when the verdict stands.

    Every edge is allowed; which one is taken is decided by `judge`:
    # UNKNOWN   -> HEALTHY    first heartbeat, checks pass
    # HEALTHY   -> DEGRADED   a check round failed, or a limit exceeded for violation_window
    # DEGRADED  -> HEALTHY    checks pass again and figures are back under the limits
    # DEGRADED  -> UNHEALTHY  failures reached unhealthy_threshold, or a limit held past unhealthy_window
    # HEALTHY   -> UNHEALTHY  heartbeats stopped for unhealthy_threshold intervals
    # UNHEALTHY -> HEALTHY    heartbeats and checks are back (a restarted instance)
    """
    new, reason = judge(obs, th)
    if new == current:
        return None
    return VerdictChange(current, new, reason)


def module_verdict(instances: Iterable[Verdict]) -> Verdict:
    seen = list(instances)
    if not seen:
        return Verdict.UNKNOWN
    if all(v == Verdict.HEALTHY for v in seen):
        return Verdict.HEALTHY
    if any(v in (Verdict.HEALTHY, Verdict.DEGRADED) for v in seen):
        return Verdict.DEGRADED
    if any(v == Verdict.UNHEALTHY for v in seen):
        return Verdict.UNHEALTHY
    return Verdict.UNKNOWN


def system_verdict(required: Iterable[Verdict]) -> Verdict:
    seen = list(required)
    if not seen:
        return Verdict.UNKNOWN
    if all(v == Verdict.HEALTHY for v in seen):
        return Verdict.HEALTHY
    if any(v == Verdict.UNHEALTHY for v in seen):
        return Verdict.UNHEALTHY
    return Verdict.DEGRADED


def _list(items: tuple[str, ...]) -> str:
    return ", ".join(items) or "?"
