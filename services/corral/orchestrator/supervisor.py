"""One module's supervisor: start, stop, watch its instances, recover it when one fails.

Every state change goes through `_set`, which applies `states.transition`, writes the record to
KV `corral_modules` and publishes the lifecycle event. Failures (an instance exited, its
heartbeats stopped, the health service judged it unhealthy) are queued and handled one at a
time by a recovery task, which asks the module's RecoveryPlanner what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
from nats.aio.client import Client

from corral.component import cancel_and_wait
from corral.orchestrator.launchers import ProcessLauncher, log_tail
from corral.orchestrator.probe import ready_instances
from corral.orchestrator.records import InstanceRecord, ModuleRecord, RecoveryEntry
from corral.orchestrator.recovery import GIVE_UP, RecoveryPlanner
from corral.orchestrator.states import UP_STATES, LifecycleEvent, ModuleState, transition
from corral.protocol import INSTANCE_HEADER
from corral.subjects import Subjects

__all__ = ["ModuleSupervisor", "StartFailed", "SupervisorContext"]

log = logging.getLogger("corral.orchestrator.lifecycle")

_encode = msgspec.json.Encoder().encode
POLL = 0.3  # seconds between readiness polls while waiting for instances


class StartFailed(Exception):
    """An instance did not come up; the message says why. `instance` names it when known."""

    def __init__(self, message: str, instance: str = "") -> None:
        super().__init__(message)
        self.instance = instance


class SupervisorContext(Protocol):
    """What a supervisor needs from the lifecycle around it."""

    nc: Client
    subjects: Subjects
    launcher: ProcessLauncher
    leader_id: str

    async def save(self, record: ModuleRecord) -> None: ...
    async def publish(self, event: LifecycleEvent) -> None: ...
    async def alert(self, record: ModuleRecord, reason: str, action: str = "") -> None: ...
    async def add_history(self, module: str, entry: RecoveryEntry) -> None: ...
    def request_system_restart(self, module: str, reason: str) -> None: ...
    def spawn(self, coro: Any) -> None: ...
    def ready_signal(self, module: str) -> asyncio.Event: ...
    def ready_acks(self, module: str) -> dict[str, float]: ...
    def last_heartbeat(self, instance: str) -> float | None: ...
    def heartbeat_interval(self, instance: str) -> float: ...
    def state_changed(self) -> None: ...
    def came_up(self, module: str) -> None: ...


@dataclass
class _Failure:
    instance: str
    what: str
    seen: float = field(default_factory=time.time)


class ModuleSupervisor:
    def __init__(self, record: ModuleRecord, ctx: SupervisorContext, *, clock: Callable[[], float]) -> None:
        self.record = record
        self.ctx = ctx
        self.clock = clock
        self.planner = RecoveryPlanner(record.descriptor.restart)
        self.ready_at: dict[str, float] = {}  # instance -> monotonic time it was seen ready
        self.exits: dict[str, str] = {}  # instance -> how it ended
        self._stopping: set[str] = set()  # instances we are stopping on purpose
        self._handled: set[str] = set()  # instances whose failure is queued or being recovered
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._failures: asyncio.Queue[_Failure] = asyncio.Queue()
        self._recovery: asyncio.Task[None] | None = None
        self._operating = False  # start() or stop() in progress: they own the state
        # A self-registered module (source "sdk") between an instance's registration and its
        # `ready` acknowledgement: the acknowledgement makes it running (see `join`).
        self.joining = record.source == "sdk" and record.state is ModuleState.STARTING
        self.joined_at: dict[str, float] = {}  # instance -> monotonic time it registered

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def spawns(self) -> bool:
        return self.record.descriptor.kind in ("process", "wasm")

    @property
    def self_registered(self) -> bool:
        return self.record.source == "sdk"

    @property
    def external(self) -> bool:
        """Its instances run elsewhere (a pod, a process started by hand): declared or
        self-registered, they are known from their registrations and readiness answers, and
        watched through their heartbeats."""
        return self.record.descriptor.kind == "external"

    @property
    def busy(self) -> bool:
        """A start, stop or recovery owns the state: joins and leaves only update instances."""
        return self._operating or self.recovering

    @property
    def recovering(self) -> bool:
        return self._recovery is not None and not self._recovery.done()

    # --- state ---------------------------------------------------------------------------------
    async def _set(
        self, new: ModuleState, reason: str, *, error: str = "", attempts: int | None = None
    ) -> None:
        old = self.record.state
        event = transition(
            self.name, self.record.status, new, reason, now=time.time(), error=error, attempts=attempts
        )
        event.pids = self.record.pids
        event.leader = self.ctx.leader_id
        log.info("module %s: %s -> %s (%s)", self.name, old, new, reason)
        await self.ctx.save(self.record)
        await self.ctx.publish(event)
        self.ctx.state_changed()

    # --- start -------------------------------------------------------------------------------
    async def start(self, reason: str) -> float:
        """Launch every instance and wait until all answer readiness; return the seconds it took.

        Raises StartFailed, with what was launched stopped again and the module failed.
        """
        self._operating, self.joining = True, False
        try:
            return await self._start(reason)
        finally:
            self._operating = False

    async def _start(self, reason: str) -> float:
        self.planner.reset()
        self.record.desired = "running"
        began = self.clock()
        await self._set(ModuleState.STARTING, reason, attempts=0)
        try:
            # An external module may have been serving long before it was asked for.
            since = time.time() if self.spawns else 0.0
            ids = (
                [await self._launch() for _ in range(self.record.descriptor.instances)]
                if self.spawns
                else None
            )
            await self._wait_ready(ids, since)
        except StartFailed as exc:
            await self._stop_instances(self.record.descriptor.stop_timeout)
            await self._set(ModuleState.FAILED, f"did not start: {exc}", error=str(exc))
            raise
        except asyncio.CancelledError:  # startup rolled back while this module was starting
            await self._set(ModuleState.STOPPING, "start cancelled: startup rolled back")
            how = await self._stop_instances(self.record.descriptor.stop_timeout)
            await self._set(ModuleState.STOPPED, "start cancelled: " + ("; ".join(how) or "nothing launched"))
            raise
        took = self.clock() - began
        await self._set(ModuleState.RUNNING, f"every instance answered readiness in {took:.2f}s")
        self.ctx.came_up(self.name)
        return took

    async def _launch(self, *, reset: bool = False) -> str:
        try:
            inst = await self.ctx.launcher.launch(self.record, reset=reset)
        except OSError as exc:
            argv0 = self.record.argv[0] if self.record.argv else "?"
            raise StartFailed(f"could not launch {argv0}: {exc}") from exc
        self.record.instances.append(inst)
        self.exits.pop(inst.instance, None)
        self._watch(inst)
        await self.ctx.save(self.record)
        return inst.instance

    def _watch(self, inst: InstanceRecord) -> None:
        task = asyncio.create_task(self._watch_exit(inst), name=f"watch-{inst.instance}")
        self._watchers[inst.instance] = task

    async def _watch_exit(self, inst: InstanceRecord) -> None:
        how = await self.ctx.launcher.wait_exit(inst)
        self.exits[inst.instance] = how
        self._watchers.pop(inst.instance, None)
        self.ctx.ready_signal(self.name).set()  # wake a waiter, which then sees the exit
        if inst.instance not in self._stopping:
            self.fail(inst.instance, f"instance {inst.instance} (pid {inst.pid}) {how}")

    def adopt(self) -> list[str]:
        """Watch the instances a previous leader launched; return those already gone."""
        gone = []
        for inst in self.record.instances:
            if not inst.pid:
                continue
            if self.ctx.launcher.alive(inst):
                self._watch(inst)
                self.ready_at.setdefault(inst.instance, self.clock())
            else:
                gone.append(inst.instance)
        return gone

    async def _wait_ready(self, ids: list[str] | None, since: float) -> None:
        """Until every instance in `ids` (external, None: at least one, and every one seen)
        answers readiness; StartFailed when one exits or `startup_timeout` passes."""
        timeout = self.record.descriptor.startup_timeout
        deadline = self.clock() + timeout
        signal = self.ctx.ready_signal(self.name)
        pending = set(ids) if ids is not None else None
        found: dict[str, bool] = {}
        asked = False
        while True:
            self._raise_on_exit(pending or set())
            # SDK instances acknowledge the gate's `ready`: no need to ask them.
            acks = self.ctx.ready_acks(self.name)
            self._mark_ready(pending, [i for i in pending or () if acks.get(i, -1.0) >= since])
            if pending is not None and not pending:
                return
            if asked or pending is None:  # just launched: give it a moment (and its ack a chance)
                found = await ready_instances(self.ctx.nc, self.ctx.subjects, self.name, since=since)
                if pending is None and found and all(found.values()):
                    self._mark_ready(None, list(found))
                    return
                self._mark_ready(pending, [i for i in pending or () if found.get(i)])
                if pending is not None and not pending:
                    return
            asked = True
            now = self.clock()
            if now >= deadline:
                raise self._not_ready(pending, found, timeout)
            signal.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(signal.wait(), min(POLL, max(deadline - now, 0.01)))

    def _mark_ready(self, pending: set[str] | None, instances: list[str]) -> None:
        now = self.clock()
        for instance in instances:
            if pending is not None:
                pending.discard(instance)
            self.ready_at[instance] = now
            if self.external:
                self._know(instance).ready = True

    def _know(self, instance: str) -> InstanceRecord:
        """The record of an external instance, added when it is first seen."""
        inst = next((i for i in self.record.instances if i.instance == instance), None)
        if inst is None:
            inst = InstanceRecord(instance=instance, started=time.time())
            self.record.instances.append(inst)
            self._handled.discard(instance)
        return inst

    def _raise_on_exit(self, pending: set[str]) -> None:
        for instance in sorted(pending):
            if instance in self.exits:
                log_file = self.ctx.launcher.log_file(self.name)
                raise StartFailed(
                    f"module {self.name} {self.exits[instance]} during startup (instance {instance}); "
                    f"last lines of {log_file}:\n{log_tail(log_file)}",
                    instance,
                )

    def _not_ready(self, pending: set[str] | None, found: dict[str, bool], timeout: float) -> StartFailed:
        waiting = ", ".join(sorted(pending)) if pending else "any instance"
        seen = "registered but not ready" if any(i in found for i in (pending or found)) else "not registered"
        return StartFailed(
            f"module {self.name}: {waiting} did not answer readiness within {timeout:g}s ({seen})",
            min(pending) if pending else "",
        )

    # --- stop --------------------------------------------------------------------------------
    async def stop(self, reason: str, timeout: float | None = None) -> list[str]:
        """Drain and stop every instance (killed after stop_timeout); return how each ended."""
        self._operating, self.joining = True, False
        try:
            return await self._stop(reason, timeout)
        finally:
            self._operating = False

    async def _stop(self, reason: str, timeout: float | None) -> list[str]:
        self.record.desired = "stopped"
        await self._cancel_recovery()
        if self.record.state in (ModuleState.STOPPED, ModuleState.REGISTERED):
            return []
        if self.record.state is ModuleState.FAILED and not self._anything_alive():
            self.record.instances = []
            await self._set(ModuleState.STOPPED, f"{reason}; nothing was left running")
            return []
        await self._set(ModuleState.STOPPING, reason)
        how = await self._stop_instances(self.record.descriptor.stop_timeout if timeout is None else timeout)
        await self._set(ModuleState.STOPPED, f"{reason}: " + ("; ".join(how) or "no instance was running"))
        return how

    def _anything_alive(self) -> bool:
        return any(self.ctx.launcher.alive(i) for i in self.record.instances)

    async def _stop_instances(self, timeout: float) -> list[str]:
        if not self.spawns:
            return await self._stop_external(timeout)
        instances = list(self.record.instances)
        self._stopping.update(i.instance for i in instances)
        results = await asyncio.gather(*(self.ctx.launcher.stop(i, timeout) for i in instances))
        for inst in instances:
            watcher = self._watchers.pop(inst.instance, None)
            if watcher is not None:
                watcher.cancel()
            self.ready_at.pop(inst.instance, None)
        self.record.instances = []
        return [f"{i.instance} {how}" for i, how in zip(instances, results, strict=True)]

    async def _stop_external(self, timeout: float) -> list[str]:
        """Ask every instance to stop (control verb) and wait until none answers."""
        with contextlib.suppress(Exception):
            await self.ctx.nc.publish(self.ctx.subjects.modctl(self.name, "stop"), b"")
        deadline = self.clock() + timeout
        while self.clock() < deadline:
            if not await ready_instances(self.ctx.nc, self.ctx.subjects, self.name):
                self.record.instances = []  # a self-registered module's: they are gone
                return ["stopped by its stop verb"]
            await asyncio.sleep(POLL)
        return [f"still answering {timeout:g}s after the stop verb (external: not ours to kill)"]

    async def detach(self) -> None:
        """Stop supervising without touching the instances (this replica lost the lead)."""
        await self._cancel_recovery()
        for task in list(self._watchers.values()):
            task.cancel()
        self._watchers.clear()

    # --- failure and recovery ----------------------------------------------------------------
    def fail(self, instance: str, what: str) -> None:
        """Queue a failure of `instance` ("" for the module as a whole); ignored when the
        module is not meant to be up, the instance is not current, or it is already handled."""
        if self.record.desired != "running" or self.record.state not in UP_STATES:
            return  # not meant to be up, or a start or recovery in progress sees its own failures
        current = {i.instance for i in self.record.instances}
        if instance and self.spawns and instance not in current:
            return
        key = instance or "*"
        if key in self._handled:
            return
        self._handled.add(key)
        log.warning("module %s: failure: %s", self.name, what)
        self._failures.put_nowait(_Failure(instance, what))
        if not self.recovering:
            self._recovery = asyncio.create_task(self._recover_all(), name=f"recover-{self.name}")

    def unhealthy(self, instance: str, what: str) -> None:
        """The health service judged `instance` unhealthy. An external instance that has also
        gone silent is lost (no verb can reach it); any other is recovered by its policy."""
        if self.external and instance:
            silent = self.clock() - self._last_seen(instance) > 2 * self._beat_interval(instance)
            if silent:
                self._queue_loss(instance, what)
                return
        self.fail(instance, what)

    def check_heartbeats(self, now: float) -> None:
        """A failure for each instance silent for unhealthy_threshold heartbeat intervals."""
        watched = self.spawns or self.external
        if (self.record.state not in UP_STATES and not self.joining) or self.busy or not watched:
            return
        threshold = self.record.descriptor.unhealthy_threshold
        for inst in list(self.record.instances):
            reference = self._last_seen(inst.instance)
            interval = self._beat_interval(inst.instance)
            if reference and now - reference > interval * threshold:
                what = (
                    f"instance {inst.instance}: no heartbeat for {now - reference:.1f}s "
                    f"({threshold} intervals of {interval:g}s)"
                )
                if self.spawns:
                    self.fail(inst.instance, what)
                else:
                    self._queue_loss(inst.instance, what)

    def _beat_interval(self, instance: str) -> float:
        """The declared interval, or the one the instance's heartbeats say it keeps if longer
        (a pod of a declared external module has its own CORRAL_HEARTBEAT_INTERVAL)."""
        return max(self.record.descriptor.heartbeat_interval, self.ctx.heartbeat_interval(instance))

    def _queue_loss(self, instance: str, what: str) -> None:
        if instance not in self._handled and not self.busy:
            self._handled.add(instance)
            self.ctx.spawn(self._lose(instance, what))

    def _last_seen(self, instance: str) -> float:
        """Monotonic time of the instance's last sign of life (0.0: none yet)."""
        seen = (self.ctx.last_heartbeat(instance), self.ready_at.get(instance), self.joined_at.get(instance))
        return max((x for x in seen if x is not None), default=0.0)

    # --- an external module, whose instances register themselves ------------------------------
    async def join(self, instance: str) -> None:
        """An instance registered: record it; a module that was not up starts (registered,
        stopped or failed -> starting) and becomes running when an instance acknowledges `ready`.
        A declared external module starts so only when it was meant to run (it lost its
        instances): before that, start_system or `corral start` starts it."""
        if not any(i.instance == instance for i in self.record.instances):
            self._know(instance)
            self.joined_at[instance] = self.clock()
        down = (ModuleState.REGISTERED, ModuleState.STOPPED, ModuleState.FAILED)
        if self.record.state in down and not (self.self_registered or self.record.desired == "running"):
            self._forget(instance)  # not meant to run: the instance only waits at the readiness gate
            return
        if self.busy or self.record.state not in down:
            await self.ctx.save(self.record)
            return
        self.record.desired = "running"
        self.planner.reset()
        self.joining = True
        deps = self.record.descriptor.depends_on
        waits = f"; waiting for {', '.join(deps)}" if deps else ""
        await self._set(ModuleState.STARTING, f"instance {instance} registered{waits}", attempts=0)

    async def joined(self, instance: str) -> None:
        """An instance acknowledged the readiness gate's `ready` (its dependencies are up)."""
        if not self.self_registered and self.record.state not in (ModuleState.STARTING, *UP_STATES):
            return  # a declared module's instance, acknowledging while the module is not up
        inst = self._know(instance)  # may have registered with a previous leader
        inst.ready = True
        self.ready_at[instance] = self.clock()
        if self.joining and self.record.state is ModuleState.STARTING and not self.busy:
            self.joining = False
            await self._set(ModuleState.RUNNING, f"instance {instance} acknowledged ready")
        else:
            await self.ctx.save(self.record)

    async def leave(self, instance: str) -> bool:
        """An instance deregistered on a clean shutdown. The last one to leave makes the module
        stopped (not removed: its dependents, history and state stay readable). False when the
        instance was not known."""
        known = any(i.instance == instance for i in self.record.instances)
        self._forget(instance)
        up = self.record.state in (ModuleState.STARTING, *UP_STATES)
        if self.record.instances or self.busy or not up:
            await self.ctx.save(self.record)
            return known
        if self.self_registered:
            # A declared module stays meant to run: the next instance that registers starts it.
            self.record.desired = "stopped"
        self.joining = False
        await self._set(ModuleState.STOPPING, f"instance {instance} deregistered (clean shutdown)")
        await self._set(ModuleState.STOPPED, "every instance shut down cleanly and deregistered")
        return known

    async def _lose(self, instance: str, what: str) -> None:
        """An instance of an external module stopped heartbeating (killed, or cut off).
        It cannot be relaunched from here and takes no control verb, so it is dropped; when none
        is left the module is failed, with an alert, until an instance registers again (its
        platform, e.g. Kubernetes, restarts it) or an operator acts."""
        try:
            if self.busy or instance not in {i.instance for i in self.record.instances}:
                return
            self._forget(instance)
            if self.record.state not in (ModuleState.STARTING, *UP_STATES):
                await self.ctx.save(self.record)
                return
            left = len(self.record.instances)
            action = "drop_instance" if left else "manual"
            entry = RecoveryEntry(
                time=time.time(), failure=what, instance=instance, action=action,
                attempt=0, max_attempts=0, delay=0.0,
            )  # fmt: skip
            await self.ctx.add_history(self.name, entry)
            if left:
                await self.ctx.save(self.record)
                await self._finish(entry, f"dropped; {left} instance(s) still serving")
                return
            self.joining = False
            reason = f"external module lost its last instance: {what}"
            await self._finish(entry, "waiting for an instance to register again")
            await self._set(ModuleState.FAILED, reason, error=what)
            await self.ctx.alert(
                self.record, reason,
                action="start an instance again (it rejoins when it registers), or "
                f"`corral stop {self.name}` / deregister it",
            )  # fmt: skip
        finally:
            self._handled.discard(instance)

    def _forget(self, instance: str) -> None:
        self.record.instances = [i for i in self.record.instances if i.instance != instance]
        self.ready_at.pop(instance, None)
        self.joined_at.pop(instance, None)

    async def _cancel_recovery(self) -> None:
        if self._recovery is not None and not self._recovery.done():
            await cancel_and_wait(self._recovery)
        self._recovery = None
        self._failures = asyncio.Queue()
        self._handled.clear()

    async def _recover_all(self) -> None:
        while not self._failures.empty():
            failure = self._failures.get_nowait()
            try:
                recovered = await self._recover(failure.instance, failure.what)
            finally:
                self._handled.discard(failure.instance or "*")
            if recovered and self.record.state in UP_STATES and self.spawns:
                # Instances that died while another one was being recovered.
                for inst in self.record.instances:
                    if inst.instance in self.exits and inst.instance not in self._handled:
                        self._handled.add(inst.instance)
                        self._failures.put_nowait(
                            _Failure(inst.instance, f"instance {inst.instance} {self.exits[inst.instance]}")
                        )

    async def _recover(self, instance: str, what: str) -> bool:
        """Apply the planner's decisions until the module is back (True), or it is handed on:
        to an operator, or to a system restart (False)."""
        while True:
            decision = self.planner.decide(self.clock(), what)
            entry = RecoveryEntry(
                time=time.time(), failure=what, instance=instance, action=decision.action,
                attempt=decision.attempt, max_attempts=decision.max_attempts, delay=round(decision.delay, 3),
            )  # fmt: skip
            await self.ctx.add_history(self.name, entry)
            if decision.action in (GIVE_UP, "manual"):
                # The history says so before the event and the alert do: an operator who reads
                # it on the alert finds the outcome, not a pending entry.
                await self._finish(
                    entry, "gave up" if decision.action == GIVE_UP else "waiting for an operator"
                )
                # Left as they are for the operator, except what is gone already.
                if self.spawns:
                    self.record.instances = [i for i in self.record.instances if self.ctx.launcher.alive(i)]
                if self.record.state is not ModuleState.FAILED:
                    await self._set(
                        ModuleState.FAILED, decision.reason, error=what, attempts=decision.attempt
                    )
                await self.ctx.alert(self.record, decision.reason)
                return False
            if decision.action == "system_restart":
                await asyncio.sleep(decision.delay)
                await self._finish(entry, "system restart requested")
                self.ctx.request_system_restart(self.name, decision.reason)
                return False
            if self.record.state is not ModuleState.STARTING:
                await self._set(ModuleState.STARTING, decision.reason, attempts=decision.attempt)
            await asyncio.sleep(decision.delay)
            began = self.clock()
            try:
                await self._apply(decision.action, instance, what)
            except StartFailed as exc:
                await self._finish(entry, f"failed: {exc}")
                instance, what = exc.instance, f"{decision.action} did not bring it back: {exc}"
                continue
            await self._finish(entry, f"recovered in {self.clock() - began:.2f}s")
            new = ModuleState.DEGRADED if decision.action == "degraded" else ModuleState.RUNNING
            await self._set(
                new, f"recovered by {decision.action} (attempt {decision.attempt})", attempts=decision.attempt
            )
            return True

    async def _finish(self, entry: RecoveryEntry, outcome: str) -> None:
        entry.outcome = outcome
        entry.finished = time.time()
        await self.ctx.add_history(self.name, entry)

    async def _apply(self, action: str, instance: str, what: str) -> None:
        if not self.spawns:
            verb = {"restart": "restart", "restart_with_reset": "reset", "degraded": "degrade"}[action]
            since = time.time()
            if verb == "degrade":
                await self._degrade(what)
                return
            if instance and self._instance(instance) is not None:
                # Only the instance that failed: the others keep serving meanwhile.
                before = {i.instance for i in self.record.instances}
                await self._verb(verb, instance=instance)
                await self._wait_back(instance, before, since)
                return
            await self._verb(verb)
            await self._wait_ready(None, since)
            return
        inst = self._instance(instance)
        alive = inst is not None and self.ctx.launcher.alive(inst)
        if action == "restart_with_reset" and alive:
            assert inst is not None
            since = time.time()
            if instance:  # that instance drains, runs on_reset and re-executes itself
                await self._verb("reset", instance=inst.instance)
                await self._wait_ready([inst.instance], since)
            else:  # the module as a whole: every instance does
                await self._verb("reset")
                await self._wait_ready([i.instance for i in self.record.instances], since)
            return
        if action == "degraded" and alive:
            await self._degrade(what)
            return
        if inst is not None:
            await self._replace(inst)
        since = time.time()
        new_id = await self._launch(reset=action == "restart_with_reset")
        await self._wait_ready([new_id], since)
        if action == "degraded":
            await self._degrade(what)

    async def _wait_back(self, instance: str, before: set[str], since: float) -> None:
        """Until the external instance a verb re-executed answers ready again: under its own id,
        or under a new one (an id the process generated itself changes when it re-executes,
        and the old one is then dropped). StartFailed after `startup_timeout`."""
        timeout = self.record.descriptor.startup_timeout
        deadline = self.clock() + timeout
        while True:
            found = await ready_instances(self.ctx.nc, self.ctx.subjects, self.name, since=since)
            back = [i for i, ready in found.items() if ready and (i == instance or i not in before)]
            if instance in back:
                self._mark_ready(None, [instance])
                return
            if back and instance not in found:
                self._forget(instance)
                self._mark_ready(None, back[:1])
                return
            if self.clock() > deadline:
                raise StartFailed(
                    f"module {self.name}: instance {instance} did not answer readiness within "
                    f"{timeout:g}s of the verb",
                    instance,
                )
            await asyncio.sleep(POLL)

    def _instance(self, instance: str) -> InstanceRecord | None:
        if not instance:
            # The module as a whole: the first instance that is gone, else the first one.
            dead = [i for i in self.record.instances if not self.ctx.launcher.alive(i)]
            return dead[0] if dead else (self.record.instances[0] if self.record.instances else None)
        return next((i for i in self.record.instances if i.instance == instance), None)

    async def _replace(self, inst: InstanceRecord) -> None:
        """Make sure `inst` is gone (stopped if it still runs) and drop it from the record."""
        self._stopping.add(inst.instance)
        await self.ctx.launcher.stop(inst, self.record.descriptor.stop_timeout)
        watcher = self._watchers.pop(inst.instance, None)
        if watcher is not None:
            watcher.cancel()
        self.record.instances = [i for i in self.record.instances if i.instance != inst.instance]
        self.ready_at.pop(inst.instance, None)

    async def _verb(self, verb: str, body: dict[str, Any] | None = None, *, instance: str = "") -> Any:
        """Send a control verb to every instance (each has a queue group of its own), or to
        `instance` only; return the first reply's payload."""
        subject = self.ctx.subjects.modctl(self.name, verb)
        headers = {INSTANCE_HEADER: instance} if instance else None
        try:
            msg = await self.ctx.nc.request(subject, _encode(body or {}), timeout=5.0, headers=headers)
        except Exception as exc:
            raise StartFailed(f"the {verb} control verb got no answer: {exc!r}") from exc
        reply = msgspec.json.decode(msg.data)
        if not reply.get("success"):
            raise StartFailed(f"the {verb} control verb was refused: {reply.get('payload')}")
        return reply.get("payload")

    async def _degrade(self, reason: str) -> None:
        await self._verb("degrade", {"reason": reason[:1000], "on": True})
