"""All modules' breakers, shared between orchestrator replicas through KV `corral_breakers`.

A transition made here is written to the bucket (and published as an event on
`<prefix>.evt.breaker.<module>`); a transition another replica wrote is adopted here. So a
module that one replica found failing is cut off by every replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from corral.bus import KVSpec, ensure_kv, ensure_stream, events_stream_spec
from corral.component import cancel_and_wait
from corral.orchestrator.breaker import BreakerSnapshot, BreakerState, CircuitBreaker
from corral.policy import BreakerConfig
from corral.subjects import Subjects

__all__ = ["BreakerBoard", "BreakerEvent"]

log = logging.getLogger("corral.orchestrator.breakers")


class BreakerEvent(msgspec.Struct):
    module: str
    old: BreakerState
    new: BreakerState
    reason: str
    replica: str
    time: float


class BreakerBoard:
    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        replica: str,
        config_for: Callable[[str], BreakerConfig],
    ) -> None:
        self.js = js
        self.subjects = subjects
        self.replica = replica
        self.config_for = config_for
        self.breakers: dict[str, CircuitBreaker] = {}
        self._kv: KeyValue | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._encode = msgspec.json.Encoder().encode
        self._decode = msgspec.json.Decoder(BreakerSnapshot).decode

    async def start(self) -> None:
        await ensure_stream(self.js, events_stream_spec(self.subjects))
        kv = await ensure_kv(self.js, KVSpec(bucket=self.subjects.breakers_bucket, history=5))
        self._kv = kv
        watcher = await kv.watchall()
        self._watch_task = asyncio.create_task(self._follow(watcher), name="breaker-watch")

    async def stop(self) -> None:
        if self._watch_task is not None:
            await cancel_and_wait(self._watch_task)
        if self._pending:
            await asyncio.wait(self._pending, timeout=2.0)

    def get(self, module: str) -> CircuitBreaker:
        breaker = self.breakers.get(module)
        if breaker is None:
            breaker = CircuitBreaker(module, self.config_for(module), on_transition=self._on_transition)
            self.breakers[module] = breaker
        return breaker

    def forget(self, module: str) -> None:
        """Drop a breaker that never judged anything (a call to a module that does not exist)."""
        breaker = self.breakers.get(module)
        if breaker is not None and breaker.state is BreakerState.CLOSED and breaker.generation == 0:
            del self.breakers[module]

    def snapshots(self) -> list[BreakerSnapshot]:
        return [self.breakers[name].snapshot() for name in sorted(self.breakers)]

    # --- sharing -----------------------------------------------------------------------------
    def _on_transition(self, snapshot: BreakerSnapshot, old: BreakerState) -> None:
        snapshot.replica = self.replica
        log.info(
            "breaker %s: %s -> %s (%s)",
            snapshot.module,
            old.value,
            snapshot.state.value,
            snapshot.reason,
            extra={"target_module": snapshot.module},
        )
        task = asyncio.get_running_loop().create_task(self._publish(snapshot, old))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _publish(self, snapshot: BreakerSnapshot, old: BreakerState) -> None:
        event = BreakerEvent(snapshot.module, old, snapshot.state, snapshot.reason, self.replica, time.time())
        try:
            if self._kv is not None:
                await self._kv.put(snapshot.module, self._encode(snapshot))
            await self.js.publish(self.subjects.event("breaker", snapshot.module), self._encode(event))
        except Exception as exc:  # sharing is best effort; this replica's breaker already acted
            log.warning("could not share breaker state of %s: %r", snapshot.module, exc)

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None or not entry.value:
                continue  # the "caught up" marker, or a deleted key
            try:
                snapshot = self._decode(entry.value)
            except msgspec.DecodeError:
                log.warning("ignoring malformed breaker entry %s", entry.key)
                continue
            if snapshot.replica != self.replica:
                self.get(snapshot.module).adopt(snapshot)
