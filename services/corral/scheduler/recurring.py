"""Recurring tasks: when each tick falls, which due tick to submit, and when to skip one.

Pure logic, no NATS and no clock of its own: every function takes `now` (Unix seconds), so
the tests drive it with a fake clock. `corral.scheduler.recurring_runner` does the I/O.

* Ticks come from the schedule alone: an interval's ticks are the multiples of `every` since
  the Unix epoch, a cron expression's are its matches in its time zone. Every replica of the
  scheduler therefore computes the same ticks, and submits each with the idempotency key
  `recurring:<name>:<tick>`; the scheduler's dedup makes the second submission a no-op.
* A tick is submitted while it is at most `grace` seconds old (after a restart, a slow loop
  or a broker outage); older ones, and those overtaken by a newer due tick, are `missed`.
* A tick is `skipped` while the machine's CPU or memory use is over the schedule's threshold.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Literal, NamedTuple
from zoneinfo import ZoneInfo

from cronsim import CronSim

from corral.config import RecurringConfig

__all__ = ["LoadSample", "Outcome", "Plan", "Schedule", "Tracker", "idempotency_key", "skip_reason"]

RETRY_DELAY = 1.0  # seconds between attempts to submit a tick whose submission failed
MAX_SCAN = 1000  # cron ticks counted one by one when several were missed; more are reported as this many
_MICROSECOND = timedelta(microseconds=1)
_CURSOR_EPSILON = 0.001  # seconds: a cursor this far before a tick leaves that tick due


class Outcome(enum.StrEnum):
    SUBMITTED = "submitted"  # this replica's submission created the task
    DUPLICATE = "duplicate"  # another replica submitted this tick first: same task, not run twice
    SKIPPED = "skipped"  # the machine was over a threshold
    MISSED = "missed"  # older than `grace` when the scheduler got to it, or overtaken by a newer tick
    FAILED = "failed"  # the submission failed (retried while the tick is within `grace`)


Source = Literal["config", "api"]


def idempotency_key(name: str, tick: float) -> str:
    """The same for every replica: ticks are at least a second apart, so whole seconds suffice."""
    return f"recurring:{name}:{math.floor(tick)}"


@dataclass(frozen=True)
class Schedule:
    name: str
    config: RecurringConfig
    source: Source = "api"

    @property
    def zone(self) -> tzinfo:
        return ZoneInfo(self.config.timezone)

    def next_tick(self, after: float) -> float:
        """The first tick strictly after `after`."""
        every = self.config.interval
        if every is not None:
            return (math.floor(after / every) + 1) * every
        assert self.config.cron is not None  # RecurringConfig holds exactly one of the two
        start = datetime.fromtimestamp(after, self.zone)
        return next(CronSim(self.config.cron, start)).timestamp()

    def latest_tick(self, at_or_before: float) -> float:
        """The last tick at or before `at_or_before`."""
        every = self.config.interval
        if every is not None:
            return math.floor(at_or_before / every) * every
        assert self.config.cron is not None
        # cronsim's reverse iteration returns the start itself when it matches and has microseconds.
        start = datetime.fromtimestamp(at_or_before, self.zone) + _MICROSECOND
        return next(CronSim(self.config.cron, start, reverse=True)).timestamp()

    def ticks_between(self, after: float, up_to: float) -> int:
        """How many ticks fall in (after, up_to], counting at most MAX_SCAN for cron."""
        every = self.config.interval
        if every is not None:
            return max(0, math.floor(up_to / every) - math.floor(after / every))
        count, tick = 0, self.next_tick(after)
        while tick <= up_to and count < MAX_SCAN:
            count += 1
            tick = self.next_tick(tick)
        return count


class Plan(NamedTuple):
    submit: float | None  # the tick to submit now, if any
    missed: int  # ticks given up in (cursor, now]
    cursor: float  # every tick up to here is handled once `submit` is
    next_tick: float  # when to look again


def plan(schedule: Schedule, cursor: float, now: float) -> Plan:
    """What to do at `now` with the ticks after `cursor` (the last tick already handled)."""
    upcoming = schedule.next_tick(cursor)
    if upcoming > now:
        return Plan(None, 0, cursor, upcoming)
    latest = schedule.latest_tick(now)
    due = schedule.ticks_between(cursor, now)
    after = schedule.next_tick(now)
    if now - latest <= schedule.config.grace:
        return Plan(latest, due - 1, latest, after)
    return Plan(None, due, latest, after)


class LoadSample(NamedTuple):
    cpu_percent: float
    memory_percent: float


def skip_reason(config: RecurringConfig, load: LoadSample) -> str | None:
    """Why a tick must be skipped on a machine this busy, or None to submit it."""
    if config.max_cpu_percent is not None and load.cpu_percent > config.max_cpu_percent:
        return f"cpu {load.cpu_percent:.1f}% > max_cpu_percent {config.max_cpu_percent:g}%"
    if config.max_memory_percent is not None and load.memory_percent > config.max_memory_percent:
        return f"memory {load.memory_percent:.1f}% > max_memory_percent {config.max_memory_percent:g}%"
    return None


@dataclass
class Tracker:
    """One schedule's progress in this replica: the cursor, the tick being retried, the counts."""

    schedule: Schedule
    cursor: float
    retry: float | None = None  # a tick whose submission failed; tried again while within grace
    counts: Counter[Outcome] = field(default_factory=Counter)
    last_tick: float | None = None
    last_outcome: Outcome | None = None
    last_task_id: str | None = None
    last_reason: str | None = None

    @classmethod
    def starting(cls, schedule: Schedule, now: float) -> Tracker:
        """A fresh tracker catches up on the latest tick if it is up to `grace` old (another
        replica's submission of it, if any, makes ours a DUPLICATE). Older ticks fell before
        this scheduler started: they are not counted as missed."""
        latest = schedule.latest_tick(now)
        if now - latest <= schedule.config.grace:
            return cls(schedule, cursor=latest - _CURSOR_EPSILON)  # the tick after it is `latest`
        return cls(schedule, cursor=now)

    def due(self, now: float) -> tuple[float | None, float]:
        """The tick to submit at `now` (or None) and when to look again; counts missed ticks."""
        grace = self.schedule.config.grace
        if self.retry is not None:
            if now - self.retry <= grace:
                return self.retry, now + RETRY_DELAY
            self.record(self.retry, Outcome.MISSED, reason="submission kept failing")
            self.retry = None
        decision = plan(self.schedule, self.cursor, now)
        if decision.missed:
            self.counts[Outcome.MISSED] += decision.missed
        self.cursor = decision.cursor
        return decision.submit, decision.next_tick

    def record(
        self, tick: float, outcome: Outcome, *, task_id: str | None = None, reason: str | None = None
    ) -> None:
        self.counts[outcome] += 1
        self.retry = tick if outcome is Outcome.FAILED else None
        self.last_tick, self.last_outcome = tick, outcome
        self.last_task_id, self.last_reason = task_id, reason
