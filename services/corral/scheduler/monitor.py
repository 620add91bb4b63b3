"""What the scheduler watches: live workers (their heartbeats) and the queue's consumers.

JetStream stops delivering to a consumer silently once `max_ack_pending` messages are out
unacknowledged; a consumer there with tasks still waiting is reported as stalled (in
`scheduler.status` and the `corral_scheduler_consumers_stalled` gauge), and so is a queue with
waiting tasks that no live worker serves.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from corral.component import cancel_and_wait
from corral.scheduling.messages import WorkerInfo
from corral.scheduling.routing import worker_routes

__all__ = ["ConsumerState", "Monitor", "Workers"]

log = logging.getLogger("corral.scheduler")

_worker = msgspec.json.Decoder(WorkerInfo)


class Workers:
    """Workers seen in the last few heartbeat intervals."""

    def __init__(self, expiry: float = 10.0) -> None:
        self.expiry = expiry
        self._seen: dict[str, WorkerInfo] = {}

    async def on_heartbeat(self, msg: Msg) -> None:
        try:
            info = _worker.decode(msg.data)
        except msgspec.DecodeError:
            return
        info.timestamp = time.time()  # our clock, not the worker's
        self._seen[info.instance] = info

    def alive(self) -> list[WorkerInfo]:
        cutoff = time.time() - self.expiry
        for instance in [i for i, w in self._seen.items() if w.timestamp < cutoff]:
            del self._seen[instance]
        return sorted(self._seen.values(), key=lambda w: (w.name, w.instance))

    def served_routes(self) -> set[str]:
        return {r for w in self.alive() for r in worker_routes(w.types, w.capabilities)}


class ConsumerState(msgspec.Struct):
    name: str
    priority: int
    route: str
    waiting: int  # tasks not yet delivered
    in_flight: int  # delivered, not yet acknowledged
    redelivered: int
    stalled: bool  # in_flight reached max_ack_pending while tasks wait: JetStream delivers no more
    unserved: bool  # tasks wait and no live worker pulls this route


class Monitor:
    def __init__(self, js: JetStreamContext, stream: str, workers: Workers, *, interval: float) -> None:
        self.js = js
        self.stream = stream
        self.workers = workers
        self.interval = interval
        self.consumers: list[ConsumerState] = []
        self.depth = 0
        self.checked = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def stalled(self) -> list[ConsumerState]:
        return [c for c in self.consumers if c.stalled]

    def queued_at(self, priority: int) -> int:
        return sum(c.waiting for c in self.consumers if c.priority == priority)

    async def check(self) -> None:
        infos = await self.js.consumers_info(self.stream)
        served = self.workers.served_routes()
        states = []
        for info in infos:
            name = info.name or ""
            level, _, route = name.partition("_")
            if not (level.startswith("p") and level[1:].isdigit()):
                continue
            limit = info.config.max_ack_pending or 0
            in_flight = int(info.num_ack_pending or 0)
            waiting = int(info.num_pending or 0)
            stalled = bool(limit > 0 and in_flight >= limit and waiting > 0)
            if stalled:
                log.warning(
                    "consumer %s is stalled: %d tasks in flight reached max_ack_pending, %d waiting",
                    name,
                    in_flight,
                    waiting,
                )
            states.append(
                ConsumerState(
                    name=name,
                    priority=int(level[1:]),
                    route=route,
                    waiting=waiting,
                    in_flight=in_flight,
                    redelivered=int(info.num_redelivered or 0),
                    stalled=stalled,
                    unserved=waiting > 0 and route not in served,
                )
            )
        self.consumers = states
        stream = await self.js.stream_info(self.stream)
        self.depth = int(stream.state.messages)
        self.checked = time.time()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="scheduler-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.check()
            except Exception as exc:  # JetStream restarting: the next pass tells
                log.info("consumer check failed: %r", exc)
            await asyncio.sleep(self.interval)
