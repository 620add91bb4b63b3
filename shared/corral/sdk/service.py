"""`ModuleService`: the Service that serves one Module's handlers and control verbs.

Per call: the readiness gate (UNAVAILABLE until the orchestrator's `ready`, without decoding the
payload or running the handler), then the handler's own concurrency slot, then a slot under
the module-wide throttle, all within the handler's timeout (TIMEOUT when it passes).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import msgspec
import nats.errors
from nats.aio.msg import Msg

from corral.component import cancel_and_wait
from corral.errors import CallTimeoutError
from corral.protocol import ErrorCode, ModuleRegistration, codec_for
from corral.runtime import Reply, RequestContext, Service, ServiceSettings, error_reply
from corral.runtime.direct import DIRECT_REPLY_METADATA, direct_reply_enabled
from corral.runtime.endpoints import RawHandler, typed_handler
from corral.sdk.control import add_control_endpoints, call_hook
from corral.sdk.limits import Limiter
from corral.sdk.live_config import LiveConfigFollower

if TYPE_CHECKING:
    from corral.sdk.module import Handler, Module

__all__ = ["ModuleService"]

log = logging.getLogger("corral.sdk")

REGISTER_RETRY = 1.0  # seconds between registrations until an orchestrator answers
REREGISTER_EVERY = 5.0  # seconds between registrations while answered but not yet ready
DEREGISTER_WAIT = 1.0  # seconds a clean shutdown waits for the orchestrator's answer


class ModuleService(Service):
    role = "module"
    has_control_verbs = True

    def __init__(
        self,
        module: Module,
        settings: ServiceSettings | None = None,
        *,
        wait_for_ready: bool = False,
        owns_process: bool = False,
    ) -> None:
        super().__init__(
            module.name, version=module.version, settings=settings, description=module.description
        )
        self.module = module
        self.wait_for_ready = wait_for_ready
        # True under `module.run()`: `stop` ends the process and `restart` re-executes it;
        # otherwise (in-process) they stop, or stop and start, this service.
        self.owns_process = owns_process
        self.exec_on_exit = False  # set by restart/reset when owns_process: run() then re-execs
        self.reset_pending = False  # run the module's on_reset hooks in the next teardown
        self.ready = not wait_for_ready
        self.throttle = Limiter()
        self._limiters: dict[str, Limiter] = {}
        self._registrar: asyncio.Task[None] | None = None
        self._control_tasks: set[asyncio.Task[None]] = set()
        self._live_config: LiveConfigFollower | None = None

    # --- lifecycle -----------------------------------------------------------------------------
    async def setup(self) -> None:
        self.ready = not self.wait_for_ready
        if self.owns_process and os.environ.pop("CORRAL_RESET", "") == "1":
            # Relaunched by the orchestrator's restart_with_reset strategy: clear state first.
            # Popped, so a later re-exec (the `restart` verb) does not reset again.
            for reset_hook in self.module.reset_hooks:
                await call_hook(reset_hook)
            log.info("module %s reset before serving (CORRAL_RESET=1)", self.name)
        for hook in self.module.start_hooks:
            await call_hook(hook, self)
        # Before serving: a (re)started instance runs the live config, and follows it from here.
        self._live_config = LiveConfigFollower(self)
        await self._live_config.start()
        direct = direct_reply_enabled()
        for handler in self.module.handlers.values():
            self.add_endpoint(
                handler.type,
                self.subjects.module(self.module.name, handler.type),
                self._gated(handler),
                response_type=handler.type,
                metadata={
                    "idempotent": "true" if handler.idempotent else "false",
                    # tells the orchestrator (corral.runtime.direct)
                    DIRECT_REPLY_METADATA: "true" if direct else "false",
                },
                direct_reply=direct,
            )
        add_control_endpoints(self)

    async def start(self) -> None:
        await super().start()
        if not self.ready and self._registrar is None:
            self._registrar = asyncio.create_task(self._register_loop(), name=f"{self.name}-register")

    async def teardown(self) -> None:
        if self._live_config is not None:
            await self._live_config.stop()
        if self._registrar is not None:
            await cancel_and_wait(self._registrar)
            self._registrar = None
            await self._deregister()
        if self.reset_pending:
            self.reset_pending = False
            for hook in self.module.reset_hooks:
                await call_hook(hook)
            log.info("module %s reset", self.name)

    def after_reply(self, action: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `action` once the current request has been answered (stop drains it first)."""
        task = asyncio.create_task(action())
        self._control_tasks.add(task)
        task.add_done_callback(self._control_tasks.discard)

    async def shut_down(self) -> None:
        """The `stop` verb: drain and stop; under `module.run()` the process then exits 0."""
        await self.stop()

    async def restart_instance(self, *, reset: bool) -> None:
        """The `restart` / `reset` verbs: drain, (reset,) then re-exec the process under
        `module.run()`, or start this service again in-process."""
        self.reset_pending = reset
        if self.owns_process:
            self.exec_on_exit = True
            await self.stop()
        else:
            await self.restart()

    async def mark_ready(self) -> None:
        if self.ready:
            return
        self.ready = True
        log.info("module %s: dependencies are ready; serving", self.name)

    # --- readiness -----------------------------------------------------------------------------
    def waiting_message(self) -> str:
        deps = self.module.depends_on
        if deps:
            return f"module {self.name!r} is waiting for its dependencies ({', '.join(deps)}) to be ready"
        return (
            f"module {self.name!r} is waiting for the orchestrator to tell it to serve "
            f"({self.subjects.modctl(self.name, 'ready')}); run it with --no-wait to serve without one"
        )

    def readiness(self) -> tuple[bool, str]:
        ready, reason = super().readiness()
        if not ready and reason.startswith("waiting"):
            return False, self.waiting_message()
        return ready, reason

    async def _register_loop(self) -> None:
        registration = ModuleRegistration(
            module=self.name,
            instance=self.instance,
            version=self.version,
            depends_on=list(self.module.depends_on),
            types=sorted(self.module.handlers),
            heartbeat_interval=self.settings.heartbeat_interval,
        )
        body = msgspec.json.encode(registration)
        subject = self.subjects.service("orchestrator", "register")
        answered = False
        warned = False
        while not self.ready:
            try:
                reply = await self.nc.request(subject, body, timeout=REGISTER_RETRY)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                if not warned:
                    log.warning(
                        "module %s: no orchestrator answers %s; retrying every %gs "
                        "(start with --no-wait to serve without one)",
                        self.name,
                        subject,
                        REGISTER_RETRY,
                    )
                    warned = True
                answered = False
            except Exception as exc:  # reconnecting: try again
                log.warning("module %s: registration failed: %r", self.name, exc)
                answered = False
            else:
                refused = _refusal(reply.data)
                if refused and not answered:  # e.g. a dependency cycle: it waits until fixed
                    log.error("module %s: the orchestrator refused the registration: %s", self.name, refused)
                elif not answered:
                    log.info("registered with the orchestrator; %s", self.waiting_message())
                answered = True
            await asyncio.sleep(REREGISTER_EVERY if answered else REGISTER_RETRY)

    async def _deregister(self) -> None:
        """A clean shutdown tells the orchestrator this instance is leaving (a self-started
        module whose last instance leaves becomes stopped there, not failed). Best effort and
        short: with no orchestrator, or none leading, the shutdown does not wait for one."""
        body = msgspec.json.encode({"module": self.name, "instance": self.instance})
        try:
            await self.nc.request(
                self.subjects.service("orchestrator", "deregister"), body, timeout=DEREGISTER_WAIT
            )
        except Exception as exc:  # no orchestrator, or not now: it notices the missing heartbeats
            log.info("module %s: could not deregister: %r", self.name, exc)

    # --- handlers ------------------------------------------------------------------------------
    def _gated(self, handler: Handler) -> RawHandler:
        """The readiness gate in front of the typed handler: until ready, UNAVAILABLE."""
        typed = typed_handler(
            handler.type, handler.payload_type, self._limited(handler), self.settings.max_request_bytes
        )

        async def handle(msg: Msg) -> Reply:
            if not self.ready:
                return error_reply(
                    codec_for(msg.headers), handler.type, ErrorCode.UNAVAILABLE, self.waiting_message()
                )
            return await typed(msg)

        return handle

    def _limited(self, handler: Handler) -> Callable[[Any, RequestContext], Awaitable[Any]]:
        func = handler.func
        wants_context = handler.wants_context
        limiter = self._limiters.setdefault(handler.type, Limiter(handler.concurrency))
        throttle = self.throttle
        timeout = handler.timeout

        async def run(payload: Any, ctx: RequestContext) -> Any:
            # `async with limiter, throttle`, without its six coroutines when there is room.
            if not limiter.try_acquire():
                await limiter.acquire()
            try:
                if not throttle.try_acquire():
                    await throttle.acquire()
                try:
                    return await (func(payload, ctx) if wants_context else func(payload))
                finally:
                    if throttle.release_nowait():
                        await throttle.wake()
            finally:
                if limiter.release_nowait():
                    await limiter.wake()

        if timeout is None:
            return run

        async def run_with_timeout(payload: Any, ctx: RequestContext) -> Any:
            deadline = asyncio.timeout(timeout)
            try:
                async with deadline:
                    return await run(payload, ctx)
            except TimeoutError as exc:
                if not deadline.expired():
                    raise
                raise CallTimeoutError(
                    f"{self.name}.{handler.type} did not finish within its timeout of {timeout:g}s"
                ) from exc

        return run_with_timeout


def _refusal(data: bytes) -> str:
    """The errors of a refused reply ("" when it succeeded or is not a Response)."""
    try:
        reply = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return ""
    if not isinstance(reply, dict) or reply.get("success", True):
        return ""
    payload = reply.get("payload")
    errors = payload.get("errors") if isinstance(payload, dict) else None
    return "; ".join(map(str, errors)) if isinstance(errors, list) else str(payload)
