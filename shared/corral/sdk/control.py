"""The control verbs every SDK module instance answers: `<prefix>.modctl.<module>.<verb>`.

Each instance subscribes in a queue group of its own, so a publish (or a request) reaches every
instance; a request gets the first instance's reply. A `Corral-Instance: <instance>` header
addresses one instance: the others ignore the message (the orchestrator restarts or resets only
the instance that failed). Every verb answers a Response like any endpoint, and a body of the
wrong shape gets VALIDATION naming the field.

| verb | body | does |
|---|---|---|
| ready | `{"dependencies"?}` | the orchestrator's go-ahead: the handlers start serving |
| stop | empty | reply, drain, stop (the process exits 0 under `module.run()`) |
| restart | empty | reply, drain, re-exec the process (in-process: stop, then start) |
| reset | empty | like restart, with the module's `on_reset` hooks run after draining |
| degrade | `{"reason"?, "on"?: true}` | sets `module.degraded`, calls the `on_degrade` hooks |
| throttle | `{"concurrency": int or null}` | caps concurrent handler calls of the instance (null: no cap) |
| config | the module's config Struct | validates, calls the `on_config` hooks, then `module.config` |
| schema | empty | `{module, instance, module_version, typed, schema, config_version, config}` (JSON Schema) |
| status | empty | `{module, instance, pid, started, ready, degraded, throttle, config_version, in_flight}` |
| health | empty | runs `@module.health_check`s: `{module, instance, checks: {name: {ok, error}}, throttle}` |
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from nats.aio.msg import Msg

from corral.errors import CorralError, ValidationError
from corral.live_config import CONFIG_VERSION_HEADER, ConfigSchema
from corral.protocol import INSTANCE_HEADER, CheckResult, ModuleHealth, ModuleStatus
from corral.runtime import RequestContext
from corral.runtime.endpoints import typed_handler

if TYPE_CHECKING:
    from corral.sdk.module import Module
    from corral.sdk.service import ModuleService

__all__ = [
    "CONTROL_VERBS", "Degrade", "Ready", "Throttle", "add_control_endpoints", "apply_config", "call_hook",
    "config_schema",
]  # fmt: skip

log = logging.getLogger("corral.sdk")

CONTROL_VERBS = (
    "ready", "stop", "restart", "reset", "degrade", "throttle", "config", "schema", "status", "health",
)  # fmt: skip


class Ready(msgspec.Struct, forbid_unknown_fields=True):
    dependencies: list[str] = []


class Degrade(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=1000)] = ""
    on: bool = True


class Throttle(msgspec.Struct, forbid_unknown_fields=True):
    concurrency: Annotated[int, msgspec.Meta(ge=1)] | None


class Action(msgspec.Struct):
    module: str
    instance: str
    action: str


class ConfigReply(msgspec.Struct):
    config_version: int
    config: Any


async def call_hook(hook: Callable[..., Any], *args: Any) -> None:
    """Hooks may be plain or `async def`."""
    result = hook(*args)
    if inspect.isawaitable(result):
        await result


async def apply_config(module: Module, config: Any, version: int | None = None) -> None:
    """Run the `on_config` hooks, then make `config` the module's (as `version`, else the next).

    A hook raising rejects it with VALIDATION and the module keeps its config."""
    async with module.config_lock:
        for hook in module.config_hooks:
            try:
                await call_hook(hook, config)
            except CorralError:
                raise
            except Exception as exc:
                raise ValidationError(
                    f"config rejected by {getattr(hook, '__name__', 'on_config')}: {exc}; "
                    f"the module keeps config version {module.config_version}"
                ) from exc
        module.config = config
        module.config_version = module.config_version + 1 if version is None else version
        log.info("module %s: config version %d applied", module.name, module.config_version)


def status_of(service: ModuleService) -> ModuleStatus:
    module = service.module
    return ModuleStatus(
        module=module.name,
        instance=service.instance,
        pid=os.getpid(),
        started=service.started_at,
        ready=service.readiness()[0],
        degraded=module.degraded,
        degraded_reason=module.degraded_reason,
        throttle=service.throttle.limit,
        config_version=module.config_version,
        in_flight=service.in_flight,
    )


def config_schema(service: ModuleService) -> ConfigSchema:
    """The module's config type as JSON Schema (any object when it has no `on_config` hook)."""
    module = service.module
    typed = module.config_type is not None
    try:
        schema = msgspec.json.schema(module.config_type if typed else dict[str, Any])
    except TypeError:  # a type msgspec cannot describe: the module itself still checks it
        schema = {}
    return ConfigSchema(
        module=module.name, instance=service.instance, module_version=module.version, typed=typed,
        schema=schema, config_version=module.config_version, config=module.config,
    )  # fmt: skip


class ControlVerbs:
    """The handlers of the control verbs of one ModuleService instance."""

    def __init__(self, service: ModuleService) -> None:
        self.service = service
        self.module = service.module

    def _action(self, action: str) -> Action:
        log.info("module %s: %s requested", self.module.name, action)
        return Action(self.module.name, self.service.instance, action)

    async def ready(self, _req: Ready, _ctx: RequestContext) -> ModuleStatus:
        await self.service.mark_ready()
        return status_of(self.service)

    async def stop(self, _: None, _ctx: RequestContext) -> Action:
        self.service.after_reply(self.service.shut_down)
        return self._action("stop")

    async def restart(self, _: None, _ctx: RequestContext) -> Action:
        self.service.after_reply(lambda: self.service.restart_instance(reset=False))
        return self._action("restart")

    async def reset(self, _: None, _ctx: RequestContext) -> Action:
        self.service.after_reply(lambda: self.service.restart_instance(reset=True))
        return self._action("reset")

    async def degrade(self, req: Degrade, _ctx: RequestContext) -> ModuleStatus:
        module = self.module
        module.degraded = req.on
        module.degraded_reason = req.reason if req.on else ""
        log.warning("module %s %s: %s", module.name, "degraded" if req.on else "restored", req.reason)
        for hook in module.degrade_hooks:
            await call_hook(hook, req.on, req.reason)
        return status_of(self.service)

    async def throttle(self, req: Throttle, _ctx: RequestContext) -> ModuleStatus:
        await self.service.throttle.set_limit(req.concurrency)
        log.info("module %s: at most %s concurrent calls", self.module.name, req.concurrency or "unlimited")
        return status_of(self.service)

    async def config(self, req: Any, ctx: RequestContext) -> ConfigReply:
        # The orchestrator names the stored version it applies; a bare request counts up.
        version = ctx.headers.get(CONFIG_VERSION_HEADER, "")
        await apply_config(self.module, req, int(version) if version.isdigit() else None)
        return ConfigReply(self.module.config_version, req)

    async def schema(self, _: None, _ctx: RequestContext) -> ConfigSchema:
        return config_schema(self.service)

    async def status(self, _: None, _ctx: RequestContext) -> ModuleStatus:
        return status_of(self.service)

    async def health(self, _: None, _ctx: RequestContext) -> ModuleHealth:
        names = list(self.module.health_checks)
        results = await asyncio.gather(*(self._check(name) for name in names))
        return ModuleHealth(
            self.module.name, self.service.instance, dict(zip(names, results, strict=True)),
            self.service.throttle.limit,
        )  # fmt: skip

    async def _check(self, name: str) -> CheckResult:
        timeout = self.module.health_check_timeouts.get(name, 2.0)
        try:
            async with asyncio.timeout(timeout):
                result = self.module.health_checks[name]()
                if inspect.isawaitable(result):
                    result = await result
        except TimeoutError:
            return CheckResult(False, f"did not finish within {timeout:g}s")
        except Exception as exc:
            return CheckResult(False, f"{type(exc).__name__}: {exc}")
        if result is False:
            return CheckResult(False, "returned False")
        return CheckResult(True)


def add_control_endpoints(service: ModuleService) -> None:
    """Add every control verb to `service`, each in a queue group of the instance's own."""
    verbs = ControlVerbs(service)
    module = service.module
    config_type = module.config_type if module.config_type is not None else dict[str, Any]
    payload_types: dict[str, Any] = {
        "ready": Ready,
        "degrade": Degrade,
        "throttle": Throttle,
        "config": config_type,
    }
    own_group = service.subjects.queue_group(f"{module.name}-{service.instance}")
    elsewhere = _addressed_elsewhere(service.instance)
    for verb in CONTROL_VERBS:
        service.add_endpoint(
            f"modctl-{verb}",
            service.subjects.modctl(module.name, verb),
            typed_handler(
                verb, payload_types.get(verb), getattr(verbs, verb), service.settings.max_request_bytes
            ),
            response_type=verb,
            queue_group=own_group,
            accept=elsewhere,
        )


def _addressed_elsewhere(instance: str) -> Callable[[Msg], bool]:
    """An `accept` hook that takes (and drops) a verb whose Corral-Instance header names another
    instance: that one answers it, this one neither acts nor replies."""

    def accept(msg: Msg) -> bool:
        headers = msg.headers
        return headers is not None and headers.get(INSTANCE_HEADER, instance) != instance

    return accept
