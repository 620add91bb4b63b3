"""Submitter: the queued records' writes are settled by callbacks (a fake store stands in for
KV; the real path is covered by tests/integration/test_scheduler*.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from corral.scheduler.submit import Submitter
from corral.scheduling.messages import Status, TaskRecord
from corral.scheduling.publisher import WRONG_LAST_SEQUENCE, Ack, PublishRefused
from corral.scheduling.settings import SchedulerSettings


class FakeStore:
    """Each create-only write returns a future the test settles."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, asyncio.Future[Ack]]] = []

    async def put_async(self, record: TaskRecord, *, create: bool = False, **_: Any) -> asyncio.Future[Ack]:
        assert create
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self.writes.append((record.id, future))
        return future


def record(task_id: str) -> TaskRecord:
    return TaskRecord(id=task_id, type="echo", route="echo", status=Status.QUEUED, seq=1)


async def test_each_write_settles_its_record_and_only_a_failed_one_is_tried_again() -> None:
    store = FakeStore()
    submitter = Submitter(SchedulerSettings(), store, None, None, None)  # type: ignore[arg-type]
    await submitter._record_queued([record("a"), record("b"), record("c"), record("d")])
    assert set(submitter.pending) == {"a", "b", "c", "d"}
    writes = dict(store.writes)
    writes["a"].set_result(Ack("S", 1))
    writes["b"].set_exception(PublishRefused(400, WRONG_LAST_SEQUENCE, "wrong last sequence"))
    writes["c"].set_exception(TimeoutError("no ack"))
    writes["d"].cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    # a: written; b: the worker's final record is there already. Both leave `pending` at once.
    assert set(submitter.pending) == {"c", "d"}
    assert [task_id for task_id, _ in store.writes[4:]] == ["c", "d"]  # tried once more
    store.writes[4][1].set_exception(TimeoutError("still no ack"))
    store.writes[5][1].set_result(Ack("S", 2))
    await submitter.flush(timeout=1.0)
    assert submitter.pending == {}
    assert len(store.writes) == 6  # never a third time
    assert not submitter._writing
