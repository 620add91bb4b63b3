"""The JetStream resources of the task queue, declared the same way by the scheduler and workers."""

from __future__ import annotations

from typing import Any, Final

import nats.js.errors
from nats.js import JetStreamContext

from corral.bus import ConsumerSpec, KVSpec, StreamSpec, ensure_kv, ensure_stream
from corral.scheduling.routing import consumer_name
from corral.scheduling.settings import SchedulerSettings
from corral.subjects import Subjects

__all__ = [
    "CHECKPOINT_KEY",
    "HELD_KEY",
    "RECORD_KEY",
    "Buckets",
    "consumer_spec",
    "ensure_resources",
    "tasks_stream_spec",
]

RECORD_KEY: Final = "task.{}"  # corral_tasks: the task record
CHECKPOINT_KEY: Final = "ckpt.{}"  # corral_tasks: the last checkpoint of a running task
HELD_KEY: Final = "held.{}"  # corral_tasks: a task held back (dependencies, not_before), an index


def tasks_stream_spec(subjects: Subjects, settings: SchedulerSettings) -> StreamSpec:
    # Work-queue retention: a message is deleted once acknowledged. `max_msgs` with discard=new
    # is the bounded queue: a publish past it is refused, and the scheduler answers OVERLOADED.
    return StreamSpec(
        name=subjects.tasks_stream,
        subjects=[subjects.task_queue_all],
        retention="workqueue",
        max_msgs=settings.max_queued,
        discard="new",
        duplicate_window=settings.dedup_window,
        replicas=settings.replicas,
    )


def dlq_stream_spec(subjects: Subjects, settings: SchedulerSettings) -> StreamSpec:
    return StreamSpec(
        name=subjects.dlq_stream,
        subjects=[subjects.dead_letters_all],
        max_age=settings.dlq_max_age,
        replicas=settings.replicas,
    )


def consumer_spec(subjects: Subjects, settings: SchedulerSettings, priority: int, route: str) -> ConsumerSpec:
    return ConsumerSpec(
        stream=subjects.tasks_stream,
        durable=consumer_name(priority, route),
        filter_subjects=[subjects.task_queue(priority, route)],
        ack_wait=settings.ack_wait,
        max_ack_pending=settings.max_ack_pending,
        # Unbounded: the worker counts attempts and dead-letters the last one itself, because
        # JetStream only publishes an advisory at max_deliver and leaves the message.
        max_deliver=-1,
    )


class Buckets:
    """The two KV buckets: records (and checkpoints) in `corral_tasks`, results in `corral_results`."""

    def __init__(self, tasks: Any, results: Any) -> None:
        self.tasks = tasks
        self.results = results


async def ensure_resources(
    js: JetStreamContext, subjects: Subjects, settings: SchedulerSettings, *, owner: bool = True
) -> Buckets:
    """Declare the streams and buckets. The scheduler (`owner`) creates or updates them to its
    settings; a worker only creates what is missing, so a worker started with other settings
    never changes the queue's limits."""
    streams = (tasks_stream_spec(subjects, settings), dlq_stream_spec(subjects, settings))
    kvs = (
        KVSpec(bucket=subjects.tasks_bucket, replicas=settings.replicas),
        KVSpec(bucket=subjects.results_bucket, ttl=settings.result_ttl, replicas=settings.replicas),
    )
    handles = []
    if owner:
        for stream in streams:
            await ensure_stream(js, stream)
        for kv in kvs:
            handles.append(await ensure_kv(js, kv))
        return Buckets(*handles)
    for stream in streams:
        try:
            await js.stream_info(stream.name)
        except nats.js.errors.NotFoundError:
            await ensure_stream(js, stream)
    for kv in kvs:
        try:
            handles.append(await js.key_value(kv.bucket))
        except nats.js.errors.BucketNotFoundError:
            handles.append(await ensure_kv(js, kv))
    return Buckets(*handles)
