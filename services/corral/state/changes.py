"""Changes: what a watcher and the event history see. Pure logic: no NATS.

JetStream stores each write as a message holding only the new value; the old value of a
change is the value of the key's previous message. A ChangeTracker remembers the last value
of every key it has seen, so it can turn the ordered messages of a watch into Changes with
both values, without one extra read per change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from corral.state.entries import KVEntry, Operation
from corral.state.values import decode_value

__all__ = ["Change", "ChangeTracker"]


class Change(msgspec.Struct):
    """One change of one key, as `subscribe` yields it and `<prefix>.evt.state.changed` carries it."""

    key: str
    old_value: Any
    new_value: Any
    revision: int
    operation: Operation
    time: float


class ChangeTracker:
    """The last value of every key seen so far; turns KV entries into Changes."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self._values)

    def seed(self, entries: Iterable[KVEntry]) -> list[Change]:
        """Remember the current values without reporting changes; returns them as INITIAL Changes.

        A caller that watches "from now" drops the result; one that watches "from the current
        values" delivers it first, in revision order.
        """
        initial: list[Change] = []
        for entry in sorted(entries, key=lambda e: e.revision):
            if entry.operation is not Operation.SET:
                self._values.pop(entry.key, None)
                continue
            value = decode_value(entry.value)
            self._values[entry.key] = value
            initial.append(Change(entry.key, None, value, entry.revision, Operation.INITIAL, entry.time))
        return initial

    def apply(self, entry: KVEntry) -> Change:
        """Record `entry` and return the Change it makes."""
        if entry.operation is Operation.SET:
            new = decode_value(entry.value)
            old = self._values.get(entry.key)
            self._values[entry.key] = new
        else:
            new = None
            old = self._values.pop(entry.key, None)
        return Change(entry.key, old, new, entry.revision, entry.operation, entry.time)
