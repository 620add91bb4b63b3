"""The component that submits recurring tasks: one loop per scheduler replica.

Every replica runs it. Each wakes at the next tick of any schedule (or every `refresh`
seconds, to pick up schedules added through another replica), asks `corral.scheduler.recurring`
what is due, skips a tick while the machine is over a threshold, and otherwise submits it
through the scheduler's own submit path with the idempotency key `recurring:<name>:<tick>`.
The scheduler maps that key to one task id (JetStream drops the second publish as a duplicate
within its window, the task record answers after it), so a tick runs once however many
replicas submit it; the later replicas count it as `duplicate`.

Schedules come from `[scheduler.recurring.<name>]` in corral.toml (read-only here) and from
the API (`recurring.add` / `recurring.remove`), stored in the KV bucket `corral_recurring`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, NamedTuple, Protocol

import msgspec
import nats.errors
import nats.js.errors
import psutil
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from corral.bus import KVSpec, ensure_kv
from corral.component import Component, cancel_and_wait
from corral.config import RecurringConfig, load_config
from corral.errors import ConflictError, NotFoundError
from corral.scheduler.recurring import (
    RETRY_DELAY,
    LoadSample,
    Outcome,
    Schedule,
    Tracker,
    idempotency_key,
    skip_reason,
)
from corral.subjects import Subjects

__all__ = [
    "LoadProbe",
    "PsutilProbe",
    "RecurringRunner",
    "ScheduleView",
    "TickCollector",
    "TickEvent",
    "TickSubmission",
    "TickSubmitted",
    "recurring_from_env",
]

log = logging.getLogger("corral.scheduler.recurring")
_encode = msgspec.json.Encoder().encode
_decode_config = msgspec.json.Decoder(RecurringConfig).decode


class TickSubmission(NamedTuple):
    """What the runner asks the scheduler to submit for one tick."""

    name: str  # the task's name: `recurring:<schedule>`
    type: str
    payload: Any
    priority: int
    capabilities: list[str]
    idempotency_key: str


class TickSubmitted(NamedTuple):
    task_id: str
    duplicate: bool  # another replica (or an earlier attempt) submitted this tick first


SubmitFn = Callable[[TickSubmission], Awaitable[TickSubmitted]]


class LoadProbe(Protocol):
    def sample(self) -> LoadSample: ...


class PsutilProbe:
    """The machine's CPU use since the previous sample (the loop samples at least every
    `refresh` seconds) and its memory use now."""

    def __init__(self) -> None:
        psutil.cpu_percent(None)  # the first call only starts the measurement

    def sample(self) -> LoadSample:
        return LoadSample(psutil.cpu_percent(None), psutil.virtual_memory().percent)


class TickEvent(msgspec.Struct, kw_only=True):
    """`<prefix>.evt.task.recurring.<name>`: what one replica did with one tick."""

    name: str
    tick: float
    outcome: str
    task_id: str | None = None
    reason: str | None = None
    instance: str = ""
    timestamp: float = 0.0


class ScheduleView(msgspec.Struct, kw_only=True):
    """One schedule in `recurring.list`, with this replica's counts."""

    name: str
    source: str  # "config" (corral.toml) or "api"
    schedule: RecurringConfig
    next_tick: float | None
    last_tick: float | None
    last_outcome: str | None
    last_task_id: str | None
    last_reason: str | None
    counts: dict[str, int]
    instance: str


def recurring_from_env() -> dict[str, RecurringConfig]:
    """`[scheduler.recurring]` of the corral.toml named by CORRAL_CONFIG (`corral up` sets it)."""
    source = os.environ.get("CORRAL_CONFIG")
    return load_config(source).scheduler.recurring if source else {}


class RecurringRunner(Component):
    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        subjects: Subjects,
        submit: SubmitFn,
        *,
        configured: dict[str, RecurringConfig] | None = None,
        instance: str = "",
        probe: LoadProbe | None = None,
        clock: Callable[[], float] = time.time,
        refresh: float = 2.0,
    ) -> None:
        self.nc, self.js, self.subjects = nc, js, subjects
        self._submit = submit
        self.configured = {
            name: Schedule(name, config, "config") for name, config in (configured or {}).items()
        }
        self.instance = instance
        self.probe = probe or PsutilProbe()
        self.clock = clock
        self.refresh = refresh
        self.trackers: dict[str, Tracker] = {}
        self._stored: dict[str, Schedule] = {}
        self._stored_seq: int | None = None  # the bucket's last sequence when it was last read
        self._kv: Any = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        self._kv = await ensure_kv(self.js, KVSpec(bucket=self.subjects.recurring_bucket))
        await self._reload(force=True)
        self._task = asyncio.create_task(self._run(), name="scheduler-recurring")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    # --- the API -------------------------------------------------------------------------------

    async def add(self, name: str, config: RecurringConfig) -> tuple[ScheduleView, bool]:
        """Store an API schedule (replacing one of the same name); returns (view, replaced)."""
        self._refuse_configured(name, "change it there, or add this one under another name")
        replaced = await self._stored_entry(name) is not None
        await self._kv.put(name, _encode(config))
        await self._reload(force=True)
        return self._view(name), replaced

    async def remove(self, name: str) -> None:
        self._refuse_configured(name, "remove it there")
        if await self._stored_entry(name) is None:
            raise NotFoundError(f"no recurring task named {name!r}: see recurring.list")
        await self._kv.delete(name)
        await self._reload(force=True)

    async def views(self) -> list[ScheduleView]:
        """Every schedule, as stored now (whichever replica changed them last)."""
        await self._reload()
        return [self._view(name) for name in sorted(self._schedules())]

    def _refuse_configured(self, name: str, advice: str) -> None:
        if name in self.configured:
            raise ConflictError(
                f"recurring task {name!r} is defined in corral.toml ([scheduler.recurring.{name}]); {advice}"
            )

    async def _stored_entry(self, name: str) -> Any:
        """The bucket's entry for `name`, or None: the bucket, not this replica's copy, decides."""
        try:
            return await self._kv.get(name)
        except nats.js.errors.KeyNotFoundError:
            return None

    # --- the loop ------------------------------------------------------------------------------

    def _schedules(self) -> dict[str, Schedule]:
        return {**self._stored, **self.configured}  # corral.toml wins a name clash

    def _view(self, name: str) -> ScheduleView:
        schedule = self._schedules()[name]
        tracker = self.trackers.get(name)
        now = self.clock()
        return ScheduleView(
            name=name,
            source=schedule.source,
            schedule=schedule.config,
            next_tick=schedule.next_tick(now) if schedule.config.enabled else None,
            last_tick=tracker.last_tick if tracker else None,
            last_outcome=tracker.last_outcome if tracker and tracker.last_outcome else None,
            last_task_id=tracker.last_task_id if tracker else None,
            last_reason=tracker.last_reason if tracker else None,
            counts={str(k): v for k, v in sorted(tracker.counts.items())} if tracker else {},
            instance=self.instance,
        )

    async def _reload(self, force: bool = False) -> None:
        """Read the API schedules when the bucket changed; keep trackers of unchanged schedules.

        The keys come from the stream's subjects (one STREAM.INFO), not from nats-py's
        `kv.keys()`, whose watcher can report no keys for a key written a moment before.
        """
        bucket = self.subjects.recurring_bucket
        info = await self.js.stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.>")
        if not force and info.state.last_seq == self._stored_seq:
            return
        stored: dict[str, Schedule] = {}
        for subject in sorted(info.state.subjects or {}):
            name = subject.removeprefix(f"$KV.{bucket}.")
            try:
                entry = await self._kv.get(name)
                stored[name] = Schedule(name, _decode_config(entry.value or b""), "api")
            except nats.js.errors.KeyNotFoundError:
                continue  # removed: its subject holds the delete marker
            except msgspec.ValidationError as exc:
                log.error("stored recurring task %r is invalid and is ignored: %s", name, exc)
        self._stored, self._stored_seq = stored, info.state.last_seq
        now = self.clock()
        active = {n: s for n, s in self._schedules().items() if s.config.enabled}
        for name in list(self.trackers):
            if name not in active or self.trackers[name].schedule != active[name]:
                del self.trackers[name]
        for name, schedule in active.items():
            if name not in self.trackers:
                self.trackers[name] = Tracker.starting(schedule, now)
        self._wake.set()

    async def _run(self) -> None:
        next_reload = 0.0
        while True:
            wake = self.clock() + RETRY_DELAY
            try:
                if self.clock() >= next_reload:
                    next_reload = self.clock() + self.refresh
                    await self._reload()
                wake = min(next_reload, await self._fire_due())
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("could not read recurring tasks (%r); trying again", exc)
            except Exception:  # a bug must not end the loop: every later tick would be lost
                log.exception("recurring task loop failed; going on")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, wake - self.clock()))

    async def _fire_due(self) -> float:
        """Submit (or skip) every due tick; return when the next one falls."""
        load = self.probe.sample()
        wake = math.inf
        for tracker in list(self.trackers.values()):
            tick, look_again = tracker.due(self.clock())
            if tick is not None:
                await self._fire(tracker, tick, load)
                if tracker.retry is not None:  # failed: try again soon, not at the next tick
                    look_again = min(look_again, self.clock() + RETRY_DELAY)
            wake = min(wake, look_again)
        return wake

    async def _fire(self, tracker: Tracker, tick: float, load: LoadSample) -> None:
        schedule = tracker.schedule
        config = schedule.config
        reason = skip_reason(config, load)
        if reason is not None:
            await self._record(tracker, tick, Outcome.SKIPPED, reason=reason)
            return
        request = TickSubmission(
            name=f"recurring:{schedule.name}",
            type=config.type,
            payload=config.payload,
            priority=int(config.priority),
            capabilities=list(config.capabilities),
            idempotency_key=idempotency_key(schedule.name, tick),
        )
        try:
            submitted = await self._submit(request)
        except Exception as exc:  # a broker outage, OVERLOADED, ...: retried while within grace
            log.warning("recurring task %s: submitting tick %.0f failed: %s", schedule.name, tick, exc)
            await self._record(tracker, tick, Outcome.FAILED, reason=f"{type(exc).__name__}: {exc}")
            return
        outcome = Outcome.DUPLICATE if submitted.duplicate else Outcome.SUBMITTED
        await self._record(tracker, tick, outcome, task_id=submitted.task_id)

    async def _record(
        self,
        tracker: Tracker,
        tick: float,
        outcome: Outcome,
        *,
        task_id: str | None = None,
        reason: str | None = None,
    ) -> None:
        tracker.record(tick, outcome, task_id=task_id, reason=reason)
        name = tracker.schedule.name
        event = TickEvent(
            name=name,
            tick=tick,
            outcome=outcome.value,
            task_id=task_id,
            reason=reason,
            instance=self.instance,
            timestamp=self.clock(),
        )
        with contextlib.suppress(nats.errors.Error):  # events are best effort; the counts are kept
            await self.nc.publish(self.subjects.event("task", "recurring", name), _encode(event))


class TickCollector(Collector):
    """`<prefix>_recurring_ticks_total{schedule, outcome}`, read from the trackers at scrape time
    (registered once per process; `trackers` reads those of the runner of the moment)."""

    def __init__(self, prefix: str, trackers: Callable[[], dict[str, Tracker]]) -> None:
        self.name = f"{prefix}_recurring_ticks"
        self.trackers = trackers

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            self.name,
            "Recurring task ticks in this replica, by schedule and outcome "
            "(submitted, duplicate, skipped, missed, failed)",
            labels=["schedule", "outcome"],
        )
        for name, tracker in sorted(self.trackers().items()):
            for outcome in Outcome:
                family.add_metric([name, outcome.value], tracker.counts[outcome])
        yield family
