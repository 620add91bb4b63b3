"""Putting tasks on the CORRAL_TASKS work queue, many at a time, and waking idle workers."""

from __future__ import annotations

import asyncio

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext

from corral.errors import OverloadedError
from corral.protocol import TRACEPARENT_HEADER
from corral.scheduling.messages import TaskSpec
from corral.scheduling.publisher import Ack, AsyncPublisher, PublishRefused
from corral.scheduling.settings import SchedulerSettings
from corral.subjects import Subjects

__all__ = ["TaskQueue"]

_encode = msgspec.json.Encoder().encode
KICK_WINDOW = 0.002  # seconds
MAX_MESSAGES_EXCEEDED = 10077  # JetStream: "maximum messages exceeded" (discard=new, stream full)
# A publish the stream refuses because it is full reports one of these.
_FULL_CODES = {MAX_MESSAGES_EXCEEDED, 10027, 10047, 10028}


class TaskQueue:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        subjects: Subjects,
        settings: SchedulerSettings,
        publisher: AsyncPublisher,
    ) -> None:
        self.nc = nc
        self.js = js
        self.publisher = publisher
        self._kicked: dict[tuple[int, str], float] = {}  # queue -> when it was last kicked
        self._deferred: set[tuple[int, str]] = set()
        self._sending: set[asyncio.Future[None]] = set()
        self.subjects = subjects
        self.settings = settings

    async def depth(self) -> int:
        info = await self.js.stream_info(self.subjects.tasks_stream)
        return int(info.state.messages)

    def overloaded(self, depth: int) -> OverloadedError:
        return OverloadedError(
            f"the task queue is full: {depth} tasks queued, the limit is {self.settings.max_queued} "
            "(CORRAL_SCHEDULER_MAX_QUEUED); retry later",
        )

    async def check_room(self, count: int) -> None:
        """Refuse a batch that cannot fit, before any of it is queued."""
        depth = await self.depth()
        if depth + count > self.settings.max_queued:
            raise self.overloaded(depth)

    async def enqueue(self, specs: list[TaskSpec], *, msg_ids: list[str] | None = None) -> list[Ack]:
        """Publish every task, wait for all acknowledgements, then kick idle workers once per
        level and route. Raises OverloadedError (after removing what this batch queued) when
        the stream is full. `msg_ids`: the Nats-Msg-Id of each (default: see `_headers`)."""
        futures = []
        for index, spec in enumerate(specs):
            headers = _headers(spec, msg_ids[index] if msg_ids else None)
            subject = self.subjects.task_queue(spec.priority, spec.route)
            futures.append(await self.publisher.publish(subject, _encode(spec), headers))
        outcomes = await self.publisher.wait(futures)
        acks = [o for o in outcomes if isinstance(o, Ack)]
        if len(acks) < len(outcomes):
            for ack in acks:
                if not ack.duplicate:
                    await self.js.delete_msg(self.subjects.tasks_stream, ack.seq)
            first = next(o for o in outcomes if not isinstance(o, Ack))
            if isinstance(first, PublishRefused) and first.err_code in _FULL_CODES:
                raise self.overloaded(await self.depth())
            raise first
        await self.kick({(spec.priority, spec.route) for spec in specs})
        return acks

    async def kick(self, queues: set[tuple[int, str]]) -> None:
        """Wake idle workers of these queues. At most one kick per queue per KICK_WINDOW: a
        stream of single submits would otherwise send every worker a message per task; one
        asked for within the window is sent at its end."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for queue in queues:
            elapsed = now - self._kicked.get(queue, -KICK_WINDOW)
            if elapsed >= KICK_WINDOW:
                self._kicked[queue] = now
                await self.nc.publish(self.subjects.task_kick(*queue))
            elif queue not in self._deferred:
                self._deferred.add(queue)
                loop.call_later(KICK_WINDOW - elapsed, self._deferred_kick, queue)

    def _deferred_kick(self, queue: tuple[int, str]) -> None:
        self._deferred.discard(queue)
        self._kicked[queue] = asyncio.get_running_loop().time()
        task = asyncio.ensure_future(self.nc.publish(self.subjects.task_kick(*queue)))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)


def _headers(spec: TaskSpec, msg_id: str | None) -> dict[str, str] | None:
    """A task message carries Nats-Msg-Id only when it may be published twice: a task with an
    idempotency key (its id comes from the key, so a second submission is deduplicated), or an
    explicit id (a DLQ retry). A fresh id is new by construction and no path publishes it again,
    so deduplicating it would only cost JetStream an entry per task in its duplicate window
    (120 s of them) and every process the header."""
    headers: dict[str, str] = {}
    if msg_id is not None or spec.idempotency_key:
        headers["Nats-Msg-Id"] = msg_id or spec.id
    if spec.traceparent:
        headers[TRACEPARENT_HEADER] = spec.traceparent
    return headers or None
