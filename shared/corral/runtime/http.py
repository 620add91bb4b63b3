"""Per-process HTTP endpoint: Prometheus `/metrics`, liveness `/healthz`, readiness `/readyz`."""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Callable, Iterator

import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["HttpEndpoint", "ServiceMetrics", "metric_prefix"]

# Request latencies of a NATS service: sub-millisecond to tens of seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def metric_prefix(service: str) -> str:
    """`corral_<service>`, with characters Prometheus does not allow replaced by `_`."""
    return "corral_" + re.sub(r"[^a-zA-Z0-9_]", "_", service)


class _RequestMetrics(Collector):
    """`<prefix>_requests_total{endpoint,outcome}` and `<prefix>_request_duration_seconds{endpoint}`,
    counted in plain ints and turned into metric families at scrape time.

    prometheus_client's Counter and Histogram take a lock per increment (two for a histogram
    observation): about 2.5 us per request, a tenth of the orchestrator's CPU per call. The
    event loop is the only writer and the /metrics handler runs on it too, so no lock is needed.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.counts: dict[tuple[str, str], int] = {}
        self.buckets: dict[str, list[int]] = {}  # per endpoint: one count per bound, then +Inf
        self.sums: dict[str, float] = {}

    def observe(self, endpoint: str, outcome: str, seconds: float) -> None:
        key = (endpoint, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1
        buckets = self.buckets.get(endpoint)
        if buckets is None:
            buckets = self.buckets[endpoint] = [0] * (len(LATENCY_BUCKETS) + 1)
            self.sums[endpoint] = 0.0
        buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1  # `le`: a bound includes itself
        self.sums[endpoint] += seconds

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily(
            f"{self.prefix}_requests",
            "Requests handled, by endpoint and outcome (ok or the error code)",
            labels=["endpoint", "outcome"],
        )
        for (endpoint, outcome), count in self.counts.items():
            requests.add_metric([endpoint, outcome], count)
        latency = HistogramMetricFamily(
            f"{self.prefix}_request_duration_seconds",
            "Time from receiving a request to sending its reply",
            labels=["endpoint"],
        )
        for endpoint, buckets in self.buckets.items():
            cumulative = list(itertools.accumulate(buckets))
            bounds = [*map(floatToGoString, LATENCY_BUCKETS), "+Inf"]
            latency.add_metric([endpoint], list(zip(bounds, cumulative, strict=True)), self.sums[endpoint])
        yield requests
        yield latency

    def describe(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        return iter(())


class ServiceMetrics:
    """The metrics every corral process exports, in a registry of its own (one per service)."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        prefix = metric_prefix(service)
        self._requests = _RequestMetrics(prefix)
        self.registry.register(self._requests)
        self.in_flight = Gauge(
            f"{prefix}_in_flight_requests", "Requests being handled now", registry=self.registry
        )
        self.heartbeats = Counter(
            f"{prefix}_heartbeats_total", "Heartbeats published", registry=self.registry
        )
        self.loop_stalls = Counter(
            f"{prefix}_event_loop_stalls_total",
            "Times the event loop was blocked and a heartbeat late past CORRAL_STALL_WARNING",
            registry=self.registry,
        )
        self.loop_blocked = Counter(
            f"{prefix}_event_loop_blocked_seconds_total",
            "Seconds those heartbeats were late",
            registry=self.registry,
        )
        # Standard process_* figures (cpu seconds, resident memory, open fds) for this process.
        prometheus_client.ProcessCollector(registry=self.registry)
        self.prefix = prefix

    def observe_request(self, endpoint: str, outcome: str, seconds: float) -> None:
        """Count one request (on every request of every service: plain counters, no locks)."""
        self._requests.observe(endpoint, outcome, seconds)

    def add_gauge_callback(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """Export a value computed at scrape time (queue depths, breaker states, ...)."""
        self.registry.register(_CallbackGauge(f"{self.prefix}_{name}", documentation, read))

    def render(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)


class _CallbackGauge(Collector):
    def __init__(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self.name, self.documentation, self.read = name, documentation, read

    def collect(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(self.name, self.documentation, value=self.read())]

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(self.name, self.documentation)]


class HttpEndpoint:
    """aiohttp server on `host:port` (port 0 picks a free one; `url` tells which)."""

    def __init__(
        self,
        metrics: ServiceMetrics,
        *,
        host: str,
        port: int,
        is_alive: Callable[[], bool],
        readiness: Callable[[], tuple[bool, str]],
    ) -> None:
        self.metrics = metrics
        self.host, self.port = host, port
        self._is_alive = is_alive
        self._readiness = readiness
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.app = web.Application()
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        self.url = f"http://{shown}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def _healthz(self, _: web.Request) -> web.Response:
        alive = self._is_alive()
        return web.json_response({"alive": alive}, status=200 if alive else 503)

    async def _readyz(self, _: web.Request) -> web.Response:
        ready, reason = self._readiness()
        return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)
