"""The system's lifecycle: every module's supervisor, dependency-ordered start and stop,
per-module verbs, failure detection from heartbeats and health verdicts.

Only the leader runs it (`activate` when it wins the lease, `deactivate` when it loses it);
activating adopts what a previous leader launched, from the records in KV `corral_modules`,
instead of starting it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from corral import graph
from corral.bus import ensure_stream, events_stream_spec, publish_durable
from corral.component import cancel_and_wait
from corral.config import ModuleConfig, RestartPolicy, SystemConfig
from corral.errors import ConflictError, NotFoundError, UnavailableError
from corral.orchestrator.launchers import ProcessLauncher
from corral.orchestrator.probe import ready_instances
from corral.orchestrator.records import ModuleRecord, RecoveryEntry
from corral.orchestrator.registry import ModuleRegistry
from corral.orchestrator.startup import StartRun, SystemStartError
from corral.orchestrator.states import UP_STATES, LifecycleAlert, LifecycleEvent, ModuleState
from corral.orchestrator.supervisor import ModuleSupervisor, StartFailed
from corral.protocol import Heartbeat, ModuleRegistration
from corral.subjects import Subjects

__all__ = ["Lifecycle", "ModuleResult", "StartReport", "StopReport", "SystemStartError"]

log = logging.getLogger("corral.orchestrator.lifecycle")

_encode = msgspec.json.Encoder().encode
_decode_heartbeat = msgspec.json.Decoder(Heartbeat).decode
TICK = 0.5  # seconds between heartbeat and log-size checks
HEARTBEAT_MEMORY = 600.0  # seconds a silent instance's last heartbeat is remembered


class ModuleResult(msgspec.Struct):
    module: str
    state: str
    pids: list[int] = []
    detail: str = ""


class StartReport(msgspec.Struct):
    system: str  # running | degraded
    started: list[ModuleResult]  # in the order they reached running
    skipped: dict[str, str]  # optional module -> why it is not running
    seconds: float


class StopReport(msgspec.Struct):
    stopped: list[ModuleResult]  # in stop order
    seconds: float


class _HealthVerdict(msgspec.Struct):
    module: str
    instance: str = ""
    new: str = ""
    reason: str = ""


_decode_verdict = msgspec.json.Decoder(_HealthVerdict).decode


class Lifecycle:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        subjects: Subjects,
        config: SystemConfig,
        *,
        leader_id: str,
        nats_url: str,
    ) -> None:
        self.nc = nc
        self.js = js
        self.subjects = subjects
        self.config = config
        self.leader_id = leader_id
        self.registry = ModuleRegistry(js, subjects)
        self.launcher = ProcessLauncher(
            nats_url=nats_url,
            prefix=subjects.prefix,
            log_dir=config.resolve(config.log_dir),
            log_max_bytes=int(config.log_max_mb * 2**20),
            log_backups=config.log_backups,
        )
        self.supervisors: dict[str, ModuleSupervisor] = {}
        self.active = False
        self.lock = asyncio.Lock()  # one system-level operation at a time
        # instance -> (monotonic time of its last beat, the beat interval it says it keeps)
        self._heartbeats: dict[str, tuple[float, float]] = {}
        self._signals: dict[str, asyncio.Event] = {}
        self._acks: dict[str, dict[str, float]] = {}  # module -> instance -> its start time
        self._subs: list[Subscription] = []
        self._tick: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._event_ids = itertools.count(1)
        self._boot = uuid.uuid4().hex[:8]
        self.started_order: list[str] = []  # modules in the order they last came up
        self.on_change: list[Any] = []  # callbacks run on every state change (the readiness gate)

    # --- leadership ----------------------------------------------------------------------------
    async def open(self) -> None:
        await ensure_stream(self.js, events_stream_spec(self.subjects))
        await self.registry.open()

    async def activate(self) -> list[str]:
        """Become the one who acts: load the registry, add corral.toml's modules, adopt what
        runs. Returns the modules adopted."""
        if self.active:
            return []
        records = await self.registry.load()
        for name, module in self.config.modules.items():
            record = records.get(name)
            fresh = self._new_record(name, module, "config")
            if record is None:
                records[name] = fresh
            else:  # keep its state and instances; take the descriptor from the file
                record.descriptor, record.argv, record.cwd = fresh.descriptor, fresh.argv, fresh.cwd
                record.source = "config"
        adopted = []
        for name, record in records.items():
            sup = self.supervisors[name] = ModuleSupervisor(record, self, clock=time.monotonic)
            self.registry.records[name] = record
            self.registry.histories[name] = await self.registry.load_history(name)
            await self.registry.save(record, self.leader_id)
            if record.desired == "running" and record.state in UP_STATES:
                gone = sup.adopt()
                adopted.append(name)
                for instance in gone:
                    sup.fail(instance, f"instance {instance} was gone when {self.leader_id} took over")
        self._subs = [
            await self.nc.subscribe(self.subjects.heartbeats_all, cb=self._on_heartbeat),
            await self.nc.subscribe(self.subjects.event("health", "*"), cb=self._on_health),
        ]
        self._tick = asyncio.create_task(self._tick_loop(), name="lifecycle-tick")
        for name, record in records.items():
            if record.desired == "running" and record.state is ModuleState.STARTING:
                if record.source == "sdk":  # not ours to start: its instances re-register
                    self._spawn(self._rejoin(name))
                else:
                    self._spawn(self._resume_start(name))
        if adopted:
            log.info("adopted %s from the registry", ", ".join(adopted))
        self.active = True  # only now: requests that arrived meanwhile were held by the router
        return adopted

    async def deactivate(self) -> None:
        """Stop acting, leave every module running (another replica adopts them)."""
        if not self.active:
            return
        self.active = False
        if self._tick is not None:
            await cancel_and_wait(self._tick)
            self._tick = None
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for sup in self.supervisors.values():
            await sup.detach()
        self.supervisors.clear()
        self.registry.records.clear()  # a standby reads KV, not what it last knew as leader
        self._heartbeats.clear()

    def _new_record(self, name: str, module: ModuleConfig, source: str) -> ModuleRecord:
        argv = self.config.module_argv(name, module) if module.kind in ("process", "wasm") else []
        cwd = str(self.config.resolve(module.cwd)) if module.cwd else self.config.root
        return ModuleRecord(name=name, descriptor=module, source=source, argv=argv, cwd=cwd)

    # --- what supervisors call -----------------------------------------------------------------
    async def save(self, record: ModuleRecord) -> None:
        await self.registry.save(record, self.leader_id)

    async def publish(self, event: LifecycleEvent) -> None:
        await self._publish_event(self.subjects.event("lifecycle", event.module), _encode(event))

    async def alert(self, record: ModuleRecord, reason: str, action: str = "") -> None:
        body = LifecycleAlert(
            module=record.name, state=record.state, error=record.status.error,
            attempts=record.status.attempts, reason=reason, time=time.time(),
            action=action or f"fix it, then `corral restart {record.name}`",
        )  # fmt: skip
        log.error("module %s needs an operator: %s", record.name, reason)
        await self._publish_event(self.subjects.event("lifecycle", record.name, "alert"), _encode(body))

    async def _publish_event(self, subject: str, data: bytes) -> None:
        try:
            await publish_durable(
                self.js, subject, data, msg_id=f"lifecycle:{self._boot}:{next(self._event_ids)}", deadline=5.0
            )
        except Exception as exc:  # the transition stands; only its history entry is lost
            log.warning("could not publish %s: %r", subject, exc)

    async def add_history(self, module: str, entry: RecoveryEntry) -> None:
        await self.registry.append_history(module, entry)

    def request_system_restart(self, module: str, reason: str) -> None:
        self._spawn(self._system_restart(module, reason))

    def ready_signal(self, module: str) -> asyncio.Event:
        return self._signals.setdefault(module, asyncio.Event())

    def ready_acks(self, module: str) -> dict[str, float]:
        """Instance -> start time, of the instances that acknowledged the gate's `ready`."""
        return self._acks.setdefault(module, {})

    def ready_acknowledged(self, module: str, instance: str, started: float) -> None:
        self.ready_acks(module)[instance] = started
        self.ready_signal(module).set()
        sup = self.supervisors.get(module)
        if self.active and sup is not None and sup.external:
            self._spawn(sup.joined(instance))

    def last_heartbeat(self, instance: str) -> float | None:
        seen = self._heartbeats.get(instance)
        return seen[0] if seen is not None else None

    def heartbeat_interval(self, instance: str) -> float:
        seen = self._heartbeats.get(instance)
        return seen[1] if seen is not None else 0.0

    def state_changed(self) -> None:
        for callback in self.on_change:
            callback()

    def state_of(self, module: str) -> ModuleState | None:
        """The module's lifecycle state, or None when the registry does not know it."""
        record = self.registry.records.get(module)
        return record.state if record is not None else None

    def tell_ready(self, module: str) -> None:
        """The readiness gate told `module` it may serve: wake whoever waits for it."""
        self.ready_signal(module).set()

    # --- system operations ---------------------------------------------------------------------
    def _require_active(self) -> None:
        if not self.active:
            raise UnavailableError("this orchestrator replica is not the leader; retry (a leader answers)")

    def _graph(self, joining: str = "", depends_on: list[str] | None = None) -> dict[str, list[str]]:
        """The registry's graph (with `joining` -> `depends_on` added or replaced). A
        self-registered module may name a dependency that has not registered yet (pods start in
        any order): the gate waits for it, and the graph leaves it out until it exists."""
        deps = {name: r.descriptor.depends_on for name, r in self.registry.records.items()}
        if joining:
            deps[joining] = depends_on or []
        return {name: [d for d in needs if d in deps] for name, needs in deps.items()}

    def _ours(self, names: list[str]) -> list[str]:
        """`names` without the self-registered modules: start_system and stop_system leave
        those to whoever started them (`corral stop <module>` still stops one)."""
        return [n for n in names if self.registry.records[n].source != "sdk"]

    async def start_system(self) -> StartReport:
        self._require_active()
        async with self.lock:
            return await self._start_system()

    async def _start_system(self) -> StartReport:
        began = time.monotonic()
        deps = self._graph()
        graph.check(deps)
        run = StartRun(
            self.supervisors,
            self._ours(graph.start_order(deps)),
            parallel=self.config.parallel_startup,
            delay=self.config.module_start_delay,
            skip=self._mark_skipped,
        )
        try:
            await run.run()
        except BaseException as exc:
            came_up = sorted(run.started, key=self.started_order.index)
            rolled = await self._stop_modules(list(reversed(came_up)), "startup rolled back")
            if isinstance(exc, SystemStartError):
                names = ", ".join(r.module for r in rolled) or "nothing"
                raise SystemStartError(f"{exc}; stopped again, in reverse order: {names}") from None
            raise
        started = []
        for name in sorted(run.started, key=self.started_order.index):  # the order they came up
            record = self.registry.records[name]
            started.append(ModuleResult(name, record.state.value, record.pids, f"{run.took[name]:.2f}s"))
        system = "degraded" if run.skipped else "running"
        return StartReport(system, started, run.skipped, round(time.monotonic() - began, 3))

    async def _mark_skipped(self, name: str, reason: str) -> None:
        sup = self.supervisors[name]
        sup.record.desired = "stopped"
        if sup.record.state in (ModuleState.REGISTERED, ModuleState.FAILED):
            await sup._set(ModuleState.STOPPED, reason)

    async def stop_system(self, timeout: float | None = None) -> StopReport:
        self._require_active()
        async with self.lock:
            began = time.monotonic()
            order = self._ours(graph.stop_order(self._graph(), self.started_order))
            stopped = await self._stop_modules(order, "stop_system", timeout)
            return StopReport(stopped, round(time.monotonic() - began, 3))

    async def _stop_modules(
        self, names: list[str], reason: str, timeout: float | None = None
    ) -> list[ModuleResult]:
        """Stop `names` (given in stop order): a module once every module before it in the list
        that depends on it has stopped; in parallel when parallel_startup is on."""
        results: dict[str, ModuleResult] = {}
        deps = self._graph()
        tasks: dict[str, asyncio.Task[list[str]]] = {}

        async def stop_one(name: str) -> list[str]:
            waits = [tasks[n] for n in names if n in tasks and name in deps.get(n, ())]
            await asyncio.gather(*waits, return_exceptions=True)
            return await self.supervisors[name].stop(reason, timeout)

        for name in names:
            sup = self.supervisors.get(name)
            if sup is None or sup.record.state in (ModuleState.STOPPED, ModuleState.REGISTERED):
                continue
            pids = sup.record.pids
            if self.config.parallel_startup:
                tasks[name] = asyncio.create_task(stop_one(name))
            else:
                how = await self.supervisors[name].stop(reason, timeout)
                results[name] = ModuleResult(name, sup.record.state.value, pids, "; ".join(how))
            results.setdefault(name, ModuleResult(name, "", pids, ""))
        for name, task in tasks.items():
            how = await task
            results[name].state = self.supervisors[name].record.state.value
            results[name].detail = "; ".join(how)
        return [results[n] for n in names if n in results]

    async def _system_restart(self, module: str, reason: str) -> None:
        log.warning("critical module %s failed (%s): restarting the whole system", module, reason)
        async with self.lock:
            order = self._ours(graph.stop_order(self._graph(), self.started_order))
            await self._stop_modules(order, f"system restart for {module}")
            try:
                await self._start_system()
            except SystemStartError as exc:
                log.error("system restart failed: %s", exc)

    async def _resume_start(self, name: str) -> None:
        """A previous leader died while `name` was starting: start it over."""
        sup = self.supervisors[name]
        async with self.lock:
            with contextlib.suppress(StartFailed):
                await sup.stop("leader changed during startup")
                await sup.start("resumed by the new leader")

    async def _rejoin(self, name: str) -> None:
        """A self-registered module was starting when the previous leader left; an instance
        that was told `ready` meanwhile no longer re-registers, so ask."""
        sup = self.supervisors[name]
        found = await ready_instances(self.nc, self.subjects, name)
        for instance in sorted(i for i, ready in found.items() if ready):
            await sup.joined(instance)

    def came_up(self, name: str) -> None:
        if name in self.started_order:
            self.started_order.remove(name)
        self.started_order.append(name)

    # --- one module ----------------------------------------------------------------------------
    def supervisor(self, name: str) -> ModuleSupervisor:
        sup = self.supervisors.get(name)
        if sup is None:
            known = ", ".join(sorted(self.supervisors)) or "none"
            raise NotFoundError(f"no module {name!r} in the registry (modules: {known})")
        return sup

    async def start_module(self, name: str) -> ModuleResult:
        self._require_active()
        sup = self.supervisor(name)
        async with self.lock:
            if sup.record.state in UP_STATES:
                return ModuleResult(name, sup.record.state.value, sup.record.pids, "already running")
            states = {d: self.state_of(d) for d in sup.record.descriptor.depends_on}
            down = [
                f"{d} ({s.value if s else 'not registered'})" for d, s in states.items() if s not in UP_STATES
            ]
            if down:
                raise ConflictError(
                    f"cannot start {name}: it depends on {', '.join(down)}; start those first"
                )
            if sup.record.state not in (ModuleState.REGISTERED, ModuleState.STOPPED):
                await sup.stop("stopped before starting again")
            try:
                took = await sup.start("start requested")
            except StartFailed as exc:
                raise UnavailableError(f"module {name} did not start: {exc}") from exc
            return ModuleResult(name, sup.record.state.value, sup.record.pids, f"{took:.2f}s")

    async def stop_module(self, name: str, *, cascade: bool, timeout: float | None) -> list[ModuleResult]:
        self._require_active()
        self.supervisor(name)
        async with self.lock:
            needed_by = [
                d for d in graph.dependents(self._graph(), name)
                if self.registry.records[d].state not in (ModuleState.STOPPED, ModuleState.REGISTERED)
            ]  # fmt: skip
            if needed_by and not cascade:
                raise ConflictError(
                    f"{name} is needed by {', '.join(needed_by)}; stop those first or pass cascade "
                    f"(`corral stop {name} --cascade`)"
                )
            return await self._stop_modules([*needed_by, name], "stop requested", timeout)

    async def restart_module(self, name: str) -> ModuleResult:
        self._require_active()
        sup = self.supervisor(name)
        async with self.lock:
            await sup.stop("restart requested")
            try:
                took = await sup.start("restart requested")
            except StartFailed as exc:
                raise UnavailableError(f"module {name} did not start again: {exc}") from exc
            return ModuleResult(name, sup.record.state.value, sup.record.pids, f"{took:.2f}s")

    # --- registration at run time ------------------------------------------------------------
    async def register(self, name: str, module: ModuleConfig) -> ModuleRecord:
        """Add a descriptor; refused (ValueError) when it breaks the graph."""
        self._require_active()
        async with self.lock:
            existing = self.registry.records.get(name)
            if existing is not None:
                if existing.descriptor == module:
                    return existing
                raise ConflictError(
                    f"module {name!r} is already registered ({existing.source}) with another descriptor; "
                    "deregister it first"
                )
            graph.check({**self._graph(), name: list(module.depends_on)})
            record = self._new_record(name, module, "runtime")
            self.supervisors[name] = ModuleSupervisor(record, self, clock=time.monotonic)
            await self.registry.save(record, self.leader_id)
            return record

    async def join(self, reg: ModuleRegistration) -> ModuleRecord | None:
        """An SDK instance that started on its own registered: create or update the module's
        record (kind external, source "sdk") and start its lifecycle. A module declared in
        corral.toml or registered with a descriptor keeps that descriptor and its lifecycle
        (None): the registration waits at the readiness gate, and an external one's instance is
        recorded (see ModuleSupervisor.join). ValueError: a cycle."""
        self._require_active()
        record = self.registry.records.get(reg.module)
        if record is not None and record.source != "sdk":
            if record.descriptor.kind == "external":
                await self.supervisors[reg.module].join(reg.instance)
            return None
        descriptor = _external(reg, record.descriptor if record is not None else None)
        if record is None or record.descriptor.depends_on != descriptor.depends_on:
            graph.check(self._graph(reg.module, descriptor.depends_on))
        if record is None:
            record = self._new_record(reg.module, descriptor, "sdk")
            self.supervisors[reg.module] = ModuleSupervisor(record, self, clock=time.monotonic)
            self.registry.histories.setdefault(reg.module, [])
            log.info(
                "module %s registered itself (external, depends on %s)", reg.module, descriptor.depends_on
            )
        record.descriptor, record.version, record.types = descriptor, reg.version, list(reg.types)
        await self.supervisors[reg.module].join(reg.instance)
        return record

    async def leave(self, name: str, instance: str) -> tuple[str, str]:
        """An SDK instance deregistered on a clean shutdown: (what happened, the module's state)."""
        self._require_active()
        sup = self.supervisors.get(name)
        if sup is None or not sup.external:
            state = sup.record.state.value if sup is not None else ""
            return "ignored", state  # launched modules: their lifecycle sees the exit itself
        known = await sup.leave(instance)
        return ("instance" if known else "ignored"), sup.record.state.value

    async def deregister(self, name: str) -> None:
        self._require_active()
        sup = self.supervisor(name)
        async with self.lock:
            needed_by = graph.dependents(self._graph(), name)
            if needed_by:
                raise ConflictError(
                    f"{name} is a dependency of {', '.join(needed_by)}; deregister those first"
                )
            if sup.record.state in (ModuleState.STARTING, *UP_STATES, ModuleState.STOPPING):
                raise ConflictError(
                    f"{name} is {sup.record.state.value}; stop it first (`corral stop {name}`)"
                )
            await sup.detach()
            del self.supervisors[name]
            await self.registry.remove(name)

    # --- failure detection ---------------------------------------------------------------------
    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = _decode_heartbeat(msg.data)
        except msgspec.DecodeError:
            return
        if beat.service in self.supervisors:
            self._heartbeats[beat.instance] = (time.monotonic(), beat.interval)

    async def _on_health(self, msg: Msg) -> None:
        try:
            verdict = _decode_verdict(msg.data)
        except msgspec.DecodeError:
            return
        sup = self.supervisors.get(verdict.module)
        if sup is None or verdict.new != "unhealthy":
            return
        if (sup.spawns or sup.external) and not verdict.instance:
            return  # the module-wide verdict repeats the instance verdicts we act on
        sup.unhealthy(
            verdict.instance,
            f"health service: instance {verdict.instance or '*'} unhealthy: {verdict.reason}",
        )

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            for sup in list(self.supervisors.values()):
                sup.check_heartbeats(now)
            for instance in [i for i, (seen, _) in self._heartbeats.items() if now - seen > HEARTBEAT_MEMORY]:
                del self._heartbeats[instance]  # instances long gone (replaced by restarts)
            with contextlib.suppress(OSError):
                self.launcher.rotate_logs([n for n, s in self.supervisors.items() if s.spawns])

    def spawn(self, coro: Any) -> None:
        self._spawn(coro)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        await self.deactivate()


# What a self-registered module gets when it fails while its instance still runs (an unhealthy
# verdict): the `restart` control verb, with backoff, at most 3 times a minute, then an operator.
# An instance that stops heartbeating is dropped instead (a dead instance takes no verb).
EXTERNAL_RESTART = RestartPolicy(strategy="restart", max_attempts=3, window=60.0, escalation=["manual"])


def _external(reg: ModuleRegistration, old: ModuleConfig | None) -> ModuleConfig:
    """The descriptor of a self-registered module, from its instance's registration."""
    base = old or ModuleConfig(kind="external", required=False, restart=EXTERNAL_RESTART)
    interval = reg.heartbeat_interval or base.heartbeat_interval
    return msgspec.structs.replace(base, depends_on=list(reg.depends_on), heartbeat_interval=interval)
