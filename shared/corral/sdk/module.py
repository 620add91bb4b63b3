"""`Module`: what a module author writes handlers and hooks on.

    module = Module("interpreter", version="1.0.0", depends_on=["state"])

    class EvalRequest(msgspec.Struct):
        code: str

    @module.handler("eval", concurrency=8, timeout=5.0)
    async def eval_(req: EvalRequest) -> Any: ...

    @module.on_degrade
    async def degrade(degraded: bool, reason: str) -> None: ...   # turn features off / on

    @module.on_config
    async def configure(config: Settings) -> None: ...            # Settings: a msgspec Struct

    @module.on_reset
    async def reset() -> None: ...                                # clear state and queues

    @module.health_check("db")
    async def db_reachable() -> bool: ...                         # False or raising: failing

    if __name__ == "__main__":
        module.run()                                              # `--no-wait`: serve at once

Each handler answers `<prefix>.mod.<module>.<type>` in the module's queue group, so several
instances share the load. A payload of the wrong shape gets a VALIDATION reply naming the
field; an exception in the handler gets a MODULE_ERROR reply and the module keeps serving.
`concurrency=` caps the calls of one handler running at once (the rest wait); `timeout=` answers
TIMEOUT when a call (waiting included) takes longer. Every instance also answers the control
verbs `<prefix>.modctl.<module>.<verb>` (see corral.sdk.control).

Readiness: run by `module.run()`, the module registers with the orchestrator and serves only
once told its dependencies are ready (`--no-wait` skips that). In-process
(`async with module.service(settings)`, as in tests) it serves at once unless given
`wait_for_ready=True`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import logging
import os
import sys
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import msgspec

from corral.errors import CallTimeoutError
from corral.runtime import ServiceSettings, run_forever
from corral.sdk.service import ModuleService
from corral.subjects import validate_token

__all__ = ["Handler", "Module", "ModuleService"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

log = logging.getLogger("corral.sdk")


@dataclass(frozen=True, slots=True)
class Handler:
    type: str
    payload_type: Any
    func: Callable[..., Awaitable[Any]]
    wants_context: bool
    idempotent: bool
    concurrency: int | None = None  # calls of this handler running at once; None: no cap
    timeout: float | None = None  # seconds per call, waiting for a slot included; None: none


class Module:
    def __init__(
        self,
        name: str,
        *,
        version: str = "0.1.0",
        description: str = "",
        depends_on: list[str] | None = None,
        capabilities: list[str] | None = None,
    ) -> None:
        self.name = validate_token(name, "module name")
        self.version = version
        self.description = description or f"corral module {name}"
        # Dependencies declared in code, plus those the launcher passes (corral.toml's
        # `depends_on`, or a Kubernetes manifest) in CORRAL_DEPENDS_ON="a,b".
        from_env = [d.strip() for d in os.environ.get("CORRAL_DEPENDS_ON", "").split(",") if d.strip()]
        declared = [*(depends_on or []), *(d for d in from_env if d not in (depends_on or []))]
        self.depends_on = [validate_token(dep, "dependency name") for dep in declared]
        self.capabilities = list(capabilities or [])
        self.handlers: dict[str, Handler] = {}
        self.degraded = False  # set by the `degrade` control verb; handlers may consult it
        self.degraded_reason = ""
        self.config: Any = None  # the config last accepted by the `config` verb (or its defaults)
        self.config_type: Any = None  # the annotation of the @on_config hook's parameter
        self.config_version = 0  # how many configs were accepted
        # One config change at a time, in arrival order: a slow hook cannot finish after a later change.
        self.config_lock = asyncio.Lock()
        self.start_hooks: list[Callable[[ModuleService], Any]] = []
        self.degrade_hooks: list[Callable[[bool, str], Any]] = []
        self.reset_hooks: list[Callable[[], Any]] = []
        self.config_hooks: list[Callable[[Any], Any]] = []
        self.health_checks: dict[str, Callable[[], Any]] = {}
        self.health_check_timeouts: dict[str, float] = {}

    # --- handlers ------------------------------------------------------------------------------
    def handler(
        self,
        type_: str,
        *,
        idempotent: bool = False,
        concurrency: int | None = None,
        timeout: float | None = None,
    ) -> Callable[[F], F]:
        """Register `async def f(payload: T[, ctx: RequestContext])` for message type `type_`.

        The payload is decoded into the annotation of the first parameter (a msgspec Struct,
        dict, ...); leave it unannotated to receive the decoded JSON as is. `idempotent=True`
        declares that running a message twice is harmless, which lets callers ask the
        orchestrator to retry it (`retries` in the Envelope). `concurrency` caps how many calls
        of this handler run at once per instance (the rest wait); `timeout` answers TIMEOUT to a
        call not done within that many seconds (waiting for a slot included).
        """
        validate_token(type_, "message type")
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"concurrency of handler {type_!r} must be at least 1, got {concurrency}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout of handler {type_!r} must be positive seconds, got {timeout}")

        def register(func: F) -> F:
            if not inspect.iscoroutinefunction(cast(Any, func)):  # cast: keep F un-narrowed
                raise TypeError(f"handler for {type_!r} must be `async def`, got {func!r}")
            if type_ in self.handlers:
                raise ValueError(f"module {self.name!r} already has a handler for {type_!r}")
            params = list(inspect.signature(func).parameters.values())
            if not 1 <= len(params) <= 2:
                raise TypeError(
                    f"handler for {type_!r} takes (payload) or (payload, ctx), not {len(params)} params"
                )
            hints = typing.get_type_hints(func)
            payload_type = hints.get(params[0].name, Any)
            self.handlers[type_] = Handler(
                type_,
                payload_type,
                func,
                wants_context=len(params) == 2,
                idempotent=idempotent,
                concurrency=concurrency,
                timeout=timeout,
            )
            return func

        return register

    async def execute_with_timeout(self, awaitable: Awaitable[T], seconds: float) -> T:
        """Await `awaitable`, or cancel it after `seconds` and raise CallTimeoutError (a TIMEOUT
        reply when it escapes a handler)."""
        deadline = asyncio.timeout(seconds)
        try:
            async with deadline:
                return await awaitable
        except TimeoutError as exc:
            if not deadline.expired():
                raise  # the awaitable's own timeout, not ours
            raise CallTimeoutError(
                f"module {self.name!r}: the operation did not finish within {seconds:g}s"
            ) from exc

    # --- hooks ---------------------------------------------------------------------------------
    def on_start(self, func: F) -> F:
        """`f(service)` runs after connecting to NATS, before any request is served."""
        self.start_hooks.append(func)
        return func

    def on_degrade(self, func: F) -> F:
        """`f(degraded: bool, reason: str)` runs on every `degrade` control verb."""
        self.degrade_hooks.append(func)
        return func

    def on_reset(self, func: F) -> F:
        """`f()` runs on the `reset` control verb, after in-flight calls finished: clear state."""
        self.reset_hooks.append(func)
        return func

    def on_config(self, func: F) -> F:
        """`f(config: T)` runs on the `config` control verb with the payload decoded into `T`
        (the annotation of its parameter, a msgspec Struct). Raising rejects the config and
        keeps the old one. `module.config` starts as `T()` when every field has a default."""
        params = list(inspect.signature(func).parameters.values())
        if len(params) != 1:
            raise TypeError(f"an on_config hook takes (config), not {len(params)} params")
        config_type = typing.get_type_hints(func).get(params[0].name, Any)
        if self.config_type is not None and config_type is not self.config_type:
            raise TypeError(
                f"module {self.name!r} already has config type {self.config_type!r}; "
                f"every on_config hook must take the same type"
            )
        self.config_type = config_type
        if self.config is None:
            # Required fields: no config until the first `config` verb.
            with contextlib.suppress(msgspec.ValidationError):
                self.config = msgspec.convert({}, config_type)
        self.config_hooks.append(func)
        return func

    def health_check(self, name: str, *, timeout: float = 2.0) -> Callable[[F], F]:
        """Register a check `f()` (plain or `async def`) run by the `health` control verb, which
        the health service calls on every check round. Returning False or raising fails it; a
        check running longer than `timeout` seconds fails with a timeout."""
        validate_token(name, "health check name")
        if name in self.health_checks:
            raise ValueError(f"module {self.name!r} already has a health check named {name!r}")

        def register(func: F) -> F:
            self.health_checks[name] = func
            self.health_check_timeouts[name] = timeout
            return func

        return register

    # --- serving -------------------------------------------------------------------------------
    def service(
        self, settings: ServiceSettings | None = None, *, wait_for_ready: bool = False
    ) -> ModuleService:
        """The Service that serves this module; `async with module.service():` in tests.

        `wait_for_ready=True` registers with the orchestrator and answers UNAVAILABLE until it
        says the dependencies are ready (what `run()` does); the default serves at once.
        """
        return ModuleService(self, settings, wait_for_ready=wait_for_ready)

    def run(self, settings: ServiceSettings | None = None, *, argv: list[str] | None = None) -> None:
        """Serve until SIGTERM or the `stop` control verb (the `__main__` of a module).

        Reads `--no-wait` from `argv` (default: the command line; other arguments are left to
        the author): serve at once instead of waiting for the orchestrator's `ready`. After the
        `restart` or `reset` control verb the process re-executes itself.
        """
        parser = argparse.ArgumentParser(prog=self.name, add_help=False)
        parser.add_argument("--no-wait", action="store_true")
        args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
        service = ModuleService(self, settings, wait_for_ready=not args.no_wait, owns_process=True)
        run_forever(service)
        if service.exec_on_exit:
            log.info("module %s re-executing itself", self.name)
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            # orig_argv keeps interpreter options and `-m package`, which sys.argv loses.
            os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
