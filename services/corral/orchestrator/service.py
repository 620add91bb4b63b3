"""The orchestrator service: the mediated call path, breakers, statistics and a view of what runs.

Call policies (timeout, breaker, bulkhead per module) come from the system file named by
`CORRAL_CONFIG` (`corral up` sets it); modules without an entry get the defaults.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from typing import Annotated, Any

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from corral.config import load_config
from corral.discovery import discover, module_statuses, module_types
from corral.errors import NotFoundError
from corral.orchestrator.breaker import BreakerSnapshot, BreakerState
from corral.orchestrator.breakers import BreakerBoard
from corral.orchestrator.catalog import ModuleCatalog
from corral.orchestrator.config_rollout import ConfigGet, ConfigRollback, ConfigRollout, ConfigSet
from corral.orchestrator.fastpath import FastPath
from corral.orchestrator.leader import DEFAULT_TTL, Leadership
from corral.orchestrator.mux import RequestMux
from corral.orchestrator.readiness import ReadinessGate, RegisterReply
from corral.orchestrator.router import CallRouter
from corral.orchestrator.subscriptions import Subscriptions
from corral.policy import CallPolicy
from corral.protocol import ModuleRegistration
from corral.runtime import Endpoint, Reply, RequestContext, Service, ServiceSettings
from corral.runtime.direct import direct_reply_enabled

__all__ = ["OrchestratorService"]

ModuleName = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_\-]+$")]
TypeName = ModuleName


class ModuleSummary(msgspec.Struct):
    name: str
    instances: int
    types: list[str]
    version: str


class BreakerReset(msgspec.Struct, forbid_unknown_fields=True):
    module: ModuleName


class Subscribe(msgspec.Struct, forbid_unknown_fields=True):
    type: TypeName
    ttl: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0


class OrchestratorService(Service):
    def __init__(
        self,
        settings: ServiceSettings | None = None,
        *,
        policies: dict[str, CallPolicy] | None = None,
        default_policy: CallPolicy | None = None,
        call_timeout: float | None = None,
        lease_ttl: float | None = None,
        initial_config: dict[str, dict[str, Any]] | None = None,
        direct_reply: bool | None = None,
    ) -> None:
        """`policies` per module and `default_policy` for the rest; `call_timeout` is a shortcut
        for a default policy with that timeout. `lease_ttl` (default `CORRAL_LEASE_TTL` or 6 s)
        is how long the leader's lease lasts unrenewed. `initial_config` (default: corral.toml's
        `[modules.X.config]`) seeds the live config of modules that have none.
        `direct_reply=False` (or CORRAL_DIRECT_REPLY=0) routes every answer through the
        orchestrator (corral.runtime.direct), for accounts whose modules may not publish to
        callers' inboxes (`allow_responses`)."""
        super().__init__(
            "orchestrator", settings=settings, description="corral orchestrator: module calls and lifecycle"
        )
        if policies is None:
            policies = _policies_from_config(os.environ.get("CORRAL_CONFIG"))
        self.policies = policies
        if default_policy is None:
            default_policy = CallPolicy() if call_timeout is None else CallPolicy(timeout=call_timeout)
        self.default_policy = default_policy
        self.direct_reply = direct_reply_enabled() if direct_reply is None else direct_reply
        self.router: CallRouter | None = None
        self.board: BreakerBoard | None = None
        self.subscriptions = Subscriptions()
        self.gate: ReadinessGate | None = None
        self.mux: RequestMux | None = None
        self.catalog: ModuleCatalog | None = None
        self.fast: FastPath | None = None
        self.lease_ttl = lease_ttl or float(os.environ.get("CORRAL_LEASE_TTL") or DEFAULT_TTL)
        self.leadership: Leadership | None = None
        if initial_config is None:
            initial_config = _module_configs_from_config(os.environ.get("CORRAL_CONFIG"))
        self.initial_config = initial_config
        self.config_rollout: ConfigRollout | None = None

    async def setup(self) -> None:
        # Unique per process, like the breaker replica id, so `leader` names one replica.
        self.leadership = Leadership(
            self.js, self.subjects, f"{self.instance}-{uuid.uuid4().hex[:6]}", ttl=self.lease_ttl
        )
        await self.leadership.start()
        self.board = BreakerBoard(
            self.js,
            self.subjects,
            # Unique even if two replicas were given the same CORRAL_INSTANCE: a replica ignores
            # the breaker entries it wrote itself.
            f"{self.instance}-{uuid.uuid4().hex[:6]}",
            lambda module: self.policies.get(module, self.default_policy).breaker,
        )
        await self.board.start()
        self.mux = RequestMux(self.nc)
        await self.mux.start()
        self.catalog = ModuleCatalog(self.nc, self.subjects.prefix, direct_reply=self.direct_reply)
        self.router = CallRouter(
            self.nc,
            self.subjects,
            policy_for=self.policies,
            default_policy=self.default_policy,
            board=self.board,
            catalog=self.catalog,
            max_request_bytes=self.settings.max_request_bytes,
            mux=self.mux,
        )
        self.subscriptions.router = self.router
        self.subscriptions.start()
        send: Endpoint | None = None

        def settled(reply: Reply, seconds: float) -> None:
            assert send is not None
            self.account(send, reply, seconds)

        self.fast = FastPath(self.router, settled, lambda: self.observes_each_request)
        send = self.add_endpoint(
            "send", self.subjects.send_all, self.router.handle, response_type="send", accept=self.fast.accept
        )
        self.endpoint("status")(self._status)
        self.endpoint("stats")(self._stats)
        self.endpoint("modules")(self._modules)
        self.endpoint("breakers")(self._breakers)
        self.endpoint("breaker.reset", BreakerReset)(self._breaker_reset)
        self.endpoint("subscribe", Subscribe)(self._subscribe)
        self.gate = ReadinessGate(self.nc, self.subjects)
        self.gate.start()
        self.endpoint("register", ModuleRegistration)(self._register_module)
        rollout = self.config_rollout = ConfigRollout(self.nc, self.js, self.subjects)
        await rollout.start()
        await rollout.seed(self.initial_config)
        self.endpoint("config.get", ConfigGet)(lambda req, _: rollout.get(req))
        self.endpoint("config.set", ConfigSet)(lambda req, _: rollout.set(req))
        self.endpoint("config.history", ConfigGet)(lambda req, _: rollout.history(req))
        self.endpoint("config.rollback", ConfigRollback)(lambda req, _: rollout.rollback(req))
        self.metrics.registry.register(_RouteCollector(self.metrics.prefix, self.router))

    @property
    def in_flight(self) -> int:
        return super().in_flight + (self.fast.pending if self.fast is not None else 0)

    async def teardown(self) -> None:
        if self.fast is not None:  # calls on the fast path are not tasks: drain them here
            await self.fast.drain(self.settings.drain_timeout)
        if self.leadership is not None:
            await self.leadership.stop()
        if self.gate is not None:
            await self.gate.stop()
        await self.subscriptions.stop()
        if self.board is not None:
            await self.board.stop()
        if self.catalog is not None:
            await self.catalog.stop()
        if self.mux is not None:
            await self.mux.stop()

    async def _status(self, _: None, ctx: RequestContext) -> dict[str, Any]:
        return {
            **self.identity(),
            **(await self._stats(None, ctx)),
            "waiting_for_dependencies": self.gate.snapshot() if self.gate else {},
            "leadership": self.leadership.snapshot() if self.leadership else None,
        }

    async def _stats(self, _: None, ctx: RequestContext) -> dict[str, Any]:
        assert self.router is not None
        names = sorted(self.router.routes)
        uptimes = await asyncio.gather(*(self._module_uptime(name) for name in names))
        handlers = await self.router.catalog.refresh(max_age=self.router.catalog.ttl)
        modules = {}
        for name, uptime in zip(names, uptimes, strict=True):
            route = self.router.routes[name]
            modules[name] = {
                **route.stats.as_dict(),
                "in_flight": route.bulkhead.in_flight,
                "queued": route.bulkhead.queued,
                "breaker": route.breaker.state.value,
                "uptime_seconds": uptime,
            }
        return {
            "routed": self.router.routed,
            "modules_running": len(handlers),
            "handlers": sum(len(types) for types in handlers.values()),
            "modules": modules,
            "subscribed_types": sorted(self.router.watched_types),
        }

    async def _module_uptime(self, module: str) -> float | None:
        """Seconds since the module's oldest running SDK instance started (None: not an SDK module)."""
        statuses = await module_statuses(self.nc, self.subjects.prefix, module, wait=0.2)
        return round(time.time() - min(s.started for s in statuses), 3) if statuses else None

    async def _modules(self, _: None, ctx: RequestContext) -> list[ModuleSummary]:
        instances = await discover(self.nc, self.subjects.prefix)
        types = module_types(instances, self.subjects.prefix)
        summaries: dict[str, ModuleSummary] = {}
        for info in instances:
            if info.role != "module":
                continue
            summary = summaries.setdefault(
                info.name, ModuleSummary(info.name, 0, sorted(types.get(info.name, ())), info.version)
            )
            summary.instances += 1
        return list(summaries.values())

    async def _breakers(self, _: None, ctx: RequestContext) -> list[BreakerSnapshot]:
        assert self.board is not None
        return self.board.snapshots()

    async def _breaker_reset(self, req: BreakerReset, ctx: RequestContext) -> BreakerSnapshot:
        assert self.board is not None
        if req.module not in self.board.breakers:
            known = ", ".join(sorted(self.board.breakers)) or "none yet"
            raise NotFoundError(f"no breaker for module {req.module!r}; breakers: {known}")
        breaker = self.board.get(req.module)
        breaker.reset()
        return breaker.snapshot()

    async def _register_module(self, req: ModuleRegistration, ctx: RequestContext) -> RegisterReply:
        assert self.gate is not None
        return await self.gate.register(req)

    async def _subscribe(self, req: Subscribe, ctx: RequestContext) -> dict[str, Any]:
        expires = self.subscriptions.add(req.type, req.ttl)
        return {"type": req.type, "subject": self.subjects.message_event(req.type), "expires_in": expires}


def _policies_from_config(path: str | None) -> dict[str, CallPolicy]:
    if not path:
        return {}
    config = load_config(path)
    return {name: module.policy() for name, module in config.modules.items()}


def _module_configs_from_config(path: str | None) -> dict[str, dict[str, Any]]:
    if not path:
        return {}
    return {name: module.config for name, module in load_config(path).modules.items() if module.config}


_BREAKER_VALUES = {BreakerState.CLOSED: 0.0, BreakerState.HALF_OPEN: 1.0, BreakerState.OPEN: 2.0}


class _RouteCollector(Collector):
    """Per-module figures read at scrape time, so the call path pays nothing for them."""

    def __init__(self, prefix: str, router: CallRouter) -> None:
        self.prefix = prefix
        self.router = router

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        calls = CounterMetricFamily(
            f"{self.prefix}_module_calls",
            "Calls routed to a module, by outcome",
            labels=["module", "outcome"],
        )
        breaker = GaugeMetricFamily(
            f"{self.prefix}_breaker_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open",
            labels=["module"],
        )
        in_flight = GaugeMetricFamily(
            f"{self.prefix}_module_in_flight_calls", "Calls in flight", labels=["module"]
        )
        queued = GaugeMetricFamily(
            f"{self.prefix}_module_queued_calls", "Calls waiting for a slot", labels=["module"]
        )
        latency = GaugeMetricFamily(
            f"{self.prefix}_module_latency_seconds",
            "Recent call latency percentiles",
            labels=["module", "quantile"],
        )
        for name, route in self.router.routes.items():
            calls.add_metric([name, "ok"], route.stats.successes)
            for code, count in route.stats.errors.items():
                calls.add_metric([name, code], count)
            breaker.add_metric([name], _BREAKER_VALUES[route.breaker.state])
            in_flight.add_metric([name], route.bulkhead.in_flight)
            queued.add_metric([name], route.bulkhead.queued)
            for key, value in route.stats.percentiles().items():
                latency.add_metric(
                    [name, {"p50_ms": "0.5", "p95_ms": "0.95", "p99_ms": "0.99"}[key]], value / 1000
                )
        yield from (calls, breaker, in_flight, queued, latency)

    def describe(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        return iter(())
