"""The scheduler service process. Its domain endpoints arrive with its own issue; today it
registers, heartbeats, exports metrics and answers `status`."""

from __future__ import annotations

from typing import Any

from corral.runtime import RequestContext, Service, ServiceSettings

__all__ = ["SchedulerService"]


class SchedulerService(Service):
    def __init__(self, settings: ServiceSettings | None = None) -> None:
        super().__init__(
            "scheduler", settings=settings, description="corral scheduler: durable priority task queue"
        )

    async def setup(self) -> None:
        self.endpoint("status")(self._status)

    async def _status(self, _: None, ctx: RequestContext) -> dict[str, Any]:
        return self.identity()
