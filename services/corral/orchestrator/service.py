"""The orchestrator service: module lifecycle and recovery, the mediated call path, breakers,
statistics and a view of what runs.

The system file named by `CORRAL_CONFIG` (`corral up` sets it) gives the modules to run and the
call policies (timeout, breaker, bulkhead per module); modules without an entry get the defaults.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Iterator
from typing import Annotated, Any

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from corral.config import SystemConfig, load_config, validate_module
from corral.discovery import discover, module_statuses, module_types
from corral.errors import NotFoundError, UnavailableError, ValidationError
from corral.orchestrator.breaker import BreakerSnapshot, BreakerState
from corral.orchestrator.breakers import BreakerBoard
from corral.orchestrator.catalog import ModuleCatalog
from corral.orchestrator.config_rollout import ConfigGet, ConfigRollback, ConfigRollout, ConfigSet
from corral.orchestrator.fastpath import FastPath
from corral.orchestrator.forwarding import LeaderRouter
from corral.orchestrator.leader import DEFAULT_TTL, Leadership
from corral.orchestrator.lifecycle import (
    Lifecycle,
    ModuleResult,
    StartReport,
    StopReport,
    SystemStartError,
)
from corral.orchestrator.messages import (
    Deregister,
    HistoryRequest,
    ModuleRef,
    Registration,
    StartSystem,
    StopModule,
    StopSystem,
)
from corral.orchestrator.mux import RequestMux
from corral.orchestrator.readiness import ReadinessGate, RegisterReply
from corral.orchestrator.records import ModuleRecord, RecoveryEntry
from corral.orchestrator.router import CallRouter
from corral.orchestrator.states import UP_STATES
from corral.orchestrator.subscriptions import Subscriptions
from corral.policy import CallPolicy
from corral.protocol import ModuleRegistration
from corral.runtime import Endpoint, Reply, RequestContext, Service, ServiceSettings
from corral.runtime.direct import direct_reply_enabled
from corral.runtime.endpoints import typed_handler

__all__ = ["OrchestratorService"]

log = logging.getLogger("corral.orchestrator")

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
        config: SystemConfig | None = None,
        lease_ttl: float | None = None,
        initial_config: dict[str, dict[str, Any]] | None = None,
        direct_reply: bool | None = None,
    ) -> None:
        """`config`: the system (default: the file named by CORRAL_CONFIG, else no modules);
        `policies` per module (default: from `config`) and `default_policy` for the rest;
        `call_timeout` is a shortcut for a default policy with that timeout. `lease_ttl` (default
        `CORRAL_LEASE_TTL` or 6 s) is how long the leader's lease lasts unrenewed. `initial_config`
        (default: `config`'s `[modules.X.config]`) seeds the live config of modules that have none.
        `direct_reply=False` (or CORRAL_DIRECT_REPLY=0) routes every answer through the
        orchestrator (corral.runtime.direct), for accounts whose modules may not publish to
        callers' inboxes (`allow_responses`)."""
        super().__init__(
            "orchestrator", settings=settings, description="corral orchestrator: module calls and lifecycle"
        )
        if config is None:
            path = os.environ.get("CORRAL_CONFIG")
            config = load_config(path) if path else SystemConfig()
        self.config = config
        if policies is None:
            policies = {name: module.policy() for name, module in config.modules.items()}
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
        self.lifecycle: Lifecycle | None = None
        self.leader_router: LeaderRouter | None = None
        self.lease_ttl = lease_ttl or float(os.environ.get("CORRAL_LEASE_TTL") or DEFAULT_TTL)
        self.leadership: Leadership | None = None
        if initial_config is None:
            initial_config = {name: m.config for name, m in config.modules.items() if m.config}
        self.initial_config = initial_config
        self.config_rollout: ConfigRollout | None = None

    async def setup(self) -> None:
        # Unique per process, like the breaker replica id, so `leader` names one replica.
        replica = f"{self.instance}-{uuid.uuid4().hex[:6]}"
        self.leadership = Leadership(self.js, self.subjects, replica, ttl=self.lease_ttl)
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
        lifecycle = self.lifecycle = Lifecycle(
            self.nc,
            self.js,
            self.subjects,
            self.config,
            leader_id=replica,
            nats_url=",".join(self.settings.bus.servers),
        )
        await lifecycle.open()
        self.gate = ReadinessGate(
            self.nc,
            self.subjects,
            is_up=self._is_up,
            on_told=lifecycle.tell_ready,
            on_ack=lifecycle.ready_acknowledged,
        )
        lifecycle.on_change.append(self.gate.wake)
        self.gate.start()
        leadership = self.leadership
        self.leader_router = LeaderRouter(
            self.nc,
            self.subjects,
            lambda: lifecycle.active and leadership.is_leader,
            wait=self.lease_ttl * 2 + 1,
        )
        # Lifecycle verbs act, so the leader serves them; any replica forwards them there.
        budget = 60.0 + sum(m.startup_timeout + m.stop_timeout for m in self.config.modules.values())
        self._leader_endpoint("register", Registration, self._register_module, timeout=10.0)
        self._leader_endpoint("deregister", Deregister, self._deregister, timeout=budget)
        self._leader_endpoint("start_system", StartSystem, self._start_system, timeout=budget)
        self._leader_endpoint("stop_system", StopSystem, self._stop_system, timeout=budget)
        self._leader_endpoint("start", ModuleRef, self._start, timeout=budget)
        self._leader_endpoint("stop", StopModule, self._stop, timeout=budget)
        self._leader_endpoint("restart", ModuleRef, self._restart, timeout=budget)
        # Reads: every replica answers from KV corral_modules.
        self.endpoint("registry")(self._registry)
        self.endpoint("module", ModuleRef)(self._module)
        self.endpoint("recovery.history", HistoryRequest)(self._history)
        rollout = self.config_rollout = ConfigRollout(self.nc, self.js, self.subjects)
        await rollout.start()
        await rollout.seed(self.initial_config)
        self.endpoint("config.get", ConfigGet)(lambda req, _: rollout.get(req))
        self.endpoint("config.set", ConfigSet)(lambda req, _: rollout.set(req))
        self.endpoint("config.history", ConfigGet)(lambda req, _: rollout.history(req))
        self.endpoint("config.rollback", ConfigRollback)(lambda req, _: rollout.rollback(req))
        self.metrics.registry.register(_RouteCollector(self.metrics.prefix, self.router))
        leadership.on_change(self._on_leadership)
        await leadership.start()

    def _leader_endpoint(self, verb: str, payload_type: Any, func: Any, *, timeout: float) -> None:
        assert self.leader_router is not None
        handler = typed_handler(verb, payload_type, func, self.settings.max_request_bytes)
        self.add_endpoint(
            verb.replace(".", "-"),
            self.subjects.service(self.name, verb),
            self.leader_router.wrap(verb, handler, timeout=timeout),
            response_type=verb,
        )

    async def _on_leadership(self, leading: bool) -> None:
        assert self.lifecycle is not None
        assert self.leader_router is not None
        if leading:
            adopted = await self.lifecycle.activate()
            await self.leader_router.lead()
            log.info("leading: supervising %d modules (adopted %s)", len(self.lifecycle.supervisors), adopted)
        else:
            await self.leader_router.follow()
            await self.lifecycle.deactivate()
            log.info("not leading: modules are left running for the new leader")

    def _is_up(self, module: str) -> bool | None:
        assert self.lifecycle is not None
        state = self.lifecycle.state_of(module)
        return None if state is None else state in UP_STATES

    @property
    def in_flight(self) -> int:
        return super().in_flight + (self.fast.pending if self.fast is not None else 0)

    async def teardown(self) -> None:
        if self.fast is not None:  # calls on the fast path are not tasks: drain them here
            await self.fast.drain(self.settings.drain_timeout)
        # Leadership first: losing the lease detaches the lifecycle, and modules keep running
        # (a standby, or this orchestrator started again, adopts them).
        if self.leadership is not None:
            await self.leadership.stop()
        if self.lifecycle is not None:
            await self.lifecycle.close()
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
        records = await self._records()
        states = {name: r.state.value for name, r in sorted(records.items())}
        assert self.lifecycle is not None
        return {
            **self.identity(),
            "leader": self.lifecycle.active,
            "system": _system_state(states),
            "module_states": states,
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

    async def _register_module(self, req: Registration, ctx: RequestContext) -> RegisterReply:
        assert self.gate is not None
        assert self.lifecycle is not None
        if req.descriptor is None and not req.instance:
            raise ValidationError("register needs `instance` (an SDK instance) or `descriptor` - at `$`")
        if req.descriptor is not None:
            try:
                validate_module(req.module, req.descriptor)
                await self.lifecycle.register(req.module, req.descriptor)
            except ValueError as exc:
                raise ValidationError(f"{exc} - at `$.descriptor`") from exc
        if not req.instance:
            return RegisterReply(
                req.module, "", list(req.descriptor.depends_on if req.descriptor else []), []
            )
        sdk = ModuleRegistration(req.module, req.instance, req.version, list(req.depends_on), list(req.types))
        return await self.gate.register(sdk)

    async def _deregister(self, req: Deregister, ctx: RequestContext) -> dict[str, str]:
        assert self.lifecycle is not None
        await self.lifecycle.deregister(req.module)
        return {"module": req.module, "deregistered": "true"}

    async def _start_system(self, _: StartSystem, ctx: RequestContext) -> StartReport:
        assert self.lifecycle is not None
        try:
            return await self.lifecycle.start_system()
        except SystemStartError as exc:
            raise UnavailableError(f"startup failed: {exc}") from exc
        except ValueError as exc:
            raise ValidationError(str(exc)) from exc

    async def _stop_system(self, req: StopSystem, ctx: RequestContext) -> StopReport:
        assert self.lifecycle is not None
        return await self.lifecycle.stop_system(req.timeout)

    async def _start(self, req: ModuleRef, ctx: RequestContext) -> ModuleResult:
        assert self.lifecycle is not None
        return await self.lifecycle.start_module(req.module)

    async def _stop(self, req: StopModule, ctx: RequestContext) -> list[ModuleResult]:
        assert self.lifecycle is not None
        return await self.lifecycle.stop_module(req.module, cascade=req.cascade, timeout=req.timeout)

    async def _restart(self, req: ModuleRef, ctx: RequestContext) -> ModuleResult:
        assert self.lifecycle is not None
        return await self.lifecycle.restart_module(req.module)

    async def _records(self) -> dict[str, ModuleRecord]:
        """The leader's records, or (on a standby) what the leader last wrote to KV."""
        assert self.lifecycle is not None
        if self.lifecycle.active:
            return dict(self.lifecycle.registry.records)
        return await self.lifecycle.registry.load()

    async def _registry(self, _: None, ctx: RequestContext) -> list[ModuleRecord]:
        records = await self._records()
        return [records[name] for name in sorted(records)]

    async def _module(self, req: ModuleRef, ctx: RequestContext) -> dict[str, Any]:
        record = await self._one(req.module)
        assert self.lifecycle is not None
        history = await self.lifecycle.registry.load_history(req.module)
        return {"record": record, "history": history[-20:]}

    async def _history(self, req: HistoryRequest, ctx: RequestContext) -> list[RecoveryEntry]:
        await self._one(req.module)
        assert self.lifecycle is not None
        history = await self.lifecycle.registry.load_history(req.module)
        return history[-req.limit :]

    async def _one(self, module: str) -> ModuleRecord:
        records = await self._records()
        if module not in records:
            known = ", ".join(sorted(records)) or "none"
            raise NotFoundError(f"no module {module!r} in the registry (modules: {known})")
        return records[module]

    async def _subscribe(self, req: Subscribe, ctx: RequestContext) -> dict[str, Any]:
        expires = self.subscriptions.add(req.type, req.ttl)
        return {"type": req.type, "subject": self.subjects.message_event(req.type), "expires_in": expires}


def _system_state(states: dict[str, str]) -> str:
    """stopped (nothing up), running (all up), degraded (some not up), or starting/stopping."""
    values = set(states.values())
    if not values or values <= {"stopped", "registered"}:
        return "stopped"
    if "starting" in values:
        return "starting"
    if "stopping" in values:
        return "stopping"
    if values <= {"running"}:
        return "running"
    return "degraded"


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
