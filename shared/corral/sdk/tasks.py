"""Submitting tasks and following them: `client.submit(...)` returns a `TaskHandle`.

    handle = await client.submit("resize", {"path": "a.png"}, priority="high")
    async for update in handle.updates():      # progress deltas, snapshots, then the end
        print(update.kind, update.data)
    value = await handle.result(timeout=60)    # or TaskFailedError / TaskCancelledError

The result is read from KV `corral_results`, where the worker stores it before acknowledging
the task, so a client that was slow or away never misses it; the events on
`<prefix>.task.<id>.*` only say when to look.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from corral.errors import CallTimeoutError, CorralError, ModuleError, UnavailableError, error_from_payload
from corral.protocol import TRACEPARENT_HEADER
from corral.scheduling.messages import FINAL, Backoff, Status, TaskRecord, TaskResult
from corral.tracing import outgoing_traceparent

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

    from corral.subjects import Subjects

__all__ = ["TaskCancelledError", "TaskError", "TaskFailedError", "TaskHandle", "TaskUpdate", "Tasks"]

_encode = msgspec.json.Encoder().encode
_result = msgspec.json.Decoder(TaskResult)
RESULT_POLL = 2.0  # seconds between KV reads while waiting, in case an event was missed
UPDATES_BUFFER = 64  # progress deltas a slow reader may fall behind before deltas are dropped
# Asking again after "no responders" (0.1 s, 0.2 s, 0.3 s apart) rides out a scheduler restart.
NO_RESPONDER_RETRIES = 3


class _Reply(msgspec.Struct):
    success: bool
    payload: Any = None


class TaskError(CorralError):
    """A task did not succeed."""

    code = ModuleError.code

    def __init__(self, result: TaskResult) -> None:
        self.result = result
        self.task_id = result.id
        super().__init__(self._message(result))

    @staticmethod
    def _message(result: TaskResult) -> str:
        return f"task {result.id} {result.status.value}: {result.error or result.reason}"


class TaskFailedError(TaskError):
    """Every attempt failed; the task is in the dead-letter queue (`corral dlq show <id>`)."""

    @property
    def error(self) -> str:
        return self.result.error

    @property
    def traceback(self) -> str:
        return self.result.traceback

    @property
    def attempts(self) -> int:
        return self.result.attempts


TaskDeadLetteredError = TaskFailedError


class TaskCancelledError(TaskError):
    """The task was cancelled (by request, or because a dependency did not succeed)."""

    @property
    def reason(self) -> str:
        return self.result.reason


def outcome(result: TaskResult) -> Any:
    if result.status is Status.SUCCEEDED:
        return result.result
    if result.status is Status.CANCELLED:
        raise TaskCancelledError(result)
    raise TaskFailedError(result)


class TaskUpdate(msgspec.Struct):
    """One thing that happened to a task: `started`, `progress`, `snapshot`, `retry`, or the end
    (`done`, `failed`, `cancelled`, with the TaskResult as `data`)."""

    kind: str
    data: Any
    final: bool = False


class TaskHandle:
    def __init__(self, tasks: Tasks, task_id: str, *, duplicate: bool = False) -> None:
        self._tasks = tasks
        self.id = task_id
        self.duplicate = duplicate  # the idempotency key was used before: this is that task

    def __repr__(self) -> str:
        return f"TaskHandle({self.id!r})"

    async def record(self) -> TaskRecord:
        return await self._tasks.task(self.id)

    async def result(self, timeout: float | None = None) -> Any:
        """The task's result once it ends; raises TaskFailedError or TaskCancelledError, or
        CallTimeoutError after `timeout` seconds."""
        return outcome(await self._tasks.wait(self.id, timeout))

    async def updates(self) -> AsyncIterator[TaskUpdate]:
        """Progress as it happens, then the final update. A reader slower than the task loses
        intermediate deltas (never snapshots or the end)."""
        queue: asyncio.Queue[TaskUpdate] = asyncio.Queue()
        pending_deltas = 0
        ended = asyncio.Event()

        async def on_event(msg: Msg) -> None:
            nonlocal pending_deltas
            kind = msg.subject.rsplit(".", 1)[-1]
            if kind == "progress":
                if pending_deltas >= UPDATES_BUFFER:
                    return
                pending_deltas += 1
            if kind in ("done", "failed", "cancelled"):
                ended.set()
                return
            queue.put_nowait(TaskUpdate(kind, msgspec.json.decode(msg.data) if msg.data else None))

        nc = self._tasks.nc
        sub = await nc.subscribe(self._tasks.subjects.task_events(self.id), cb=on_event)
        try:
            while True:
                result = await self._tasks.result_of(self.id)
                if result is not None and result.status in FINAL:
                    while not queue.empty():
                        update = queue.get_nowait()
                        pending_deltas -= update.kind == "progress"
                        yield update
                    yield TaskUpdate(_final_kind(result.status), result, final=True)
                    return
                getter = asyncio.ensure_future(queue.get())
                ender = asyncio.ensure_future(ended.wait())
                done, _ = await asyncio.wait(
                    {getter, ender}, timeout=RESULT_POLL, return_when=asyncio.FIRST_COMPLETED
                )
                ender.cancel()
                if getter in done:
                    update = getter.result()
                    pending_deltas -= update.kind == "progress"
                    yield update
                else:
                    getter.cancel()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


def _final_kind(status: Status) -> str:
    return {Status.SUCCEEDED: "done", Status.FAILED: "failed"}.get(status, "cancelled")


class Tasks:
    """The scheduler verbs; `Client` inherits them."""

    nc: NatsClient
    subjects: Subjects
    _results_kv: Any = None

    async def _scheduler(
        self, verb: str, body: Any, *, timeout: float = 10.0, traceparent: str | None = None
    ) -> Any:
        # Inside a handler or a task, the submission continues the trace being served.
        headers = {TRACEPARENT_HEADER: traceparent or outgoing_traceparent()}
        subject = self.subjects.service("scheduler", verb)
        data = _encode(body)
        for attempt in range(NO_RESPONDER_RETRIES + 1):
            try:
                msg = await self.nc.request(subject, data, timeout=timeout, headers=headers)
                break
            except nats.errors.NoRespondersError as exc:
                # Nobody received it, so sending again cannot run anything twice: a scheduler
                # restarting, or nats-server's occasional "no responders" right after a subscribe.
                if attempt == NO_RESPONDER_RETRIES:
                    raise UnavailableError(
                        f"no scheduler answers {subject}: is the system up (corral up)?"
                    ) from exc
                await asyncio.sleep(0.1 * (attempt + 1))
            except nats.errors.TimeoutError as exc:
                raise CallTimeoutError(f"the scheduler did not answer {verb} within {timeout}s") from exc
        reply = msgspec.json.decode(msg.data, type=_Reply)
        if reply.success:
            return reply.payload
        raise error_from_payload(reply.payload if isinstance(reply.payload, dict) else {})

    async def submit(
        self,
        type_: str,
        payload: Any = None,
        *,
        priority: int | str = 2,
        capabilities: Iterable[str] = (),
        dependencies: Iterable[str | TaskHandle] = (),
        timeout: float | None = None,
        max_retries: int | None = None,
        backoff: Backoff | Mapping[str, float] | None = None,
        idempotency_key: str | None = None,
        not_before: float | datetime.datetime | None = None,
        delay: float | None = None,
        name: str | None = None,
        traceparent: str | None = None,
    ) -> TaskHandle:
        """Queue one task; returns its handle once the scheduler has stored it."""
        body = task_request(
            type_, payload, priority=priority, capabilities=capabilities, dependencies=dependencies,
            timeout=timeout, max_retries=max_retries, backoff=backoff, idempotency_key=idempotency_key,
            not_before=not_before, delay=delay, name=name,
        )  # fmt: skip
        reply = await self._scheduler("submit", body, traceparent=traceparent)
        return TaskHandle(self, reply["id"], duplicate=bool(reply.get("duplicate")))

    async def submit_many(
        self, tasks: Iterable[Mapping[str, Any]], *, traceparent: str | None = None
    ) -> list[TaskHandle]:
        """Queue many tasks, 1000 per request; each item holds `submit`'s arguments (`type`,
        `payload`, `priority`, ...)."""
        bodies = [dict(t) for t in tasks]
        handles: list[TaskHandle] = []
        for start in range(0, len(bodies), 1000):
            chunk = bodies[start : start + 1000]
            for body in chunk:
                if isinstance(body.get("backoff"), Backoff):
                    body["backoff"] = msgspec.to_builtins(body["backoff"])
                if "dependencies" in body:
                    body["dependencies"] = [
                        d.id if isinstance(d, TaskHandle) else d for d in body["dependencies"]
                    ]
            reply = await self._scheduler(
                "submit_many", {"tasks": chunk}, timeout=30.0, traceparent=traceparent
            )
            handles.extend(
                TaskHandle(self, r["id"], duplicate=bool(r.get("duplicate"))) for r in reply["tasks"]
            )
        return handles

    async def cancel(self, task_id: str | TaskHandle, reason: str = "") -> bool:
        """Cancel a task; False when it had already ended."""
        task_id = task_id.id if isinstance(task_id, TaskHandle) else task_id
        reply = await self._scheduler("cancel", {"id": task_id, "reason": reason})
        return bool(reply["cancelled"])

    async def task(self, task_id: str | TaskHandle) -> TaskRecord:
        task_id = task_id.id if isinstance(task_id, TaskHandle) else task_id
        return msgspec.convert(await self._scheduler("get", {"id": task_id}), TaskRecord)

    def handle(self, task_id: str) -> TaskHandle:
        return TaskHandle(self, task_id)

    async def result_of(self, task_id: str) -> TaskResult | None:
        if self._results_kv is None:
            try:
                self._results_kv = await self.nc.jetstream().key_value(self.subjects.results_bucket)
            except nats.js.errors.BucketNotFoundError as exc:
                raise UnavailableError(
                    f"no results bucket {self.subjects.results_bucket}: has the scheduler started once?"
                ) from exc
        try:
            entry = await self._results_kv.get(task_id)
        except nats.js.errors.KeyNotFoundError:
            return None
        return _result.decode(entry.value) if entry.value else None

    async def wait(self, task_id: str, timeout: float | None = None) -> TaskResult:
        """The TaskResult of a task once it has ended."""
        ended = asyncio.Event()

        async def on_end(msg: Msg) -> None:
            if msg.subject.rsplit(".", 1)[-1] in ("done", "failed", "cancelled"):
                ended.set()  # progress events do not make us read KV

        events = self.subjects.task_events(task_id)
        sub = await self.nc.subscribe(events, cb=on_end)
        give_up = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                result = await self.result_of(task_id)
                if result is not None and result.status in FINAL:
                    return result
                left = RESULT_POLL if give_up is None else min(RESULT_POLL, give_up - time.monotonic())
                if left <= 0:
                    raise CallTimeoutError(f"task {task_id} did not end within {timeout}s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ended.wait(), left)
                ended.clear()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def results(
        self, tasks: Iterable[str | TaskHandle], timeout: float | None = None
    ) -> list[TaskResult]:
        """The TaskResult of every task once all have ended, in order: one subscription for the
        lot (not one per task), results read from KV as their end events arrive."""
        ids = [t.id if isinstance(t, TaskHandle) else t for t in tasks]
        waiting = set(ids)
        ended: set[str] = set()
        wake = asyncio.Event()

        async def on_end(msg: Msg) -> None:
            task_id = msg.subject.split(".")[-2]
            if task_id in waiting:
                ended.add(task_id)
                wake.set()

        subs = [
            await self.nc.subscribe(self.subjects.task_events_of(k), cb=on_end)
            for k in ("done", "failed", "cancelled")
        ]
        found: dict[str, TaskResult] = {}
        give_up = None if timeout is None else time.monotonic() + timeout
        try:
            check = list(waiting)
            while True:
                for start in range(0, len(check), 256):
                    chunk = check[start : start + 256]
                    for task_id, result in zip(
                        chunk, await asyncio.gather(*(self.result_of(i) for i in chunk)), strict=True
                    ):
                        if result is not None and result.status in FINAL:
                            found[task_id] = result
                            waiting.discard(task_id)
                if not waiting:
                    return [found[i] for i in ids]
                left = RESULT_POLL if give_up is None else min(RESULT_POLL, give_up - time.monotonic())
                if left <= 0:
                    raise CallTimeoutError(
                        f"{len(waiting)} of {len(set(ids))} tasks did not end within {timeout}s"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), left)
                wake.clear()
                check = list(ended & waiting) if ended & waiting else list(waiting)
                ended.clear()
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()


def task_request(
    type_: str,
    payload: Any = None,
    *,
    priority: int | str = 2,
    capabilities: Iterable[str] = (),
    dependencies: Iterable[str | TaskHandle] = (),
    timeout: float | None = None,
    max_retries: int | None = None,
    backoff: Backoff | Mapping[str, float] | None = None,
    idempotency_key: str | None = None,
    not_before: float | datetime.datetime | None = None,
    delay: float | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """The JSON body of `scheduler.submit` (an item of `submit_many`)."""
    body: dict[str, Any] = {"type": type_, "payload": payload, "priority": priority}
    optional = {
        "capabilities": list(capabilities),
        "dependencies": [d.id if isinstance(d, TaskHandle) else d for d in dependencies],
        "timeout": timeout,
        "max_retries": max_retries,
        "backoff": msgspec.to_builtins(backoff) if isinstance(backoff, Backoff) else backoff,
        "idempotency_key": idempotency_key,
        "not_before": not_before.timestamp() if isinstance(not_before, datetime.datetime) else not_before,
        "delay": delay,
        "name": name,
    }
    body.update({k: v for k, v in optional.items() if v not in (None, [])})
    return body
