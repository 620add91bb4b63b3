"""How a worker pulls tasks: strict priority with aging, never more than it has room for.

Each (priority, route) queue has a durable pull consumer shared by every worker serving it.
A fetch asks the queues in order of effective priority, each for at most the free slots left,
with `no_wait` pull requests, so the worker never holds a task it cannot start and the most
urgent available task is always taken first.

Within one level the routes take turns (the first route asked rotates with every fetch), so
a busy task type cannot starve another of the same priority; FIFO holds within a level and route.

Asking every queue each time would cost a round trip per queue, so a queue that came back
empty is skipped for `recheck` seconds, except that the scheduler's kick
(`<prefix>.tasks.kick.<priority>.<route>`, published when it queues tasks) makes it eligible at
once; an idle worker sleeps until a kick or `idle_poll`, and then asks only the queues a kick
named (or all of them, after `idle_poll`).

Aging: every `aging / 4` seconds the worker samples the oldest waiting task of each queue. A
queue whose oldest task has waited `k * aging` seconds competes as `k` levels more urgent
(never above critical), so a background task waits at most about `4 * aging` under any load.

The pull requests are our own (`$JS.API.CONSUMER.MSG.NEXT`) rather than nats-py's pull
subscription, which has been reported to stop receiving after a server restart: a request that
gets no answer within `PULL_TIMEOUT` makes the worker declare its consumers again, and a
reconnect does too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from corral.bus import ensure_consumer
from corral.component import cancel_and_wait
from corral.scheduling.resources import consumer_spec
from corral.scheduling.routing import LEVELS, consumer_name
from corral.scheduling.settings import SchedulerSettings
from corral.subjects import Subjects

__all__ = ["Puller", "TaskQueueView"]

log = logging.getLogger("corral.worker")

PULL_TIMEOUT = 2.0  # seconds; a no_wait pull is answered in a round trip unless the server is gone
_NO_MESSAGES = {"404", "408", "409"}


@dataclass(slots=True)
class TaskQueueView:
    priority: int
    route: str
    name: str
    next_subject: str
    inbox: str
    empty_until: float = 0.0
    oldest: float | None = None  # when its oldest waiting task was queued, if sampled
    received: list[Msg] = field(default_factory=list)
    want: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    position: int = 0  # of its route among the worker's routes

    def effective(self, now: float, aging: float) -> int:
        if self.oldest is None or self.priority == 0:
            return self.priority
        return max(0, self.priority - int((now - self.oldest) / aging))


class Puller:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        subjects: Subjects,
        settings: SchedulerSettings,
        routes: list[str],
        on_orphan: Callable[[Msg], None],
    ) -> None:
        self.nc = nc
        self.js = js
        self.subjects = subjects
        self.settings = settings
        self.routes = routes
        self.on_orphan = on_orphan
        self.wake = asyncio.Event()
        self.needs_setup = True
        self.queues: list[TaskQueueView] = []
        self._by_kick: dict[str, TaskQueueView] = {}
        self._subs: list[Subscription] = []
        self._sampler: asyncio.Task[None] | None = None
        self.pulls = 0
        self._turn = 0

    async def start(self) -> None:
        prefix = self.nc.new_inbox()
        stream = self.subjects.tasks_stream
        for route in self.routes:
            for priority in LEVELS:
                name = consumer_name(priority, route)
                view = TaskQueueView(
                    priority,
                    route,
                    name,
                    f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}",
                    f"{prefix}.{len(self.queues)}",
                    position=self.routes.index(route),
                )
                self.queues.append(view)
                self._by_kick[self.subjects.task_kick(priority, route)] = view
        for view in self.queues:
            # One subscription per queue: JetStream delivers a message with its own subject,
            # not the inbox's, so the subscription is what tells which queue it came from.
            self._subs.append(await self.nc.subscribe(view.inbox, cb=self._receiver(view)))
        for route in self.routes:
            self._subs.append(await self.nc.subscribe(self.subjects.task_kicks(route), cb=self._on_kick))
        await self.setup()
        self._sampler = asyncio.create_task(self._sample_forever(), name="worker-aging")

    async def setup(self) -> None:
        """Declare every consumer this worker pulls from (create-or-update: idempotent)."""
        for view in self.queues:
            await ensure_consumer(
                self.js, consumer_spec(self.subjects, self.settings, view.priority, view.route)
            )
        self.needs_setup = False

    async def stop(self) -> None:
        if self._sampler is not None:
            await cancel_and_wait(self._sampler)
            self._sampler = None
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []

    # --- arrivals -------------------------------------------------------------------------------
    def _receiver(self, view: TaskQueueView) -> Callable[[Msg], Awaitable[None]]:
        async def receive(msg: Msg) -> None:
            self._on_message(view, msg)

        return receive

    def _on_message(self, view: TaskQueueView, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is not None and not msg.data:
            if status in _NO_MESSAGES or status == "503":
                view.done.set()
            return  # 100: idle heartbeat
        if view.want > len(view.received):
            view.received.append(msg)
            if len(view.received) >= view.want:
                view.done.set()
        else:  # delivered after its pull gave up (e.g. across a reconnect): ours, but unasked for
            self.on_orphan(msg)

    async def _on_kick(self, msg: Msg) -> None:
        view = self._by_kick.get(msg.subject)
        if view is not None:
            view.empty_until = 0.0
            self.wake.set()

    def retry_at(self, priority: int, route: str, when: float) -> None:
        """A NAKed task becomes available again at `when`: look at its queue then."""
        view = next((v for v in self.queues if v.priority == priority and v.route == route), None)
        if view is None:
            return

        def ready() -> None:
            view.empty_until = 0.0
            self.wake.set()

        asyncio.get_running_loop().call_later(max(0.0, when - time.time()), ready)

    # --- pulling --------------------------------------------------------------------------------
    def order(self) -> list[TaskQueueView]:
        """By effective priority, then nominal priority; the routes of one level take turns
        (the starting route rotates with every fetch), so one busy type cannot starve another."""
        now = time.time()
        aging = self.settings.aging
        self._turn += 1
        count = len(self.routes) or 1
        return sorted(
            self.queues,
            key=lambda v: (v.effective(now, aging), v.priority, (v.position - self._turn) % count),
        )

    async def fetch(self, free: int) -> list[Msg]:
        """Up to `free` tasks, most urgent first."""
        if self.needs_setup:
            await self.setup()
        got: list[Msg] = []
        now = time.monotonic()
        for view in self.order():
            if free <= 0:
                break
            if view.empty_until > now:
                continue
            msgs = await self._pull(view, free)
            got.extend(msgs)
            free -= len(msgs)
            if msgs:
                view.oldest = None  # its head moved on; the next sample tells its age
                last = msgs[-1].metadata.num_pending
                if last == 0:
                    view.empty_until = now + self.settings.recheck
            else:
                view.empty_until = now + self.settings.recheck
        if not got:
            # Idle: every queue stays unasked until a kick (or a retry coming due) names it, or
            # `idle_poll` passes. A kicked queue is then the only one asked: one round trip
            # from kick to task, not one per more urgent queue.
            for view in self.queues:
                view.empty_until = max(view.empty_until, now + self.settings.idle_poll)
        return got

    async def _pull(self, view: TaskQueueView, batch: int) -> list[Msg]:
        view.received = []
        view.want = batch
        view.done.clear()
        self.pulls += 1
        request = json.dumps({"batch": batch, "no_wait": True}).encode()
        try:
            await self.nc.publish(view.next_subject, request, reply=view.inbox)
            await asyncio.wait_for(view.done.wait(), PULL_TIMEOUT)
        except (TimeoutError, Exception) as exc:
            if not isinstance(exc, TimeoutError):
                log.info("pull from %s failed: %r", view.name, exc)
            # No answer at all: the server restarted or lost the consumer. Declare them again.
            self.needs_setup = True
        finally:
            view.want = 0
        msgs, view.received = view.received, []
        return msgs

    async def wait_for_work(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout)
        self.wake.clear()

    # --- aging ----------------------------------------------------------------------------------
    async def sample(self) -> None:
        """Note when the oldest waiting task of each less-than-critical queue was queued."""
        stream = self.subjects.tasks_stream
        for view in self.queues:
            if view.priority == 0:
                continue
            try:
                info = await self.js.consumer_info(stream, view.name)
                if not info.num_pending:
                    view.oldest = None
                    continue
                view.empty_until = 0.0  # tasks wait there, kicked or not
                start = (info.delivered.stream_seq or 0) + 1
                subject = self.subjects.task_queue(view.priority, view.route)
                raw = await self.js.get_msg(stream, seq=start, subject=subject, next=True)
            except Exception:
                view.oldest = None
                continue
            # A task's age counts from its submission (the `submitted` field of the message).
            view.oldest = float(json.loads(raw.data or b"{}").get("submitted") or time.time())

    async def _sample_forever(self) -> None:
        interval = min(5.0, max(0.05, self.settings.aging / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sample()
            except Exception as exc:
                log.info("aging sample failed: %r", exc)
