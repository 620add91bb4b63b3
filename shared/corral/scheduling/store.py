"""Reading and writing task records (KV `corral_tasks`) and results (KV `corral_results`).

Writes that can wait for their acknowledgement together go through `put_async`: a JetStream
publish on the bucket's subject that returns a future, so a batch of records costs one round
trip, not one each.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import nats.js.errors
from nats.js import JetStreamContext

from corral.scheduling.messages import FINAL, Status, TaskRecord, TaskResult
from corral.scheduling.publisher import EXPECT_NEW, Ack, AsyncPublisher
from corral.scheduling.resources import CHECKPOINT_KEY, HELD_KEY, RECORD_KEY, Buckets
from corral.subjects import Subjects

__all__ = ["TaskStore", "overlay"]

_record = msgspec.json.Decoder(TaskRecord)
_result = msgspec.json.Decoder(TaskResult)
_encode = msgspec.json.Encoder().encode


def overlay(record: TaskRecord, result: TaskResult | None) -> TaskRecord:
    """The record as the result says it ended (the worker writes the result first)."""
    if result is None or (record.status in FINAL and record.finished and record.finished >= result.finished):
        return record
    return msgspec.structs.replace(
        record,
        status=result.status,
        result=result.result,
        error=result.error or record.error,
        traceback=result.traceback or record.traceback,
        attempts=max(record.attempts, result.attempts),
        worker=result.worker or record.worker,
        started=result.started or record.started,
        finished=result.finished,
        reason=result.reason or record.reason,
        next_attempt=None,
    )


class TaskStore:
    def __init__(
        self, js: JetStreamContext, subjects: Subjects, buckets: Buckets, publisher: AsyncPublisher
    ) -> None:
        self.js = js
        self.subjects = subjects
        self.buckets = buckets
        self.publisher = publisher

    async def _get(self, kv: Any, key: str) -> bytes | None:
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        value: bytes | None = entry.value
        return value or None

    async def raw_record(self, task_id: str) -> TaskRecord | None:
        data = await self._get(self.buckets.tasks, RECORD_KEY.format(task_id))
        return _record.decode(data) if data else None

    async def result(self, task_id: str) -> TaskResult | None:
        data = await self._get(self.buckets.results, task_id)
        return _result.decode(data) if data else None

    async def record(self, task_id: str) -> TaskRecord | None:
        record, result = await asyncio.gather(self.raw_record(task_id), self.result(task_id))
        return None if record is None else overlay(record, result)

    async def status(self, task_id: str) -> Status | None:
        """How a task stands, or None when there is no such task."""
        record = await self.record(task_id)
        return None if record is None else record.status

    async def put_async(
        self, record: TaskRecord, *, create: bool = False, expect: int | None = None
    ) -> asyncio.Future[Ack]:
        """Send the record now; await the returned future (with others) for its acknowledgement.
        `create`: only if there is no record yet; `expect`: only if the record is still at that
        revision (refused with err_code 10071 otherwise: a worker wrote its final record first)."""
        subject = f"$KV.{self.subjects.tasks_bucket}.{RECORD_KEY.format(record.id)}"
        headers = EXPECT_NEW if create else None
        if expect is not None:
            headers = {"Nats-Expected-Last-Subject-Sequence": str(expect)}
        return await self.publisher.publish(subject, _encode(record), headers)

    async def revision(self, task_id: str) -> int:
        """The revision of a task's record (0: none)."""
        try:
            entry = await self.buckets.tasks.get(RECORD_KEY.format(task_id))
        except nats.js.errors.KeyNotFoundError:
            return 0
        return int(entry.revision or 0)

    async def put_result_async(self, result: TaskResult) -> asyncio.Future[Ack]:
        subject = f"$KV.{self.subjects.results_bucket}.{result.id}"
        return await self.publisher.publish(subject, _encode(result))

    async def put(self, record: TaskRecord) -> int:
        revision: int = await self.buckets.tasks.put(RECORD_KEY.format(record.id), _encode(record))
        return revision

    async def delete_record(self, task_id: str) -> None:
        await self.buckets.tasks.purge(RECORD_KEY.format(task_id))

    async def put_result(self, result: TaskResult) -> None:
        await self.buckets.results.put(result.id, _encode(result))

    async def delete_result(self, task_id: str) -> None:
        await self.buckets.results.purge(task_id)

    async def checkpoint(self, task_id: str) -> bytes | None:
        return await self._get(self.buckets.tasks, CHECKPOINT_KEY.format(task_id))

    async def save_checkpoint(self, task_id: str, data: bytes) -> None:
        await self.buckets.tasks.put(CHECKPOINT_KEY.format(task_id), data)

    async def drop_checkpoint(self, task_id: str) -> None:
        await self.buckets.tasks.purge(CHECKPOINT_KEY.format(task_id))

    async def hold(self, task_id: str) -> None:
        await self.buckets.tasks.put(HELD_KEY.format(task_id), b"1")

    async def claim(self, task_id: str) -> bool:
        """Take a held task for release or cancellation: delete its index key at the revision
        read, so of several scheduler replicas exactly one wins."""
        key = HELD_KEY.format(task_id)
        try:
            entry = await self.buckets.tasks.get(key)
            if not entry.value:
                return False
            await self.buckets.tasks.delete(key, last=entry.revision)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyWrongLastSequenceError):
            return False
        except nats.js.errors.APIError as exc:
            if exc.err_code == 10071:  # wrong last sequence: another replica took it
                return False
            raise
        return True

    async def unhold(self, task_id: str) -> None:
        await self.buckets.tasks.purge(HELD_KEY.format(task_id))

    async def keys(self, prefix: str) -> list[str]:
        """The ids under `prefix.` (`task`, `held`), read with a server-side subject filter
        (nats-py's `keys(filters=...)` reads every key and matches substrings).

        The end is the entry with nothing pending after it, not nats-py's "caught up" marker: the
        watcher can put that marker first when the server has pushed every entry before the
        client handled one, which read as "no keys" under load. Deletes are read (and skipped) so
        that the last entry is always seen; the marker only ends the read when the filter really
        holds nothing.
        """
        watcher = await self.buckets.tasks.watch(f"{prefix}.*", meta_only=True)
        ids: list[str] = []
        try:
            async for entry in watcher:
                if entry is None:
                    if ids or not await self._holds_any(prefix):
                        break
                    continue
                if entry.operation not in ("DEL", "PURGE"):
                    ids.append(entry.key[len(prefix) + 1 :])
                if entry.delta == 0:
                    break
        finally:
            await watcher.stop()
        return ids

    async def _holds_any(self, prefix: str) -> bool:
        """Whether the tasks bucket holds any message (a value or a delete) under `prefix.`."""
        bucket = self.subjects.tasks_bucket
        info = await self.js.stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.{prefix}.*")
        return bool(info.state.subjects)
