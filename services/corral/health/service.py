"""The health service process: listens to every heartbeat and answers who is alive."""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from corral.health.registry import InstanceRegistry, InstanceView
from corral.protocol import Heartbeat
from corral.runtime import RequestContext, Service, ServiceSettings

__all__ = ["HealthService"]

log = logging.getLogger("corral.health")


class HealthService(Service):
    def __init__(self, settings: ServiceSettings | None = None) -> None:
        super().__init__(
            "health", settings=settings, description="corral health: heartbeats and system health"
        )
        self.registry = InstanceRegistry(interval=self.settings.heartbeat_interval)
        self._decoder = msgspec.json.Decoder(Heartbeat)
        self._subscription: Subscription | None = None

    async def setup(self) -> None:
        self._subscription = await self.nc.subscribe(self.subjects.heartbeats_all, cb=self._on_heartbeat)
        self.endpoint("status")(self._status)
        self.endpoint("instances")(self._instances)
        self.metrics.add_gauge_callback(
            "instances_alive",
            "Instances whose heartbeat is current",
            lambda: sum(v.alive for v in self.registry.views()),
        )

    async def teardown(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            self.registry.record(self._decoder.decode(msg.data))
        except msgspec.DecodeError as exc:
            log.warning("ignoring malformed heartbeat on %s: %s", msg.subject, exc)

    async def _instances(self, _: None, ctx: RequestContext) -> list[InstanceView]:
        return self.registry.views()

    async def _status(self, _: None, ctx: RequestContext) -> dict[str, Any]:
        views = self.registry.views()
        by_name: dict[str, dict[str, Any]] = {}
        for view in views:
            entry = by_name.setdefault(
                view.service,
                {
                    "role": view.role,
                    "instances": 0,
                    "alive": 0,
                    "ready": 0,
                    "cpu_percent": 0.0,
                    "rss_bytes": 0,
                },
            )
            entry["instances"] += 1
            entry["alive"] += view.alive
            entry["ready"] += view.alive and view.ready
            entry["cpu_percent"] = round(entry["cpu_percent"] + view.cpu_percent, 1)
            entry["rss_bytes"] += view.rss_bytes
        healthy = all(e["alive"] > 0 for e in by_name.values())
        return {
            "status": "healthy" if healthy and by_name else ("unknown" if not by_name else "unhealthy"),
            "checked_at": time.time(),
            "services": by_name,
        }
