"""`Module`: what a module author writes handlers on.

    module = Module("interpreter", version="1.0.0")

    class EvalRequest(msgspec.Struct):
        code: str

    @module.handler("eval")
    async def eval_(req: EvalRequest) -> Any: ...

    if __name__ == "__main__":
        module.run()

Each handler answers `<prefix>.mod.<module>.<type>` in the module's queue group, so several
instances share the load. A payload of the wrong shape gets a VALIDATION reply naming the
field; an exception in the handler gets a MODULE_ERROR reply and the module keeps serving.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from corral.runtime import RequestContext, Service, ServiceSettings, run_forever
from corral.runtime.endpoints import typed_handler
from corral.subjects import validate_token

__all__ = ["Module", "ModuleService"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


@dataclass(frozen=True, slots=True)
class _Handler:
    type: str
    payload_type: Any
    func: Callable[..., Awaitable[Any]]
    wants_context: bool
    idempotent: bool


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
        self.depends_on = list(depends_on or [])
        self.capabilities = list(capabilities or [])
        self.handlers: dict[str, _Handler] = {}

    def handler(self, type_: str, *, idempotent: bool = False) -> Callable[[F], F]:
        """Register `async def f(payload: T[, ctx: RequestContext])` for message type `type_`.

        The payload is decoded into the annotation of the first parameter (a msgspec Struct,
        dict, ...); leave it unannotated to receive the decoded JSON as is. `idempotent=True`
        declares that running a message twice is harmless, which lets callers ask the
        orchestrator to retry it (`retries` in the Envelope).
        """
        validate_token(type_, "message type")

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
            self.handlers[type_] = _Handler(
                type_, payload_type, func, wants_context=len(params) == 2, idempotent=idempotent
            )
            return func

        return register

    def service(self, settings: ServiceSettings | None = None) -> ModuleService:
        """The Service that serves this module; `async with module.service():` in tests."""
        return ModuleService(self, settings)

    def run(self, settings: ServiceSettings | None = None) -> None:
        """Serve until SIGTERM (the `__main__` of a module)."""
        run_forever(self.service(settings))


class ModuleService(Service):
    role = "module"

    def __init__(self, module: Module, settings: ServiceSettings | None = None) -> None:
        super().__init__(
            module.name, version=module.version, settings=settings, description=module.description
        )
        self.module = module

    async def setup(self) -> None:
        for handler in self.module.handlers.values():
            self.add_endpoint(
                handler.type,
                self.subjects.module(self.module.name, handler.type),
                typed_handler(
                    handler.type, handler.payload_type, _adapt(handler), self.settings.max_request_bytes
                ),
                response_type=handler.type,
                metadata={"idempotent": "true" if handler.idempotent else "false"},
            )


def _adapt(handler: _Handler) -> Callable[[Any, RequestContext], Awaitable[Any]]:
    if handler.wants_context:
        return handler.func
    func = handler.func

    async def call(payload: Any, _ctx: RequestContext) -> Any:
        return await func(payload)

    return call
