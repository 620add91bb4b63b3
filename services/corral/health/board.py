"""The health board: verdicts of every instance and module, check results and limit violations.

Pure logic (no NATS): the service feeds it heartbeats (through the InstanceRegistry) and check
rounds, calls `evaluate()` on every tick, and acts on what it returns: verdict changes to
publish, modules to throttle and to un-throttle.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from corral.config import ResourceLimits
from corral.health.registry import InstanceRegistry, InstanceView
from corral.health.verdicts import (
    Observation,
    Thresholds,
    Verdict,
    VerdictChange,
    module_verdict,
    transition,
)

__all__ = ["Evaluation", "HealthBoard", "InstanceHealth", "LimitViolation"]


@dataclass
class InstanceHealth:
    verdict: Verdict = Verdict.UNKNOWN
    reason: str = "no heartbeat yet"
    failed_rounds: int = 0
    failing: tuple[str, ...] = ()
    checks: dict[str, dict[str, object]] = field(default_factory=dict)
    over_since: float | None = None
    over_limits: tuple[str, ...] = ()
    violating: bool = False  # over a limit for violation_window, and reported


@dataclass(frozen=True, slots=True)
class LimitViolation:
    module: str
    instance: str
    limits: tuple[str, ...]  # empty in a recovery
    seconds: float
    figures: dict[str, float]


@dataclass
class Evaluation:
    instance_changes: list[tuple[str, str, VerdictChange]] = field(default_factory=list)
    module_changes: list[tuple[str, VerdictChange]] = field(default_factory=list)
    violations: list[LimitViolation] = field(default_factory=list)  # newly sustained
    recoveries: list[LimitViolation] = field(default_factory=list)  # back under every limit
    throttle: list[str] = field(default_factory=list)  # modules to throttle now
    unthrottle: list[str] = field(default_factory=list)  # modules to release now


class HealthBoard:
    def __init__(
        self,
        registry: InstanceRegistry,
        thresholds: Thresholds,
        *,
        limits_for: Callable[[str], ResourceLimits | None] = lambda _: None,
        expected: tuple[str, ...] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.thresholds = thresholds
        self.limits_for = limits_for
        self.expected = expected  # modules the system file declares: unknown until heard from
        self.clock = clock
        self.instances: dict[tuple[str, str], InstanceHealth] = {}
        self.modules: dict[str, Verdict] = dict.fromkeys(expected, Verdict.UNKNOWN)
        self.throttled: set[str] = set()
        self.views: list[InstanceView] = []

    def health_of(self, service: str, instance: str) -> InstanceHealth:
        return self.instances.setdefault((service, instance), InstanceHealth())

    def record_round(
        self, service: str, instance: str, failing: list[str], checks: dict[str, dict[str, object]]
    ) -> None:
        """The result of one check round of an instance: what failed (empty: all passed)."""
        health = self.health_of(service, instance)
        health.failed_rounds = health.failed_rounds + 1 if failing else 0
        health.failing = tuple(failing)
        health.checks = checks

    def evaluate(self) -> Evaluation:
        now = self.clock()
        result = Evaluation()
        self.views = self.registry.views()
        present = {(v.service, v.instance) for v in self.views}
        for key in [k for k in self.instances if k not in present]:
            del self.instances[key]  # forgotten by the registry
        by_module: dict[str, list[Verdict]] = {name: [] for name in self.expected}
        for view in self.views:
            health = self.health_of(view.service, view.instance)
            self._watch_limits(view, health, now, result)
            obs = Observation(
                heartbeat_age=view.last_seen_seconds,
                failed_rounds=health.failed_rounds,
                failing=health.failing,
                over_limit_for=now - health.over_since if health.over_since is not None else 0.0,
                over_limits=health.over_limits,
                interval=view.heartbeat_interval,
            )
            change = transition(health.verdict, obs, self.thresholds)
            if change is not None:
                health.verdict, health.reason = change.new, change.reason
                result.instance_changes.append((view.service, view.instance, change))
            by_module.setdefault(view.service, []).append(health.verdict)
        for module in [m for m in self.modules if m not in by_module]:
            del self.modules[module]  # every instance forgotten, and not in the system file
        for module, verdicts in by_module.items():
            old = self.modules.get(module, Verdict.UNKNOWN)
            new = module_verdict(verdicts)
            self.modules[module] = new
            if new != old:
                result.module_changes.append((module, VerdictChange(old, new, _why(module, self))))
        self._throttle_decisions(result)
        return result

    def _watch_limits(
        self, view: InstanceView, health: InstanceHealth, now: float, result: Evaluation
    ) -> None:
        limits = self.limits_for(view.service)
        over = (
            limits.exceeded(view.cpu_percent, view.rss_bytes, view.open_fds, view.threads)
            if limits and view.alive  # the registry's judgement, by the instance's own interval
            else []
        )
        figures = {
            "cpu_percent": view.cpu_percent,
            "memory_mb": round(view.rss_bytes / 2**20, 1),
            "open_files": view.open_fds,
            "threads": view.threads,
        }
        if over:
            if health.over_since is None:
                health.over_since = now
            health.over_limits = tuple(over)
            held = now - health.over_since
            if not health.violating and held >= self.thresholds.violation_window:
                health.violating = True
                result.violations.append(
                    LimitViolation(view.service, view.instance, tuple(over), held, figures)
                )
            return
        if health.violating:
            held = now - health.over_since if health.over_since is not None else 0.0
            result.recoveries.append(LimitViolation(view.service, view.instance, (), held, figures))
        health.over_since, health.over_limits, health.violating = None, (), False

    def _throttle_decisions(self, result: Evaluation) -> None:
        violating = {s for (s, _), h in self.instances.items() if h.violating}
        result.throttle = sorted(violating - self.throttled)
        result.unthrottle = sorted(self.throttled - violating)
        self.throttled = violating


def _why(module: str, board: HealthBoard) -> str:
    reasons = [
        f"{instance}: {h.verdict.label} ({h.reason})"
        for (service, instance), h in sorted(board.instances.items())
        if service == module and h.verdict != Verdict.HEALTHY
    ]
    return "; ".join(reasons) or (
        "all instances healthy" if board.modules.get(module) == Verdict.HEALTHY else "no instances"
    )
