"""The readiness gate: SDK modules wait to serve until their dependencies are ready.

A module instance started by `module.run()` sends `<prefix>.orchestrator.register`
(ModuleRegistration) and answers UNAVAILABLE until it receives `<prefix>.modctl.<module>.ready`.
The gate remembers waiting modules and, every `interval` seconds and at once on a registration,
tells a module ready (one core publish, which every instance receives) when each of its
dependencies has an instance that says it is ready:

* an SDK module says so in its `<prefix>.modctl.<dep>.status` reply (asked of every instance;
  the first ready answer is enough);
* a module that has no status verb (a WebAssembly module, which serves as soon as it is
  registered) counts as ready once it is registered with the Services API.

A dependency the orchestrator's lifecycle manages (it is in the module registry) counts as ready
exactly when its lifecycle state is running or degraded; the lifecycle wakes the gate on every
state change. Asking is fresh (no heartbeat ages to guess) and needs no other service. A module without
dependencies is told at once. Modules re-register every few seconds while they wait, so the gate
rebuilds itself after an orchestrator restart and a lost `ready` is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from corral.component import cancel_and_wait
from corral.discovery import discover, module_statuses
from corral.protocol import ModuleRegistration, ModuleStatus
from corral.subjects import Subjects

__all__ = ["ReadinessGate"]

log = logging.getLogger("corral.orchestrator")

_encode = msgspec.json.Encoder().encode


class _Ack(msgspec.Struct):
    success: bool
    payload: ModuleStatus | None = None


_decode_ack = msgspec.json.Decoder(_Ack).decode


@dataclass(slots=True)
class Waiting:
    module: str
    depends_on: list[str]
    instances: set[str] = field(default_factory=set)
    since: float = field(default_factory=time.time)


class RegisterReply(msgspec.Struct):
    module: str
    instance: str
    depends_on: list[str]
    waiting_for: list[str]  # dependencies not known to be ready yet


class ReadinessGate:
    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        *,
        interval: float = 0.5,
        status_wait: float = 0.25,
        is_up: Callable[[str], bool | None] | None = None,
        on_told: Callable[[str], None] | None = None,
        on_ack: Callable[[str, str, float], None] | None = None,
    ) -> None:
        """`is_up(module)`: the lifecycle's answer for a module it manages, None for others;
        `on_told(module)` runs after each `ready` sent, `on_ack(module, instance, started)` for
        each instance's answer to it."""
        self.is_up = is_up
        self.on_told = on_told
        self.on_ack = on_ack
        self._acks: Subscription | None = None
        self.nc = nc
        self.subjects = subjects
        self.interval = interval
        self.status_wait = status_wait
        self.waiting: dict[str, Waiting] = {}
        self._ready_deps: set[str] = set()  # dependencies found ready in the last check
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="readiness-gate")

    async def stop(self) -> None:
        if self._acks is not None:
            with contextlib.suppress(Exception):
                await self._acks.unsubscribe()
            self._acks = None
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def register(self, reg: ModuleRegistration) -> RegisterReply:
        if not reg.depends_on:
            await self._tell_ready(reg.module, [])
            return RegisterReply(reg.module, reg.instance, [], [])
        waiting = self.waiting.get(reg.module)
        if waiting is None or waiting.depends_on != reg.depends_on:
            waiting = self.waiting[reg.module] = Waiting(reg.module, list(reg.depends_on))
            log.info("module %s waits for %s", reg.module, ", ".join(reg.depends_on))
        waiting.instances.add(reg.instance)
        self._wake.set()
        pending = [dep for dep in reg.depends_on if dep not in self._ready_deps]
        return RegisterReply(reg.module, reg.instance, list(reg.depends_on), pending)

    async def _on_ack(self, msg: Msg) -> None:
        try:
            reply = _decode_ack(msg.data)
        except msgspec.DecodeError:
            return
        if reply.success and reply.payload is not None and reply.payload.ready and self.on_ack is not None:
            status = reply.payload
            self.on_ack(status.module, status.instance, status.started)

    def wake(self) -> None:
        """Check now (a dependency may have changed state)."""
        if self.waiting:
            self._wake.set()

    def snapshot(self) -> dict[str, list[str]]:
        """Waiting module -> its dependencies."""
        return {name: list(w.depends_on) for name, w in sorted(self.waiting.items())}

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            try:
                await self.check()
            except Exception as exc:  # NATS reconnecting: try again next round
                log.warning("readiness check failed: %r", exc)

    async def check(self) -> None:
        """Tell every waiting module whose dependencies are all ready."""
        if not self.waiting:
            return
        deps = sorted({dep for w in self.waiting.values() for dep in w.depends_on})
        ready = await asyncio.gather(*(self._is_ready(dep) for dep in deps))
        self._ready_deps = {dep for dep, ok in zip(deps, ready, strict=True) if ok}
        for name, waiting in list(self.waiting.items()):
            if all(dep in self._ready_deps for dep in waiting.depends_on):
                del self.waiting[name]
                await self._tell_ready(name, waiting.depends_on)

    async def _is_ready(self, dep: str) -> bool:
        managed = self.is_up(dep) if self.is_up is not None else None
        if managed is not None:
            return managed
        prefix = self.subjects.prefix
        statuses = await module_statuses(self.nc, prefix, dep, wait=self.status_wait, until_ready=True)
        if statuses:
            return any(status.ready for status in statuses)
        # No status answer: a module of another kind (no status verb) is ready once registered.
        status_subject = self.subjects.modctl(dep, "status")
        return any(
            info.role == "module" and all(e.subject != status_subject for e in info.endpoints)
            for info in await discover(self.nc, prefix, wait=0.1, name=dep)
        )

    async def _tell_ready(self, module: str, depends_on: list[str]) -> None:
        log.info("module %s: dependencies ready (%s); telling it to serve", module, ", ".join(depends_on))
        if self._acks is None:
            # Every instance answers `ready` with its status; one inbox collects the answers.
            self._acks = await self.nc.subscribe(self.nc.new_inbox(), cb=self._on_ack)
        await self.nc.publish(
            self.subjects.modctl(module, "ready"),
            _encode({"dependencies": depends_on}),
            reply=self._acks.subject,
        )
        if self.on_told is not None:
            self.on_told(module)
