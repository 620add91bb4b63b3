"""Which modules run and which message types they handle, from the NATS Services API.

Asked only off the hot path (a NOT_FOUND to explain, a retry to allow), cached briefly, and
one discovery at a time however many callers ask.
"""

from __future__ import annotations

import asyncio
import time

from nats.aio.client import Client

from corral.discovery import discover

__all__ = ["ModuleCatalog"]


class ModuleCatalog:
    def __init__(self, nc: Client, prefix: str, *, ttl: float = 5.0, wait: float = 0.3) -> None:
        self.nc = nc
        self.prefix = prefix
        self.ttl = ttl
        self.wait = wait
        self._types: dict[str, dict[str, bool]] = {}  # module -> message type -> idempotent
        self._seen: set[str] = set()
        self._fetched_at = -float("inf")
        self._lock = asyncio.Lock()

    async def refresh(self, *, max_age: float = 0.0) -> dict[str, set[str]]:
        """Module -> message types, from a discovery at most `max_age` seconds old."""
        async with self._lock:
            if time.monotonic() - self._fetched_at > max_age:
                await self._discover()
        return {module: set(types) for module, types in self._types.items()}

    async def is_idempotent(self, module: str, type_: str) -> bool:
        await self.refresh(max_age=self.ttl)
        return self._types.get(module, {}).get(type_, False)

    def was_seen(self, module: str) -> bool:
        return module in self._seen

    async def _discover(self) -> None:
        marker = f"{self.prefix}.mod."
        types: dict[str, dict[str, bool]] = {}
        for info in await discover(self.nc, self.prefix, wait=self.wait):
            if info.role != "module":
                continue
            module = types.setdefault(info.name, {})
            for endpoint in info.endpoints:
                if endpoint.subject.startswith(marker):
                    idempotent = (endpoint.metadata or {}).get("idempotent") == "true"
                    module[endpoint.subject.rsplit(".", 1)[1]] = idempotent
        self._types = types
        self._seen.update(types)
        self._fetched_at = time.monotonic()
