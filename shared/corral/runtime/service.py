"""The Service base every corral service and module runs on.

A Service connects to NATS, registers with the NATS Services API (`nats micro ls` lists it,
with `metrics_url` in its metadata), serves its endpoints concurrently, publishes
heartbeats, exports `/metrics`, `/healthz` and `/readyz`, and drains on SIGTERM: it stops
taking requests, finishes those in flight, then exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import nats.micro
from aiohttp import web
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.micro.service import EndpointStats as MicroEndpointStats
from nats.micro.service import ServiceConfig

from corral.bus import connect, round_trip
from corral.component import Component, cancel_and_wait
from corral.protocol import (
    DIRECT_REPLY_HEADER,
    TRACEPARENT_HEADER,
    ErrorCode,
    Heartbeat,
    codec_for,
)
from corral.runtime import inline
from corral.runtime.direct import DirectReplies
from corral.runtime.endpoints import Endpoint, Reply, error_reply, typed_handler
from corral.runtime.heartbeat import HeartbeatEncoder, ProcessProbe, next_beat
from corral.runtime.http import HttpEndpoint, ServiceMetrics
from corral.runtime.otel import RequestTracer, request_tracer
from corral.runtime.settings import ServiceSettings
from corral.runtime.stall import StallWatch
from corral.subjects import Subjects
from corral.tracing import traceparent_var

__all__ = ["Service"]

log = logging.getLogger("corral.runtime")

H = TypeVar("H", bound=Callable[..., Awaitable[Any]])


class Service(Component):
    """Base of every corral process. Subclasses add endpoints in `setup()`.

    Use as `async with Service(...)`, or `await service.run()` to serve until SIGTERM.
    """

    role = "service"
    has_control_verbs = False  # True for SDK modules: they answer `<prefix>.modctl.<name>.<verb>`

    def __init__(
        self,
        name: str,
        *,
        version: str = "0.1.0",
        settings: ServiceSettings | None = None,
        description: str = "",
    ) -> None:
        self.name = name
        self.version = version
        self.description = description or f"corral {name}"
        self.settings = settings or ServiceSettings.from_env()
        self.subjects = Subjects(self.settings.prefix)
        self.instance = self.settings.instance
        self.metrics = ServiceMetrics(name)
        self.endpoints: list[Endpoint] = []
        self.ready = True  # subclasses that wait for something set it False until then
        self.started_at = 0.0
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._micro: nats.micro.service.Service | None = None
        self._direct: DirectReplies | None = None
        self._http: HttpEndpoint | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._stall_watch: StallWatch | None = None
        self._draining = False
        self._stopped = asyncio.Event()
        self._stop_lock = asyncio.Lock()
        self._handled = 0
        self._own_endpoints: int | None = None  # endpoints added before the first start()
        self._tracer: RequestTracer | None = None  # OpenTelemetry spans, when configured (runtime.otel)

    # --- what subclasses use -------------------------------------------------------------------
    @property
    def nc(self) -> Client:
        if self._nc is None:
            raise RuntimeError(f"{self.name} is not started: call `await service.start()` first")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            self._js = self.nc.jetstream()
        return self._js

    @property
    def metrics_url(self) -> str:
        return self._http.url if self._http else ""

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def setup(self) -> None:
        """Declare JetStream resources and add endpoints; runs after connecting, before serving."""

    async def teardown(self) -> None:
        """Release what setup() acquired; runs after in-flight requests have finished."""

    def add_http_routes(self, app: web.Application) -> None:
        """Add routes to this process's HTTP app (next to /metrics); runs before it serves."""

    def add_endpoint(
        self,
        name: str,
        subject: str,
        handler: Callable[[Msg], Awaitable[Reply]],
        *,
        response_type: str | None = None,
        queue_group: str | None = None,
        metadata: dict[str, str] | None = None,
        direct_reply: bool = False,
        accept: Callable[[Msg], bool] | None = None,
    ) -> Endpoint:
        """Add a raw endpoint: `handler(msg)` returns the encoded Reply.

        `direct_reply=True`: a request the orchestrator forwards with `Corral-Direct-Reply` is
        answered there, with an outcome report to the orchestrator (corral.runtime.direct).
        `accept`: see Endpoint.accept."""
        endpoint = Endpoint(
            name, subject, handler, response_type or name, queue_group, metadata, direct_reply, accept
        )
        self.endpoints.append(endpoint)
        return endpoint

    def endpoint(
        self, verb: str, payload_type: Any = None, *, subject: str | None = None
    ) -> Callable[[H], H]:
        """Decorator for a typed endpoint at `<prefix>.<service>.<verb>`.

        The handler is `async def f(payload: payload_type, ctx: RequestContext) -> result`;
        its result becomes the payload of a `<verb>:success` Response.
        """

        def register(func: H) -> H:
            handler = typed_handler(verb, payload_type, func, self.settings.max_request_bytes)
            name = verb.replace(".", "-")
            self.add_endpoint(
                name, subject or self.subjects.service(self.name, verb), handler, response_type=verb
            )
            return func

        return register

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._nc is not None:
            return
        first_start = self._own_endpoints is None
        if first_start:
            self._own_endpoints = len(self.endpoints)
            self._tracer = request_tracer(self.name, self.instance, self.version)
        self.started_at = time.time()
        bus = msgspec.structs.replace(self.settings.bus, name=f"{self.name}:{self.instance}")
        self._nc = await connect(bus)
        self._direct = DirectReplies(self._nc)
        await self.setup()
        self._http = HttpEndpoint(
            self.metrics,
            host=self.settings.metrics_host,
            port=self.settings.metrics_port,
            is_alive=lambda: not self._stopped.is_set(),
            readiness=self.readiness,
        )
        self.add_http_routes(self._http.app)
        if self.settings.metrics_port >= 0:
            await self._http.start()
        if first_start:
            self.metrics.add_gauge_callback(
                "uptime_seconds", "Seconds since this instance started", self._uptime
            )
            self.metrics.in_flight.set_function(lambda: self.in_flight)
        await self._register()
        # The endpoint subscriptions are only sent; a round trip makes sure the server has them
        # before start() returns, so a caller told "started" does not get "no responders"
        # (one nats-py flush() is not enough: see corral.bus.round_trip).
        await round_trip(self.nc)
        if self.settings.stall_warning > 0:
            self._stall_watch = StallWatch(
                f"{self.role} {self.name}", self.settings.stall_warning, on_stall=self._count_stall
            )
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop(), name=f"{self.name}-heartbeat")
        log.info(
            "%s %s started",
            self.role,
            self.name,
            extra={"subjects": [e.subject for e in self.endpoints], "metrics_url": self.metrics_url},
        )

    def identity(self) -> dict[str, Any]:
        """Who answers: the fields every service's `status` reply starts with."""
        return {
            "service": self.name,
            "instance": self.instance,
            "version": self.version,
            "uptime_seconds": round(self._uptime(), 3),
            "in_flight": self.in_flight,
        }

    def readiness(self) -> tuple[bool, str]:
        if self._draining:
            return False, "draining"
        if self._nc is None or not self._nc.is_connected:
            return False, "not connected to NATS"
        if not self.ready:
            return False, "waiting to be told it may serve"
        return True, "ok"

    def _count_stall(self, seconds: float) -> None:
        self.metrics.loop_stalls.inc()
        self.metrics.loop_blocked.inc(seconds)

    def _uptime(self) -> float:
        return time.time() - self.started_at if self.started_at else 0.0

    async def _register(self) -> None:
        config = ServiceConfig(
            name=self.name,
            version=self.version,
            description=self.description,
            metadata={
                "corral_prefix": self.settings.prefix,
                "corral_role": self.role,
                "instance": self.instance,
                "metrics_url": self.metrics_url,
            },
            queue_group=self.subjects.queue_group(self.name),
            stats_handler=self._micro_stats,
        )
        self._micro = micro = await nats.micro.add_service(self.nc, config)
        for endpoint in self.endpoints:
            deliver = self._dispatcher(endpoint)

            async def through_micro(request: Any, deliver: Callable[[Msg], None] = deliver) -> None:
                deliver(request._msg)  # nats.micro wraps the Msg; we answer on it ourselves

            await micro.add_endpoint(
                name=endpoint.name,
                subject=endpoint.subject,
                handler=through_micro,
                queue_group=endpoint.queue_group,
                metadata=endpoint.metadata,
            )
            # nats.micro registered the endpoint (INFO, STATS, PING list it); its requests skip
            # nats.micro's queue and task and come straight to the dispatcher (corral.runtime.inline).
            registered = getattr(micro, "_endpoints", None)
            sub = getattr(registered[-1], "_subscription", None) if registered else None
            if sub is not None:
                inline.deliver_inline(sub, deliver)

    def _dispatcher(self, endpoint: Endpoint) -> Callable[[Msg], None]:
        # Called in nats-py's read loop for each request: a task per request lets an endpoint
        # serve many requests at once. `self._tasks` is what drain waits for.
        def dispatch(msg: Msg) -> None:
            if self._draining:
                self._respond_now(msg, self._unavailable(endpoint, msg))
                return
            if endpoint.accept is not None and endpoint.accept(msg):
                return
            self._track(asyncio.create_task(self._serve(endpoint, msg)))

        return dispatch

    @property
    def observes_each_request(self) -> bool:
        """A span (OpenTelemetry) or a DEBUG log line per request: an `accept` hook that cannot
        give them should decline, so the request is served as usual."""
        return self._tracer is not None or log.isEnabledFor(logging.DEBUG)

    def account(self, endpoint: Endpoint, reply: Reply, seconds: float) -> None:
        """Count a request that `endpoint.accept` took, once it is settled."""
        endpoint.record(reply, int(seconds * 1e9))
        self._handled += 1
        self.metrics.observe_request(endpoint.name, reply.code, seconds)

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _unavailable(self, endpoint: Endpoint, msg: Msg) -> Reply:
        return error_reply(
            codec_for(msg.headers),
            endpoint.response_type,
            ErrorCode.UNAVAILABLE,
            f"{self.name} instance {self.instance} is shutting down; retry to reach another instance",
        )

    async def _serve(self, endpoint: Endpoint, msg: Msg) -> None:
        headers = msg.headers
        # The request's traceparent is this task's: its log lines carry the trace id, and
        # calls made on its behalf continue the trace (corral.tracing).
        if self._tracer is None:
            traceparent_var.set(headers.get(TRACEPARENT_HEADER) if headers else None)
            reply, elapsed_ns = await self._serve_request(endpoint, msg)
        else:
            with self._tracer.span(endpoint.name, msg.subject, headers) as span:
                traceparent_var.set(span.traceparent)
                reply, elapsed_ns = await self._serve_request(endpoint, msg)
                span.outcome(reply.code)
        self._handled += 1
        self.metrics.observe_request(endpoint.name, reply.code, elapsed_ns / 1e9)
        if log.isEnabledFor(logging.DEBUG):  # CORRAL_LOG_LEVEL=DEBUG: a line per request
            log.debug(
                "served %s: %s in %.3f ms",
                msg.subject,
                reply.code,
                elapsed_ns / 1e6,
                extra={"endpoint": endpoint.name, "outcome": reply.code},
            )
        if not reply.answered:
            self._respond_now(msg, reply)

    async def _serve_request(self, endpoint: Endpoint, msg: Msg) -> tuple[Reply, int]:
        """The endpoint's handler; a call forwarded for direct reply answers its caller itself."""
        headers = msg.headers
        if (
            endpoint.direct_reply
            and headers
            and msg.reply
            and self._direct is not None
            and (direct := headers.get(DIRECT_REPLY_HEADER))
        ):
            reply, elapsed_ns = await self._direct.serve(
                msg, direct, endpoint.response_type, lambda: endpoint.serve(msg)
            )
            return reply._replace(answered=True), elapsed_ns
        return await endpoint.serve(msg)

    def _respond_now(self, msg: Msg, reply: Reply) -> None:
        if not msg.reply:
            return  # a publish, not a request: nobody to answer
        try:
            inline.publish_nowait(self.nc, msg.reply, reply.data, headers=reply.headers)
        except Exception as exc:  # the connection may be closing; the caller will time out
            log.warning("could not send reply on %s: %r", msg.subject, exc)

    def _micro_stats(self, stats: MicroEndpointStats) -> dict[str, Any]:
        # nats.micro counts a request as done when our dispatcher returns, which is before the
        # work is done; report our own figures so `nats micro stats` is accurate.
        for endpoint in self.endpoints:
            if endpoint.name == stats.name:
                own = endpoint.stats
                stats.num_requests = own.requests
                stats.num_errors = own.errors
                stats.last_error = own.last_error
                stats.processing_time = own.processing_ns
                stats.average_processing_time = own.processing_ns // own.requests if own.requests else 0
                return {"in_flight": own.in_flight}
        return {}

    async def _heartbeat_loop(self) -> None:
        # What this costs every process every second is the cost of monitoring (see
        # corral.runtime.heartbeat and bench/health_overhead.py): one wake-up, one publish.
        probe = ProcessProbe()
        subject = self.subjects.heartbeat(self.name, self.instance)
        interval = self.settings.heartbeat_interval
        encoder = HeartbeatEncoder(
            Heartbeat(
                service=self.name,
                instance=self.instance,
                role=self.role,
                version=self.version,
                pid=probe.process.pid,
                host=probe.host,
                started=self.started_at,
                timestamp=0.0,
                cpu_percent=0.0,
                rss_bytes=0,
                threads=0,
                open_fds=0,
                in_flight=0,
                handled=0,
                ready=False,
                metrics_url=self.metrics_url,
                service_id=self._micro.id if self._micro is not None else "",
                interval=interval,
                modctl=self.has_control_verbs,
            )
        )
        while True:
            try:
                cpu, rss, threads, fds = probe.read()
                data = encoder.encode(
                    time.time(), cpu, rss, threads, fds, self.in_flight, self._handled, self.readiness()[0]
                )
                if self.nc.is_connected:
                    await self.nc.publish(subject, data)
                    self.metrics.heartbeats.inc()
            except Exception as exc:  # a heartbeat must never kill the service
                log.warning("heartbeat failed: %r", exc)
            now = time.time()
            delay = next_beat(now, interval) - now
            if self._stall_watch is not None:
                self._stall_watch.beat(time.monotonic() + delay)
            await asyncio.sleep(delay)

    async def stop(self) -> None:
        """Drain: stop taking requests, finish those in flight (up to drain_timeout), disconnect.

        Safe to call more than once and from several tasks.
        """
        async with self._stop_lock:
            if self._stopped.is_set() or self._nc is None:
                self._stopped.set()
                return
            self._draining = True
            if self._micro is not None:
                await self._micro.stop()
            pending = list(self._tasks)
            if pending:
                log.info("draining %d in-flight requests", len(pending))
                _, late = await asyncio.wait(pending, timeout=self.settings.drain_timeout)
                for task in late:
                    task.cancel()
            if self._heartbeat_task is not None:
                await cancel_and_wait(self._heartbeat_task)
            if self._stall_watch is not None:
                self._stall_watch.stop()
                self._stall_watch = None
            await self.teardown()
            if self._direct is not None:
                await self._direct.drain()
            if self._http is not None:
                await self._http.stop()
            with contextlib.suppress(Exception):
                await self._nc.drain()
            log.info(
                "%s %s stopped",
                self.role,
                self.name,
                extra={"handled": self._handled, "errors": sum(e.stats.errors for e in self.endpoints)},
            )
            self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def restart(self) -> None:
        """Drain and stop, then start again on a new connection (setup() runs again, so it must
        not register anything twice: the endpoints it added are dropped first)."""
        await self.stop()
        if self._own_endpoints is not None:
            del self.endpoints[self._own_endpoints :]
        self._nc = self._js = None
        self._micro = None
        self._direct = None
        self._http = None
        self._heartbeat_task = None
        self._draining = False
        self._stopped = asyncio.Event()
        await self.start()

    async def run(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then drain and stop."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_requested.set)
        signalled = asyncio.create_task(stop_requested.wait())
        starting = asyncio.create_task(self.start())
        # SIGTERM while still connecting (NATS not up yet) must end the process too.
        await asyncio.wait([starting, signalled], return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
        elif starting.exception() is None:
            stopped = asyncio.create_task(self._stopped.wait())
            await asyncio.wait([signalled, stopped], return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
        signalled.cancel()
        await self.stop()
        if starting.done() and not starting.cancelled() and (exc := starting.exception()) is not None:
            raise exc
