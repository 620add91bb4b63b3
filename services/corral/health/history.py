"""Event history: read `<PREFIX>_EVENTS` with filters.

An event on `<prefix>.evt.<kind>.<rest>` has that `kind` (lifecycle, breaker, health, resource,
task, ...) and a `source`, the service that publishes that kind (`EVENT_OWNERS`). A query reads
the stream through a short-lived ordered pull consumer filtered to the matching subjects.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from typing import Annotated, Any

import msgspec
import nats.errors
from nats.js import JetStreamContext, api

from corral.subjects import EVENT_OWNERS, EVENT_SOURCES, Subjects

__all__ = ["EventQuery", "EventRecord", "event_record", "matching_kinds", "query_events"]

BATCH = 256


class EventQuery(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    since: Annotated[float, msgspec.Meta(ge=0)] = 0.0  # seconds back from now; 0: the whole history
    source: str = ""  # a service: orchestrator, health, scheduler, state
    kind: str = ""  # an event kind: lifecycle, breaker, health, resource, task, ...
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100  # the most recent ones

    def __post_init__(self) -> None:
        if self.source and self.source not in set(EVENT_OWNERS.values()):
            raise ValueError(
                f"unknown event source {self.source!r}: use one of {_names(EVENT_OWNERS.values())}"
            )
        if self.kind and self.kind not in EVENT_SOURCES:
            raise ValueError(f"unknown event kind {self.kind!r}: use one of {_names(EVENT_SOURCES)}")


class EventRecord(msgspec.Struct):
    seq: int
    time: float
    subject: str
    source: str
    kind: str
    data: Any


def matching_kinds(source: str, kind: str) -> list[str]:
    return [k for k in EVENT_SOURCES if (not kind or k == kind) and (not source or EVENT_OWNERS[k] == source)]


def event_record(subjects: Subjects, subject: str, data: bytes, seq: int, when: float) -> EventRecord:
    tokens = subject[len(subjects.prefix) + 1 :].split(".")
    kind = tokens[1] if len(tokens) > 1 else ""
    try:
        body: Any = msgspec.json.decode(data)
    except msgspec.DecodeError:
        body = data.decode(errors="replace")
    return EventRecord(seq, when, subject, EVENT_OWNERS.get(kind, ""), kind, body)


async def query_events(
    js: JetStreamContext, subjects: Subjects, query: EventQuery, now: float
) -> list[EventRecord]:
    kinds = matching_kinds(query.source, query.kind)
    if not kinds:
        return []
    name = f"q{uuid.uuid4().hex[:12]}"
    config = api.ConsumerConfig(
        name=name,
        ack_policy=api.AckPolicy.NONE,
        inactive_threshold=30.0,
        mem_storage=True,
        filter_subjects=[f"{subjects.prefix}.evt.{k}.>" for k in kinds],
        deliver_policy=api.DeliverPolicy.BY_START_TIME if query.since else api.DeliverPolicy.ALL,
        opt_start_time=dt.datetime.fromtimestamp(now - query.since, dt.UTC) if query.since else None,
    )
    try:
        info = await js.add_consumer(subjects.events_stream, config)
    except nats.js.errors.NotFoundError:
        return []  # no events stream yet: no history
    records: list[EventRecord] = []
    pending = info.num_pending or 0
    try:
        sub = await js.pull_subscribe_bind(name, stream=subjects.events_stream)
        while pending > 0:
            try:
                msgs = await sub.fetch(min(BATCH, pending), timeout=2.0)
            except nats.errors.TimeoutError:
                break
            for msg in msgs:
                meta = msg.metadata
                records.append(
                    event_record(
                        subjects, msg.subject, msg.data, meta.sequence.stream, meta.timestamp.timestamp()
                    )
                )
                pending = meta.num_pending
            del records[: max(0, len(records) - query.limit)]
        await sub.unsubscribe()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(js.delete_consumer(subjects.events_stream, name))
    return records


def _names(values: Any) -> str:
    return ", ".join(sorted(set(values)))
