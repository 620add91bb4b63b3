"""The scheduler's messages: requests and replies of `<prefix>.scheduler.<verb>`, the task on the
queue, its record, its result, its events and its dead letter.

Constraints live in the types, so a malformed request gets a VALIDATION reply naming the field
before any handler runs.
"""

from __future__ import annotations

import enum
import random
import time
from typing import Annotated, Any, Final

import msgspec

from corral.protocol import parse_priority

__all__ = [
    "FINAL",
    "Backoff",
    "CancelReply",
    "DeadLetter",
    "DlqIdRequest",
    "DlqListRequest",
    "DlqPurgeRequest",
    "ListRequest",
    "Status",
    "SubmitManyRequest",
    "SubmitRequest",
    "Submitted",
    "TaskDone",
    "TaskIdRequest",
    "TaskProgress",
    "TaskRecord",
    "TaskResult",
    "TaskSpec",
    "WorkerInfo",
]

Token = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_\-]+$")]
TaskId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=7 * 24 * 3600)]
MAX_BATCH: Final = 1000
MAX_DEPENDENCIES: Final = 100
MAX_CAPABILITIES: Final = 8


class Status(enum.StrEnum):
    WAITING = "waiting"  # for its dependencies
    SCHEDULED = "scheduled"  # for its not_before time
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"  # an attempt failed; the next one waits for its backoff delay
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # every attempt failed (or it cannot run): it is in the dead-letter queue
    CANCELLED = "cancelled"


FINAL: Final = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})


class Backoff(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Delay before attempt n+1: min(max, initial * multiplier^(n-1)), then +/- jitter (a fraction)."""

    initial: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 1.0
    multiplier: Annotated[float, msgspec.Meta(ge=1, le=10)] = 2.0
    max: Annotated[float, msgspec.Meta(ge=0, le=24 * 3600)] = 60.0
    jitter: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.1

    def delay(self, failed_attempt: int, rng: random.Random | None = None) -> float:
        base = min(self.max, self.initial * self.multiplier ** max(0, failed_attempt - 1))
        if not self.jitter:
            return base
        spread = base * self.jitter
        return max(0.0, base + (rng or random).uniform(-spread, spread))


class SubmitRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`<prefix>.scheduler.submit`: one task."""

    type: Token
    payload: Any = None
    name: Annotated[str, msgspec.Meta(max_length=256)] = ""
    priority: int | str = 2
    capabilities: Annotated[list[Token], msgspec.Meta(max_length=MAX_CAPABILITIES)] = []
    dependencies: Annotated[list[TaskId], msgspec.Meta(max_length=MAX_DEPENDENCIES)] = []
    timeout: Seconds | None = None
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    backoff: Backoff | None = None
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    not_before: Annotated[float, msgspec.Meta(ge=0)] | None = None  # unix time
    delay: Annotated[float, msgspec.Meta(ge=0, le=30 * 24 * 3600)] | None = None  # seconds from now

    def __post_init__(self) -> None:
        self.priority = int(parse_priority(self.priority))
        self.capabilities = sorted(set(self.capabilities))
        if len(set(self.dependencies)) != len(self.dependencies):
            raise ValueError("dependencies lists a task id twice - at `$.dependencies`")


class SubmitManyRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`<prefix>.scheduler.submit_many`: up to 1000 tasks; each may depend on earlier ones of the batch."""

    tasks: Annotated[list[SubmitRequest], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


class Submitted(msgspec.Struct):
    id: str
    status: Status
    duplicate: bool = False  # the idempotency key was seen before: this is the first task's id


class TaskIdRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`get` and `cancel`."""

    id: TaskId
    reason: Annotated[str, msgspec.Meta(max_length=512)] = ""  # cancel only


class ListRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    status: Status | None = None
    type: Token | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


class DlqListRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


class DlqIdRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`dlq.show` and `dlq.retry`."""

    id: TaskId


class DlqPurgeRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`dlq.purge`: one dead letter, or (without `id`) all of them."""

    id: TaskId | None = None


class TaskSpec(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A task as it waits in CORRAL_TASKS: everything a worker needs to run it and record it."""

    id: str
    type: str
    route: str
    payload: Any = None
    name: str = ""
    priority: int = 2
    capabilities: list[str] = []
    dependencies: list[str] = []
    timeout: float = 300.0
    max_retries: int = 3
    backoff: Backoff = msgspec.field(default_factory=Backoff)
    idempotency_key: str | None = None
    not_before: float | None = None
    submitted: float = 0.0
    traceparent: str = ""  # W3C trace context of the submission, carried to the worker

    def record(self, **state: Any) -> TaskRecord:
        return TaskRecord(**msgspec.structs.asdict(self), **state)


class TaskRecord(TaskSpec, kw_only=True, omit_defaults=False):
    """KV `corral_tasks` key `task.<id>`: the task and how it is doing."""

    status: Status = Status.QUEUED
    attempts: int = 0
    seq: int = 0  # its message in CORRAL_TASKS (0: not queued yet)
    queued: float | None = None
    started: float | None = None
    finished: float | None = None
    worker: str = ""
    result: Any = None
    error: str = ""
    traceback: str = ""
    reason: str = ""  # why it was cancelled
    next_attempt: float | None = None  # while retrying: when the next attempt may start

    @property
    def spec(self) -> TaskSpec:
        return msgspec.convert(msgspec.to_builtins(self), TaskSpec)


class TaskResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    """KV `corral_results` key `<id>` (with a TTL): how a task ended. Written before the task is
    acknowledged, so it is never lost; `handle.result()` reads it."""

    id: str
    status: Status
    result: Any = None
    error: str = ""
    traceback: str = ""
    attempts: int = 0
    worker: str = ""
    started: float | None = None
    finished: float = msgspec.field(default_factory=time.time)
    reason: str = ""


class TaskDone(msgspec.Struct, kw_only=True, omit_defaults=True):
    """`<prefix>.task.<id>.started|retry|done|failed|cancelled` (core): a transition, small."""

    id: str
    status: Status
    attempt: int = 0
    worker: str = ""
    error: str = ""
    reason: str = ""
    timestamp: float = msgspec.field(default_factory=time.time)


class TaskProgress(msgspec.Struct, kw_only=True, omit_defaults=True):
    """`<prefix>.task.<id>.progress` (a delta) and `.snapshot` (everything so far, every N deltas)."""

    id: str
    seq: int
    percent: float | None = None
    data: Any = None
    snapshot: bool = False
    timestamp: float = msgspec.field(default_factory=time.time)


class DeadLetter(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A message of CORRAL_DLQ (`<prefix>.dlq.<id>`): the task, its attempts and its last error."""

    task: TaskSpec
    attempts: int
    error: str
    traceback: str = ""
    worker: str = ""
    failed: float = msgspec.field(default_factory=time.time)
    seq: int = 0  # its sequence in CORRAL_DLQ, filled in when read


class CancelReply(msgspec.Struct):
    id: str
    status: Status
    cancelled: bool  # False: it had already finished


class WorkerInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """`<prefix>.workers.hb.<instance>`: a worker says who it is and how loaded it is."""

    instance: str
    name: str
    types: list[str]
    capabilities: list[str]
    concurrency: int
    running: int
    completed: int = 0
    failed: int = 0
    pid: int = 0
    host: str = ""
    started: float = 0.0
    timestamp: float = msgspec.field(default_factory=time.time)
