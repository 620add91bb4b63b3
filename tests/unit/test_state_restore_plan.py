"""Restore plans: what must change for the store to equal a snapshot, and the report of it."""

from __future__ import annotations

import re
import time

import msgspec
import pytest

from corral.state.snapshots import (
    MAX_REPORTED_KEYS,
    RestoreCounts,
    RestoreJournal,
    RestorePlan,
    RestoreReport,
    RestoreStatus,
    SnapshotBody,
    SnapshotInfo,
    new_snapshot_id,
    plan_restore,
    report_of,
    validate_snapshot_id,
)


def test_plan_rewrites_changed_recreates_deleted_and_deletes_added_keys() -> None:
    target = {"same": b"1", "changed": b'"old"', "deleted.since": b"[1]"}
    current = {"same": b"1", "changed": b'"new"', "added.since": b"{}", "added.too": b"2"}
    assert plan_restore(current, target) == RestorePlan(
        writes={"changed": b'"old"', "deleted.since": b"[1]"},
        deletes=["added.since", "added.too"],
        rewritten=["changed"],
        recreated=["deleted.since"],
        unchanged=1,
    )


def test_applying_a_plan_makes_a_second_plan_empty() -> None:
    target = {"a": b"1", "b": b"2"}
    current = {"a": b"9", "c": b"3"}
    plan = plan_restore(current, target)
    after = {k: v for k, v in current.items() if k not in plan.deletes} | plan.writes
    assert after == target
    assert plan_restore(after, target) == RestorePlan({}, [], [], [], 2)


def test_restoring_an_empty_snapshot_deletes_everything() -> None:
    assert plan_restore({"a": b"1"}, {}) == RestorePlan({}, ["a"], [], [], 0)


def test_report_counts_everything_and_lists_a_bounded_number_of_keys() -> None:
    current = {f"k{i:05}": b"0" for i in range(MAX_REPORTED_KEYS + 5)}
    report = report_of("snap", plan_restore(current, {"x": b"1"}))
    assert report.counts == RestoreCounts(
        rewritten=0, recreated=1, deleted=MAX_REPORTED_KEYS + 5, unchanged=0
    )
    assert report.recreated == ["x"]
    assert len(report.deleted) == MAX_REPORTED_KEYS
    assert report.deleted[0] == "k00000"


def test_snapshot_ids_sort_by_time_and_are_unique() -> None:
    first = new_snapshot_id(1_000_000_000.0)
    assert re.fullmatch(r"20010909T014640Z-[0-9a-f]{6}", first)
    assert new_snapshot_id(1_000_000_001.0) > first
    assert len({new_snapshot_id(0.0) for _ in range(50)}) == 50
    assert validate_snapshot_id(new_snapshot_id()) is not None


@pytest.mark.parametrize("bad", ["", "../etc", "a b", "x" * 65, "a.b"])
def test_malformed_snapshot_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=f"^snapshot id {re.escape(repr(bad))} is not one"):
        validate_snapshot_id(bad)


def test_a_body_keeps_the_value_bytes_exactly() -> None:
    info = SnapshotInfo("id", time.time(), 7, 2, 12, {"reason": "release"})
    body = SnapshotBody(info, {"a": msgspec.Raw(b'{"x" : 1}'), "b": msgspec.Raw(b'"t"')})
    decoded = msgspec.json.decode(msgspec.json.encode(body), type=SnapshotBody)
    assert decoded.info == info
    assert {k: bytes(v) for k, v in decoded.values.items()} == {"a": b'{"x" : 1}', "b": b'"t"'}


def test_the_journal_round_trips() -> None:
    report = RestoreReport("id", RestoreCounts(1, 0, 0, 3), ["a"], [], [])
    journal = RestoreJournal("id", RestoreStatus.RUNNING, 1.0, "host-1", report)
    assert msgspec.json.decode(msgspec.json.encode(journal), type=RestoreJournal) == journal
