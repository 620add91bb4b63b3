"""Snapshots and restoring them. Pure logic: no NATS.

A snapshot is every key's value at one revision of the state bucket. Restoring one makes the
store equal to it: keys written since are rewritten, keys deleted since are written back,
keys added since are deleted. `plan_restore` computes that from the current values, so
applying a plan twice is the same as applying it once; that is what makes a restore
resumable (see `corral.state.snapshot_store`).

The restore journal records one restore at a time:

    (no journal | DONE | ABANDONED) -> RUNNING   a restore was asked for; its report is fixed here
    RUNNING -> RUNNING               a restarted service resumes it
    RUNNING -> DONE                  every write and delete of the plan was acknowledged
    RUNNING -> ABANDONED             its snapshot vanished (removed by hand: snapshot.delete
                                     refuses to delete a snapshot being restored)
"""

from __future__ import annotations

import enum
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

import msgspec

__all__ = [
    "RestoreCounts",
    "RestoreJournal",
    "RestorePlan",
    "RestoreReport",
    "RestoreStatus",
    "SnapshotBody",
    "SnapshotInfo",
    "new_snapshot_id",
    "plan_restore",
    "report_of",
    "validate_snapshot_id",
]

FORMAT: Final = 1
MAX_REPORTED_KEYS: Final = 1000
_ID: Final = re.compile(r"[A-Za-z0-9_\-]{1,64}")


class SnapshotInfo(msgspec.Struct):
    """What `snapshot.list` shows about one snapshot."""

    id: str
    created: float
    revision: int  # the state bucket's last revision when the snapshot was taken
    keys: int
    bytes: int
    metadata: dict[str, Any] = {}


class SnapshotBody(msgspec.Struct):
    """A stored snapshot: its info and every key's value as the JSON bytes that were stored."""

    info: SnapshotInfo
    values: dict[str, msgspec.Raw]
    format: int = FORMAT


class RestorePlan(NamedTuple):
    writes: dict[str, bytes]  # key -> value to store: the rewritten and recreated keys
    deletes: list[str]
    rewritten: list[str]  # present now with another value
    recreated: list[str]  # in the snapshot, absent now
    unchanged: int


class RestoreCounts(msgspec.Struct):
    rewritten: int
    recreated: int
    deleted: int
    unchanged: int


class RestoreReport(msgspec.Struct):
    """What a restore changed, reported by `snapshot.restore`.

    The key lists hold at most MAX_REPORTED_KEYS keys each (sorted); `counts` has the totals.
    """

    snapshot: str
    counts: RestoreCounts
    rewritten: list[str]  # had another value
    recreated: list[str]  # had been deleted since the snapshot
    deleted: list[str]  # were added since the snapshot
    resumed: bool = False  # finished after the service that started it stopped


class RestoreStatus(enum.StrEnum):
    RUNNING = "running"
    DONE = "done"
    ABANDONED = "abandoned"


class RestoreJournal(msgspec.Struct):
    """The record that makes a restore resumable; stored before the first write."""

    snapshot: str
    status: RestoreStatus
    started: float
    instance: str
    report: RestoreReport
    finished: float | None = None


def plan_restore(current: Mapping[str, bytes], target: Mapping[str, bytes]) -> RestorePlan:
    """What to write and delete so that `current` becomes `target`; lists are sorted."""
    rewritten = sorted(k for k, v in target.items() if k in current and current[k] != v)
    recreated = sorted(k for k in target if k not in current)
    deletes = sorted(k for k in current if k not in target)
    writes = {k: target[k] for k in (*rewritten, *recreated)}
    unchanged = len(target) - len(rewritten) - len(recreated)
    return RestorePlan(writes, deletes, rewritten, recreated, unchanged)


def report_of(snapshot_id: str, plan: RestorePlan) -> RestoreReport:
    counts = RestoreCounts(len(plan.rewritten), len(plan.recreated), len(plan.deletes), plan.unchanged)
    return RestoreReport(
        snapshot_id,
        counts,
        plan.rewritten[:MAX_REPORTED_KEYS],
        plan.recreated[:MAX_REPORTED_KEYS],
        plan.deletes[:MAX_REPORTED_KEYS],
    )


def new_snapshot_id(now: float | None = None) -> str:
    """Sortable by creation time and unique: `20260101T120000Z-3fa9c2`."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(3)}"


def validate_snapshot_id(snapshot_id: str) -> str:
    if not _ID.fullmatch(snapshot_id):
        raise ValueError(
            f"snapshot id {snapshot_id!r} is not one: ids are 1-64 letters, digits, '_' and '-', "
            "as snapshot.create returns them and snapshot.list shows them"
        )
    return snapshot_id
