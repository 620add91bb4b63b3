"""`Worker`: a process that runs tasks of the scheduler's queue.

    worker = Worker("media", capabilities=["gpu"], concurrency=8)

    @worker.task("resize")
    async def resize(ctx: TaskContext, payload: Resize) -> dict[str, int]: ...

    if __name__ == "__main__":
        worker.run()                  # or, in-process: `async with worker: ...`

A worker pulls only tasks it can run (the types it handles, with capabilities it offers), at
most `concurrency` at once, the most urgent first (see corral.sdk.puller). Per task:

* it keeps the lease with in-progress acknowledgements while the handler runs, so a long task
  is not redelivered, and a killed worker's task is, once `ack_wait` passes without one;
* it runs the handler under the task's `timeout`; running out is a failed attempt;
* success: the result goes to KV `corral_results` and the record to `corral_tasks`, both
  stored before the message is acknowledged, then `<prefix>.task.<id>.done`;
* failure with attempts left: the record says retrying, the message is NAKed with the
  backoff delay (JetStream's BackOff applies only to ack timeouts, not to NAKs);
* failure of the last attempt (`max_retries + 1` in all): the dead letter goes to CORRAL_DLQ
  with payload, attempts, error and traceback, the message is terminated, and
  `<prefix>.task.<id>.failed`;
* a redelivered task gets its last checkpoint as `ctx.resume_state`; one whose result is
  already stored (its acknowledgement was lost) is acknowledged without running again.

It registers with the Services API like any corral process (role `worker`) and publishes its
id, capabilities and load on `<prefix>.workers.hb.<instance>` for `corral workers`. SIGTERM
stops pulling, lets running tasks finish (up to the drain timeout) and returns the rest to the
queue at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import time
import traceback
import typing
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import msgspec
from nats.aio.msg import Msg

from corral.component import Component, cancel_and_wait
from corral.errors import ConfigError
from corral.protocol import TRACEPARENT_HEADER
from corral.runtime import RequestContext, Service, ServiceSettings, run_forever
from corral.scheduling.messages import (
    FINAL,
    DeadLetter,
    Status,
    TaskDone,
    TaskRecord,
    TaskResult,
    TaskSpec,
    WorkerInfo,
)
from corral.scheduling.publisher import AsyncPublisher
from corral.scheduling.resources import ensure_resources
from corral.scheduling.routing import worker_routes
from corral.scheduling.settings import SchedulerSettings
from corral.scheduling.store import TaskStore
from corral.sdk.puller import PULL_TIMEOUT, Puller
from corral.sdk.task_context import TaskContext
from corral.subjects import validate_token
from corral.tracing import traceparent_var

__all__ = ["TaskHandler", "Worker", "WorkerService"]

log = logging.getLogger("corral.worker")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
_encode = msgspec.json.Encoder().encode
_spec = msgspec.json.Decoder(TaskSpec)
CANCEL_GRACE = 5.0  # seconds a cancelled handler has to return before it is cancelled itself


@dataclass(frozen=True, slots=True)
class TaskHandler:
    type: str
    payload_type: Any
    func: Callable[[TaskContext, Any], Awaitable[Any]]


@dataclass(slots=True)
class _Running:
    msg: Msg
    task: asyncio.Task[None]
    ctx: TaskContext | None = None
    task_id: str = ""


class Worker(Component):
    def __init__(
        self,
        name: str,
        capabilities: list[str] | None = None,
        concurrency: int = 8,
        settings: ServiceSettings | None = None,
        *,
        scheduler: SchedulerSettings | None = None,
        version: str = "0.1.0",
    ) -> None:
        self.name = validate_token(name, "worker name")
        self.capabilities = sorted({validate_token(c, "capability") for c in capabilities or []})
        if concurrency < 1:
            raise ValueError(f"concurrency of worker {name!r} must be at least 1, got {concurrency}")
        self.concurrency = concurrency
        self.settings = settings
        self.scheduler = scheduler
        self.version = version
        self.handlers: dict[str, TaskHandler] = {}
        self._service: WorkerService | None = None

    def task(self, type_: str) -> Callable[[F], F]:
        """Register `async def f(ctx: TaskContext, payload: T)` for tasks of type `type_`; the
        payload is converted to the annotation of its second parameter (a Struct, dict, ...)."""
        validate_token(type_, "task type")

        def register(func: F) -> F:
            if not inspect.iscoroutinefunction(cast(Any, func)):
                raise TypeError(f"task handler for {type_!r} must be `async def`, got {func!r}")
            if type_ in self.handlers:
                raise ValueError(f"worker {self.name!r} already handles {type_!r}")
            params = list(inspect.signature(func).parameters.values())
            if len(params) != 2:
                raise TypeError(f"task handler for {type_!r} takes (ctx, payload), not {len(params)} params")
            payload_type = typing.get_type_hints(func).get(params[1].name, Any)
            self.handlers[type_] = TaskHandler(type_, payload_type, func)
            return func

        return register

    @property
    def routes(self) -> list[str]:
        return worker_routes(self.handlers, self.capabilities)

    def service(self, settings: ServiceSettings | None = None) -> WorkerService:
        return WorkerService(self, settings or self.settings, self.scheduler)

    async def start(self) -> None:
        if self._service is None:
            self._service = self.service()
        await self._service.start()

    async def stop(self) -> None:
        if self._service is not None:
            await self._service.stop()
            self._service = None

    @property
    def running(self) -> WorkerService:
        if self._service is None:
            raise RuntimeError(f"worker {self.name!r} is not started")
        return self._service

    def run(self, settings: ServiceSettings | None = None) -> None:
        """Serve until SIGTERM (the `__main__` of a worker process)."""
        run_forever(self.service(settings))


class WorkerService(Service):
    role = "worker"

    def __init__(
        self, worker: Worker, settings: ServiceSettings | None, scheduler: SchedulerSettings | None
    ) -> None:
        super().__init__(
            worker.name, version=worker.version, settings=settings, description=f"corral worker {worker.name}"
        )
        if not worker.handlers:
            raise ValueError(f"worker {worker.name!r} has no task handlers: add one with @worker.task(...)")
        self.worker = worker
        self.sched = scheduler or SchedulerSettings.from_env()
        self.concurrency = _concurrency(worker)
        self.running: dict[str, _Running] = {}  # by delivery (the message's reply subject)
        self._by_id: dict[str, _Running] = {}  # the same, by task id
        self.completed = 0
        self.failed = 0
        self._cancelled: dict[str, str] = {}  # recently cancelled ids -> reason (bounded)
        self._slot = asyncio.Event()
        self._stopping = False
        self._draining = False
        self._loops: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Future[None]] = set()
        self._gauges = False
        self._puller: Puller | None = None
        self._store: TaskStore | None = None
        self._subs: list[Any] = []
        self._host = socket.gethostname()

    @property
    def store(self) -> TaskStore:
        assert self._store is not None, "the worker is not started"
        return self._store

    @property
    def puller(self) -> Puller:
        assert self._puller is not None, "the worker is not started"
        return self._puller

    async def setup(self) -> None:
        self._stopping = self._draining = False
        buckets = await ensure_resources(self.js, self.subjects, self.sched, owner=False)
        self._store = TaskStore(self.js, self.subjects, buckets, AsyncPublisher(self.nc))
        self._puller = Puller(self.nc, self.js, self.subjects, self.sched, self.worker.routes, self._orphan)
        await self._puller.start()
        self._subs = [await self.nc.subscribe(self.subjects.task_events_of("cancelled"), cb=self._on_cancel)]
        self.endpoint("status")(self._status)
        if not self._gauges:
            self._gauges = True
            m = self.metrics
            m.add_gauge_callback(
                "tasks_running", "Tasks running in this worker now", lambda: len(self.running)
            )
            m.add_gauge_callback("tasks_completed", "Tasks this worker completed", lambda: self.completed)
            m.add_gauge_callback("tasks_failed", "Tasks this worker dead-lettered", lambda: self.failed)
            m.add_gauge_callback(
                "concurrency", "Tasks this worker runs at once at most", lambda: self.concurrency
            )
        self._loops = [
            asyncio.create_task(self._fetch_loop(), name=f"{self.name}-fetch"),
            asyncio.create_task(self._lease_loop(), name=f"{self.name}-lease"),
            asyncio.create_task(self._register_loop(), name=f"{self.name}-register"),
        ]

    async def teardown(self) -> None:
        self._stopping = True
        self.puller.wake.set()
        self._slot.set()
        fetch = self._loops[0]
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(fetch, PULL_TIMEOUT + 1)
        tasks = [r.task for r in self.running.values()]
        if tasks:
            log.info("draining %d running tasks", len(tasks))
            _, late = await asyncio.wait(tasks, timeout=self.settings.drain_timeout)
            if late:
                # Out of time: hand them back to the queue at once (NAK) rather than at ack_wait.
                self._draining = True
                for task in late:
                    task.cancel()
                await asyncio.wait(late, timeout=2)
        for loop in self._loops[1:]:
            await cancel_and_wait(loop)
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        await self.puller.stop()

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            instance=self.instance,
            name=self.name,
            types=sorted(self.worker.handlers),
            capabilities=self.worker.capabilities,
            concurrency=self.concurrency,
            running=len(self.running),
            completed=self.completed,
            failed=self.failed,
            pid=os.getpid(),
            host=self._host,
            started=self.started_at,
        )

    async def _status(self, _: None, ctx: RequestContext) -> dict[str, Any]:
        return {
            **self.identity(),
            "worker": self.info(),
            "routes": self.worker.routes,
            "pulls": self.puller.pulls,
        }

    # --- loops ----------------------------------------------------------------------------------
    async def _fetch_loop(self) -> None:
        while not self._stopping:
            free = self.concurrency - len(self.running)
            if free <= 0:
                self._slot.clear()
                await self._slot.wait()
                await asyncio.sleep(0)  # let the other tasks finishing now free their slots too
                continue
            try:
                msgs = await self.puller.fetch(free)
            except Exception as exc:  # JetStream restarting: declare the consumers again and retry
                log.warning("fetching tasks failed: %r", exc)
                self.puller.needs_setup = True
                await asyncio.sleep(0.5)
                continue
            if self._stopping:
                for msg in msgs:
                    await msg.nak()
                break
            for msg in msgs:
                self._start(msg)
            if not msgs:
                await self.puller.wait_for_work(self.sched.idle_poll)

    async def _lease_loop(self) -> None:
        interval = max(0.05, self.sched.ack_wait / 3)
        while True:
            await asyncio.sleep(interval)
            for running in list(self.running.values()):
                with contextlib.suppress(Exception):
                    await running.msg.in_progress()

    async def _register_loop(self) -> None:
        subject = self.subjects.worker_heartbeat(self.instance)
        while True:
            with contextlib.suppress(Exception):
                await self.nc.publish(subject, _encode(self.info()))
            await asyncio.sleep(self.settings.heartbeat_interval)

    def keep(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` in the background, holding a reference until it is done."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _orphan(self, msg: Msg) -> None:
        if not self._stopping and len(self.running) < self.concurrency:
            self._start(msg)
        else:
            self.keep(msg.nak())

    async def _on_cancel(self, msg: Msg) -> None:
        task_id = msg.subject.split(".")[-2]
        self._cancelled[task_id] = "cancelled"
        if len(self._cancelled) > 10_000:
            del self._cancelled[next(iter(self._cancelled))]
        running = self._by_id.get(task_id)
        if running is not None and running.ctx is not None:
            running.ctx.cancel("cancelled")
            log.info("task %s cancelled while running; it has %gs to stop", task_id, CANCEL_GRACE)
            asyncio.get_running_loop().call_later(CANCEL_GRACE, running.task.cancel)

    # --- one task -------------------------------------------------------------------------------
    def _start(self, msg: Msg) -> None:
        key = msg.reply or str(id(msg))
        task = asyncio.create_task(self._execute(msg, key))
        self.running[key] = _Running(msg, task)

    async def _execute(self, msg: Msg, key: str) -> None:
        try:
            await self._run(msg, key)
        except Exception as exc:  # a fault of the worker, not the task: let it be tried again soon
            log.error("task message %s could not be handled: %r", key, exc, exc_info=exc)
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)
        finally:
            running = self.running.pop(key, None)
            if running is not None and self._by_id.get(running.task_id) is running:
                del self._by_id[running.task_id]
            self._slot.set()

    async def _run(self, msg: Msg, key: str) -> None:
        try:
            spec = _spec.decode(msg.data)
        except msgspec.DecodeError as exc:
            log.error("a message on %s is not a task (%s); terminating it", msg.subject, exc)
            await msg.term()
            return
        traceparent = (msg.headers or {}).get(TRACEPARENT_HEADER) or spec.traceparent
        traceparent_var.set(traceparent)  # the task's log lines carry its trace id
        meta = msg.metadata
        attempt = meta.num_delivered
        running = self.running[key]
        running.task_id = spec.id
        self._by_id[spec.id] = running
        if spec.id in self._cancelled:
            await msg.term()
            return
        resume: Any = None
        if attempt > 1:
            if await self._already_over(msg, spec):
                return
            saved = await self.store.checkpoint(spec.id)
            resume = msgspec.json.decode(saved) if saved else None
        run = _Attempt(self, msg, spec, attempt, traceparent)
        if attempt > spec.max_retries + 1:
            # The last attempt's worker was lost (killed, or it lost its lease): nothing runs again.
            await run.dead_letter(
                "the worker running the last attempt was lost: no acknowledgement within the lease", ""
            )
            return
        handler = self.worker.handlers.get(spec.type)
        if handler is None:
            await run.dead_letter(f"worker {self.name!r} has no handler for task type {spec.type!r}", "")
            return
        ctx = TaskContext(
            task_id=spec.id,
            type_=spec.type,
            attempt=attempt,
            max_retries=spec.max_retries,
            resume_state=resume,
            traceparent=traceparent,
            worker=self.instance,
            publish=run.publish_event,
            save_checkpoint=self.store.save_checkpoint,
            snapshot_every=self.sched.snapshot_every,
        )
        running.ctx = ctx
        await run.execute(handler, ctx)

    async def _already_over(self, msg: Msg, spec: TaskSpec) -> bool:
        """A redelivery of a task that already ended (its acknowledgement was lost) or was cancelled."""
        result = await self.store.result(spec.id)
        if result is not None and result.status in FINAL:
            await msg.ack()
            return True
        record = await self.store.raw_record(spec.id)
        if record is not None and record.status is Status.CANCELLED:
            await msg.term()
            return True
        return False


def _concurrency(worker: Worker) -> int:
    """The worker's own figure, unless CORRAL_WORKER_CONCURRENCY overrides it (corral.toml `env`)."""
    raw = os.environ.get("CORRAL_WORKER_CONCURRENCY", "").strip()
    if not raw:
        return worker.concurrency
    if not raw.isdecimal() or int(raw) < 1:
        raise ConfigError(f"CORRAL_WORKER_CONCURRENCY must be a whole number of at least 1, got {raw!r}")
    return int(raw)


class _Attempt:
    """One delivery of one task, from start to its acknowledgement."""

    def __init__(
        self, service: WorkerService, msg: Msg, spec: TaskSpec, attempt: int, traceparent: str
    ) -> None:
        self.service = service
        self.msg = msg
        self.spec = spec
        self.attempt = attempt
        self.headers = {TRACEPARENT_HEADER: traceparent} if traceparent else None
        self.started: float | None = None
        meta = msg.metadata
        self.seq = meta.sequence.stream
        self.queued = meta.timestamp.timestamp()

    def record(self, **state: Any) -> TaskRecord:
        return self.spec.record(
            attempts=self.attempt,
            seq=self.seq,
            queued=self.queued,
            started=self.started,
            worker=self.service.instance,
            **state,
        )

    async def publish_event(self, kind: str, data: bytes) -> None:
        await self.service.nc.publish(
            self.service.subjects.task_event(self.spec.id, kind), data, headers=self.headers
        )

    async def _transition(
        self, kind: str, status: Status, *, error: str = "", reason: str = "", lifecycle: str = ""
    ) -> None:
        event = _encode(
            TaskDone(
                id=self.spec.id,
                status=status,
                attempt=self.attempt,
                worker=self.service.instance,
                error=error,
                reason=reason,
            )
        )
        await self.publish_event(kind, event)
        if lifecycle:
            subject = self.service.subjects.event("task", lifecycle)
            await self.service.nc.publish(subject, event, headers=self.headers)

    async def execute(self, handler: TaskHandler, ctx: TaskContext) -> None:
        service, spec = self.service, self.spec
        self.started = time.time()
        log.debug("task %s (%s) attempt %d started", spec.id, spec.type, self.attempt)
        # A task still running after `running_record_after` gets its `started` event and a
        # running record; a shorter one goes straight to done, which saves two writes per task.
        loop = asyncio.get_running_loop()
        timer = loop.call_later(
            service.sched.running_record_after, lambda: service.keep(self._announce_running())
        )
        try:
            try:
                payload = (
                    spec.payload
                    if handler.payload_type is Any
                    else msgspec.convert(spec.payload, handler.payload_type)
                )
            except Exception as exc:
                # A payload the handler cannot take fails the same way every time: no retries.
                await self.dead_letter(f"invalid payload for task type {spec.type!r}: {exc}", "")
                return
            deadline = asyncio.timeout(spec.timeout)
            try:
                async with deadline:
                    value = await handler.func(ctx, payload)
                    _encode(value)  # a result JSON cannot carry fails here, as the handler's error
            except asyncio.CancelledError:
                if ctx.cancelled and not service._draining:
                    await self.cancelled(ctx.cancel_reason)
                    return
                ctx.cancel("the worker is shutting down")
                await self.msg.nak()  # shutting down: another worker takes it at once
                log.info("task %s returned to the queue: the worker is shutting down", spec.id)
                return
            except TimeoutError as exc:
                if not deadline.expired():
                    await self.failed(exc)
                    return
                ctx.cancel("timed out")
                await self.failed(
                    None,
                    f"TimeoutError: task {spec.id} did not finish within its timeout of {spec.timeout:g}s",
                )
                return
            except Exception as exc:
                await self.failed(exc)
                return
            if ctx.cancelled and ctx.cancel_reason == "cancelled":
                await self.cancelled(ctx.cancel_reason)
                return
            await self.succeeded(value, ctx)
        finally:
            timer.cancel()

    async def _announce_running(self) -> None:
        with contextlib.suppress(Exception):
            await self._transition("started", Status.RUNNING)
            await (await self.service.store.put_async(self.record(status=Status.RUNNING)))

    async def _store_end(self, status: Status, **outcome: Any) -> None:
        """Store how the task ended, before its message is acknowledged: the result (what
        `handle.result()` reads) and the final record carry the same `outcome` fields. Both are
        sent at once, then their acknowledgements awaited in turn (no gather per task)."""
        now = time.time()
        result = TaskResult(
            id=self.spec.id,
            status=status,
            attempts=self.attempt,
            worker=self.service.instance,
            started=self.started,
            finished=now,
            **outcome,
        )
        store = self.service.store
        stored_result = await store.put_result_async(result)
        stored_record = await store.put_async(self.record(status=status, finished=now, **outcome))
        try:
            await stored_result
        finally:
            await stored_record

    async def succeeded(self, value: Any, ctx: TaskContext) -> None:
        service, spec = self.service, self.spec
        await self._store_end(Status.SUCCEEDED, result=value)
        await self.msg.ack()
        service.completed += 1
        await self._transition("done", Status.SUCCEEDED)
        if ctx.checkpointed:
            with contextlib.suppress(Exception):
                await service.store.drop_checkpoint(spec.id)

    async def failed(self, exc: BaseException | None, message: str = "") -> None:
        service, spec = self.service, self.spec
        error = message or f"{type(exc).__name__}: {exc}"
        tb = "".join(traceback.format_exception(exc)) if exc is not None else ""
        if self.attempt > spec.max_retries:
            await self.dead_letter(error, tb)
            return
        delay = spec.backoff.delay(self.attempt)
        now = time.time()
        await (
            await service.store.put_async(
                self.record(status=Status.RETRYING, error=error, traceback=tb, next_attempt=now + delay)
            )
        )
        await self.msg.nak(delay=delay)
        service.puller.retry_at(spec.priority, spec.route, now + delay)
        log.info(
            "task %s (%s) attempt %d of %d failed: %s; retrying in %.2fs",
            spec.id, spec.type, self.attempt, spec.max_retries + 1, error, delay,
        )  # fmt: skip
        await self._transition("retry", Status.RETRYING, error=error, lifecycle="retrying")

    async def dead_letter(self, error: str, tb: str) -> None:
        service, spec = self.service, self.spec
        letter = DeadLetter(
            task=spec, attempts=self.attempt, error=error, traceback=tb, worker=service.instance
        )
        await service.js.publish(
            service.subjects.dead_letter(spec.id),
            _encode(letter),
            headers={"Nats-Msg-Id": f"{spec.id}.dlq.{self.seq}.{self.attempt}"},
        )
        await self._store_end(Status.FAILED, error=error, traceback=tb)
        await self.msg.term()
        service.failed += 1
        log.warning(
            "task %s (%s) failed after %d attempts and is in the dead-letter queue: %s",
            spec.id,
            spec.type,
            self.attempt,
            error,
        )
        await self._transition("failed", Status.FAILED, error=error, lifecycle="failed")

    async def cancelled(self, reason: str) -> None:
        await self._store_end(Status.CANCELLED, reason=reason)
        await self.msg.term()
        log.info("task %s stopped: %s", self.spec.id, reason)
