"""Event subscription by message type, at no cost to the call path while nobody subscribes.

A subscriber (the SDK's `client.subscribe("eval", handler)`) asks
`<prefix>.orchestrator.subscribe` for a lease on a type and renews it; while any lease on
a type is live the router republishes routed messages of that type on
`<prefix>.evt.message.<type>`. The router's check is one set lookup on an empty set.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from corral.component import cancel_and_wait

__all__ = ["Subscriptions"]


class _Router(Protocol):
    watched_types: set[str]


class Subscriptions:
    def __init__(self, sweep_every: float = 1.0) -> None:
        self.router: _Router | None = None
        self.sweep_every = sweep_every
        self._leases: dict[str, float] = {}  # type -> monotonic expiry
        self._sweeper: asyncio.Task[None] | None = None

    def add(self, type_: str, ttl: float) -> float:
        expiry = time.monotonic() + ttl
        self._leases[type_] = max(self._leases.get(type_, 0.0), expiry)
        self.sweep()
        return ttl

    def sweep(self) -> None:
        now = time.monotonic()
        for type_, expiry in list(self._leases.items()):
            if expiry <= now:
                del self._leases[type_]
        if self.router is not None:
            self.router.watched_types = set(self._leases)

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="subscription-sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            await cancel_and_wait(self._sweeper)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_every)
            self.sweep()
