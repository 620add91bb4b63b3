"""The health service process: heartbeats, active checks, verdicts, resource limits, events.

Every tick (the heartbeat interval) it judges every instance and module (corral.health.board);
every `check_interval` it runs a check round (corral.health.probes). A verdict change is an
event on `<prefix>.evt.health.<module>`; a sustained limit violation an event on
`<prefix>.evt.resource.<module>` and a `throttle` to the module, undone when figures are back
under the limits. Limits and which modules are required come from the system file named by
`CORRAL_CONFIG` (`corral up` sets it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import nats.js.errors
from aiohttp import web
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from corral.bus import ensure_stream, events_stream_spec, kv_values, publish_durable
from corral.component import cancel_and_wait
from corral.config import ModuleConfig, load_config
from corral.health.api import HealthApi
from corral.health.board import Evaluation, HealthBoard, LimitViolation
from corral.health.history import EventQuery, EventRecord, query_events
from corral.health.picture import picture
from corral.health.probes import Prober
from corral.health.registry import InstanceRegistry, InstanceView
from corral.health.settings import HealthSettings
from corral.health.verdicts import Thresholds, VerdictChange
from corral.protocol import Heartbeat
from corral.runtime import RequestContext, Service, ServiceSettings
from corral.runtime.heartbeat import next_beat

__all__ = ["HealthService"]

log = logging.getLogger("corral.health")
_encode = msgspec.json.Encoder().encode


class HealthService(Service):
    def __init__(
        self,
        settings: ServiceSettings | None = None,
        *,
        health: HealthSettings | None = None,
        modules: dict[str, ModuleConfig] | None = None,
    ) -> None:
        """`modules`: limits and `required` per module (default: from the `CORRAL_CONFIG` file)."""
        super().__init__(
            "health", settings=settings, description="corral health: heartbeats and system health"
        )
        self.health = health or HealthSettings.from_env()
        if modules is None:
            source = os.environ.get("CORRAL_CONFIG")
            modules = load_config(source).modules if source else {}
        self.modules = modules
        h = self.health
        self.registry = InstanceRegistry(
            interval=self.settings.heartbeat_interval, missed_beats=h.unhealthy_threshold
        )
        thresholds = Thresholds(
            self.settings.heartbeat_interval, h.unhealthy_threshold, h.violation_window, h.unhealthy_window
        )
        self.board = HealthBoard(
            self.registry,
            thresholds,
            limits_for=lambda m: self.modules[m].limits if m in self.modules else None,
            expected=tuple(sorted(self.modules)),
        )
        self.api = HealthApi(self)
        self._decoder = msgspec.json.Decoder(Heartbeat)
        self._subscription: Subscription | None = None
        self._breakers_kv: tuple[JetStreamContext, KeyValue] | None = None  # (its connection's js, handle)
        self._prober: Prober | None = None
        self._loop: asyncio.Task[None] | None = None
        self._event_ids = itertools.count(1)
        self._boot = f"{self.instance}-{int(time.time() * 1000)}"
        self._violations: Counter | None = None

    async def setup(self) -> None:
        await ensure_stream(self.js, events_stream_spec(self.subjects))
        self._subscription = await self.nc.subscribe(self.subjects.heartbeats_all, cb=self._on_heartbeat)
        self.endpoint("status")(self._status)
        self.endpoint("instances")(self._instances)
        self.endpoint("events", EventQuery)(self._events)
        if self._violations is None:  # once per process: restart() runs setup() again
            self.metrics.add_gauge_callback(
                "instances_alive",
                "Instances whose heartbeat is current",
                lambda: sum(v.alive for v in self.registry.views()),
            )
            self._violations = Counter(
                f"{self.metrics.prefix}_limit_violations_total",
                "Sustained resource limit violations, by module and limit",
                ["module", "limit"],
                registry=self.metrics.registry,
            )
            self.metrics.registry.register(_BoardCollector(self.metrics.prefix, self.board))
        await self.api.start()
        self._prober = Prober(self.nc, self.subjects)
        await self._prober.start()
        self._loop = asyncio.create_task(self._run(), name="health-loop")

    def add_http_routes(self, app: web.Application) -> None:
        self.api.add_routes(app)

    async def teardown(self) -> None:
        if self._loop is not None:
            await cancel_and_wait(self._loop)
        await self.api.stop()
        if self._prober is not None:
            await self._prober.stop()
        if self._subscription is not None:
            await self._subscription.unsubscribe()

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            self.registry.record(self._decoder.decode(msg.data))
        except msgspec.DecodeError as exc:
            log.warning("ignoring malformed heartbeat on %s: %s", msg.subject, exc)

    # --- the loop --------------------------------------------------------------------------------
    async def _run(self) -> None:
        # Ticks fall a quarter of a tick after the heartbeat boundaries (every process beats on
        # them, corral.runtime.heartbeat.next_beat), once that round of heartbeats is in.
        tick = min(self.settings.heartbeat_interval, self.health.check_interval)
        offset = tick / 4
        next_round = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                if loop.time() >= next_round:
                    next_round = loop.time() + self.health.check_interval - offset
                    await self._check_round()
                await self.evaluate()
            except Exception as exc:  # one bad round must not stop health monitoring
                log.warning("health round failed: %r", exc)
            now = time.time()
            await asyncio.sleep(next_beat(now - offset, tick) + offset - now)

    async def _check_round(self) -> None:
        assert self._prober is not None
        views = [v for v in self.registry.views() if v.alive]
        results = await self._prober.run_round(views, self.health.check_timeout)
        for (service, instance), (failing, checks) in results.items():
            self.board.record_round(service, instance, failing, checks)

    async def evaluate(self) -> Evaluation:
        """Judge every instance and module now, and act on what changed."""
        result = self.board.evaluate()
        for service, instance, change in result.instance_changes:
            log.info(
                "instance %s/%s: %s -> %s (%s)",
                service,
                instance,
                change.old.label,
                change.new.label,
                change.reason,
            )
            await self._publish("health", service, _verdict_event(service, instance, change))
        for module, change in result.module_changes:
            log.warning("module %s: %s -> %s (%s)", module, change.old.label, change.new.label, change.reason)
            await self._publish("health", module, _verdict_event(module, "", change))
        for violation in result.violations:
            assert self._violations is not None
            for limit in violation.limits:
                self._violations.labels(violation.module, limit).inc()
            await self._publish("resource", violation.module, _violation_event("violation", violation))
        for recovery in result.recoveries:
            await self._publish("resource", recovery.module, _violation_event("recovered", recovery))
        for module in result.throttle:
            await self._throttle(module, 1)
        for module in result.unthrottle:
            await self._throttle(module, None)
        return result

    async def _publish(self, kind: str, module: str, event: dict[str, Any]) -> None:
        subject = self.subjects.event(kind, module)
        data = _encode(event)
        try:
            await publish_durable(
                self.js, subject, data, msg_id=f"health:{self._boot}:{next(self._event_ids)}", deadline=5.0
            )
        except Exception as exc:  # history is best effort; the verdict already stands
            log.warning("could not publish %s: %r", subject, exc)

    async def _throttle(self, module: str, concurrency: int | None) -> None:
        log.warning(
            "module %s: %s", module, "throttling to 1 call at a time" if concurrency else "un-throttling"
        )
        body = _encode({"concurrency": concurrency})
        with contextlib.suppress(Exception):
            await self.nc.publish(self.subjects.modctl(module, "throttle"), body)

    # --- endpoints -------------------------------------------------------------------------------
    async def _instances(self, _: None, ctx: RequestContext) -> list[InstanceView]:
        return self.registry.views()

    async def _status(self, _: None, ctx: RequestContext) -> dict[str, Any]:
        return await self.picture()

    async def picture(self) -> dict[str, Any]:
        await self.evaluate()
        return picture(self.board, self.modules)

    async def breakers(self) -> list[dict[str, Any]]:
        """Every module's circuit breaker as the orchestrators last shared it: the snapshots they
        write to KV `corral_breakers` at each transition (corral.orchestrator.breakers), so the
        dashboard shows the state every replica honours, with or without an orchestrator up."""
        js, bucket = self.js, self.subjects.breakers_bucket
        if self._breakers_kv is None or self._breakers_kv[0] is not js:  # once per connection
            try:
                self._breakers_kv = (js, await js.key_value(bucket))
            except nats.js.errors.BucketNotFoundError:
                return []  # no orchestrator has shared a breaker yet
        snapshots = []
        for key, value in (await kv_values(js, bucket, kv=self._breakers_kv[1])).items():
            try:
                snapshot = msgspec.json.decode(value)
            except msgspec.DecodeError:
                log.warning("ignoring unreadable breaker entry %s", key)
                continue
            if isinstance(snapshot, dict):
                snapshots.append(snapshot)
        return snapshots

    async def _events(self, query: EventQuery, ctx: RequestContext) -> list[EventRecord]:
        return await query_events(self.js, self.subjects, query, time.time())


def _verdict_event(module: str, instance: str, change: VerdictChange) -> dict[str, Any]:
    return {
        "module": module,
        "instance": instance,  # empty: the module's verdict
        "old": change.old.label,
        "new": change.new.label,
        "reason": change.reason,
        "time": time.time(),
    }


def _violation_event(what: str, v: LimitViolation) -> dict[str, Any]:
    return {
        "event": what,  # violation | recovered
        "module": v.module,
        "instance": v.instance,
        "limits": list(v.limits),
        "seconds": round(v.seconds, 3),
        "figures": v.figures,
        "time": time.time(),
    }


class _BoardCollector(Collector):
    """Heartbeat age per instance and verdict per module, read at scrape time."""

    def __init__(self, prefix: str, board: HealthBoard) -> None:
        self.prefix, self.board = prefix, board

    def collect(self) -> Iterator[GaugeMetricFamily]:
        age = GaugeMetricFamily(
            f"{self.prefix}_heartbeat_age_seconds",
            "Seconds since the instance's last heartbeat",
            labels=["service", "instance"],
        )
        for view in self.board.registry.views():
            age.add_metric([view.service, view.instance], view.last_seen_seconds)
        yield age
        verdict = GaugeMetricFamily(
            f"{self.prefix}_verdict",
            "Verdict per module: 0 healthy, 1 degraded, 2 unhealthy, 3 unknown",
            labels=["module"],
        )
        for module, value in sorted(self.board.modules.items()):
            verdict.add_metric([module], int(value))
        yield verdict
