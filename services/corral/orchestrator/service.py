"""The orchestrator service: the mediated call path and a view of what runs."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from corral.discovery import discover, module_types
from corral.orchestrator.router import CallRouter
from corral.runtime import RequestContext, Service, ServiceSettings

__all__ = ["OrchestratorService"]

DEFAULT_CALL_TIMEOUT = 30.0


class ModuleSummary(msgspec.Struct):
    name: str
    instances: int
    types: list[str]
    version: str


class OrchestratorService(Service):
    def __init__(
        self, settings: ServiceSettings | None = None, *, call_timeout: float = DEFAULT_CALL_TIMEOUT
    ) -> None:
        super().__init__(
            "orchestrator", settings=settings, description="corral orchestrator: module calls and lifecycle"
        )
        self.call_timeout = call_timeout
        self.router: CallRouter | None = None

    async def setup(self) -> None:
        self.router = CallRouter(
            self.nc,
            self.subjects,
            default_timeout=self.call_timeout,
            max_request_bytes=self.settings.max_request_bytes,
        )
        self.add_endpoint("send", self.subjects.send_all, self.router.handle, response_type="send")
        self.endpoint("status")(self._status)
        self.endpoint("modules")(self._modules)

    async def _status(self, _: None, ctx: RequestContext) -> dict[str, Any]:
        assert self.router is not None
        return {
            "service": self.name,
            "instance": self.instance,
            "version": self.version,
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "routed": {
                module: {
                    "calls": s.calls,
                    "successes": s.successes,
                    "errors": s.errors,
                    "mean_ms": round(1000 * s.total_seconds / s.calls, 3) if s.calls else 0.0,
                }
                for module, s in sorted(self.router.stats.items())
            },
        }

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
