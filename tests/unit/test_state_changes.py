"""KV entries and the ChangeTracker: each change carries the value it replaced."""

from __future__ import annotations

import pytest

from corral.state.changes import Change, ChangeTracker
from corral.state.entries import KVEntry, Operation, entry_from_parts, kv_prefix, operation_of


@pytest.mark.parametrize(
    ("headers", "operation"),
    [
        (None, Operation.SET),
        ({}, Operation.SET),
        ({"Nats-TTL": "5s"}, Operation.SET),
        ({"KV-Operation": "DEL"}, Operation.DELETE),
        ({"KV-Operation": "PURGE", "Nats-Rollup": "sub"}, Operation.DELETE),
        ({"Nats-Marker-Reason": "MaxAge", "Nats-TTL": "1s"}, Operation.EXPIRE),
        ({"Nats-Marker-Reason": "Remove"}, Operation.DELETE),
        ({"Nats-Marker-Reason": "Purge"}, Operation.DELETE),
    ],
)
def test_operation_comes_from_the_kv_headers(headers: dict[str, str] | None, operation: Operation) -> None:
    assert operation_of(headers) is operation


def test_entry_from_parts_strips_the_bucket_prefix_and_drops_removed_values() -> None:
    prefix = kv_prefix("corral_state")
    assert prefix == "$KV.corral_state."
    put = entry_from_parts(prefix, "$KV.corral_state.app.version", b'"1.0"', None, 7, 12.5)
    assert put == KVEntry("app.version", b'"1.0"', 7, Operation.SET, 12.5)
    deleted = entry_from_parts(prefix, "$KV.corral_state.app.version", b"", {"KV-Operation": "DEL"}, 8, 13.0)
    assert deleted == KVEntry("app.version", None, 8, Operation.DELETE, 13.0)


def entry(key: str, value: bytes | None, revision: int, operation: Operation = Operation.SET) -> KVEntry:
    return KVEntry(key, value, revision, operation, float(revision))


def test_changes_carry_old_and_new_values() -> None:
    tracker = ChangeTracker()
    changes = [
        tracker.apply(entry("a", b"1", 1)),
        tracker.apply(entry("b", b'"x"', 2)),
        tracker.apply(entry("a", b"2", 3)),
        tracker.apply(entry("a", None, 4, Operation.DELETE)),
        tracker.apply(entry("a", b"3", 5)),
        tracker.apply(entry("b", None, 6, Operation.EXPIRE)),
    ]
    assert changes == [
        Change("a", None, 1, 1, Operation.SET, 1.0),
        Change("b", None, "x", 2, Operation.SET, 2.0),
        Change("a", 1, 2, 3, Operation.SET, 3.0),
        Change("a", 2, None, 4, Operation.DELETE, 4.0),
        Change("a", None, 3, 5, Operation.SET, 5.0),
        Change("b", "x", None, 6, Operation.EXPIRE, 6.0),
    ]
    assert len(tracker) == 1


def test_seed_returns_current_values_in_revision_order_and_teaches_old_values() -> None:
    tracker = ChangeTracker()
    initial = tracker.seed(
        [entry("b", b"2", 9), entry("gone", None, 5, Operation.DELETE), entry("a", b"1", 3)]
    )
    assert initial == [
        Change("a", None, 1, 3, Operation.INITIAL, 3.0),
        Change("b", None, 2, 9, Operation.INITIAL, 9.0),
    ]
    assert tracker.apply(entry("b", b"20", 10)).old_value == 2
    assert tracker.apply(entry("gone", b"0", 11)).old_value is None


def test_seeding_a_later_message_of_a_key_replaces_its_value() -> None:
    tracker = ChangeTracker()
    tracker.seed([entry("a", b"1", 1)])
    tracker.seed([entry("a", b"2", 2)])
    tracker.seed([entry("b", b"1", 3)])
    tracker.seed([entry("b", None, 4, Operation.DELETE)])
    assert tracker.apply(entry("a", b"3", 5)).old_value == 2
    assert tracker.apply(entry("b", b"3", 6)).old_value is None
