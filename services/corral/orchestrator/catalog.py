"""Which modules run and which message types they handle, from the NATS Services API.

Asked only off the hot path (a NOT_FOUND to explain, a retry to allow), cached briefly, and
one discovery at a time however many callers ask. Whether a module answers directly
(corral.runtime.direct) is read on the hot path from the cache; a stale answer starts a
discovery in the background and the call goes on with what is known.
"""

from __future__ import annotations

import asyncio
import time

from nats.aio.client import Client

from corral.component import Component, cancel_and_wait
from corral.discovery import discover
from corral.runtime.direct import DIRECT_REPLY_METADATA

__all__ = ["ModuleCatalog"]


class ModuleCatalog(Component):
    def __init__(
        self,
        nc: Client,
        prefix: str,
        *,
        ttl: float = 5.0,
        wait: float = 0.3,
        capability_ttl: float = 30.0,
        direct_reply: bool = True,
    ) -> None:
        self.nc = nc
        self.prefix = prefix
        self.ttl = ttl
        self.wait = wait
        self._types: dict[str, dict[str, bool]] = {}  # module -> message type -> idempotent
        self._seen: set[str] = set()
        self._direct: set[str] = set()  # modules whose every instance answers directly
        self.capability_ttl = capability_ttl  # seconds a direct-reply verdict is trusted
        self.direct_reply = direct_reply  # False: no module is ever answered directly
        self._background: asyncio.Task[object] | None = None
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

    def answers_directly(self, module: str) -> bool:
        """Whether every running instance of `module` advertised direct reply, as last seen."""
        if not self.direct_reply:
            return False
        if time.monotonic() - self._fetched_at > self.capability_ttl and self._background is None:
            self._background = asyncio.get_running_loop().create_task(self._refresh_in_background())
        return module in self._direct

    async def _refresh_in_background(self) -> None:
        try:
            await self.refresh(max_age=self.capability_ttl)
        except Exception:  # a failed discovery keeps the last verdict; the next call asks again
            pass
        finally:
            self._background = None

    async def start(self) -> None:
        """Nothing to start: discoveries happen when asked."""

    async def stop(self) -> None:
        if self._background is not None:
            await cancel_and_wait(self._background)

    async def _discover(self) -> None:
        marker = f"{self.prefix}.mod."
        types: dict[str, dict[str, bool]] = {}
        direct: dict[str, bool] = {}
        for info in await discover(self.nc, self.prefix, wait=self.wait):
            if info.role != "module":
                continue
            module = types.setdefault(info.name, {})
            for endpoint in info.endpoints:
                if endpoint.subject.startswith(marker):
                    metadata = endpoint.metadata or {}
                    module[endpoint.subject.rsplit(".", 1)[1]] = metadata.get("idempotent") == "true"
                    # One instance without it (an older SDK, another adapter) and all calls go
                    # through the orchestrator: that instance would not report outcomes.
                    answers = metadata.get(DIRECT_REPLY_METADATA) == "true"
                    direct[info.name] = direct.get(info.name, True) and answers
        self._types = types
        self._direct = {name for name, answers in direct.items() if answers}
        self._seen.update(types)
        self._fetched_at = time.monotonic()
