"""One KV message as the state service sees it: key, value bytes, revision, operation, time.

Pure logic: the NATS modules hand over a message's subject, headers and metadata, and this
module decides what happened to the key. JetStream KV marks removals in headers:
`KV-Operation: DEL` (a delete that keeps history), `KV-Operation: PURGE` (a delete that drops
it), and, since nats-server 2.11, `Nats-Marker-Reason` on markers the server itself places
when a value's TTL runs out (`MaxAge`) or a key is removed (`Remove`, `Purge`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import NamedTuple

__all__ = ["KVEntry", "Operation", "entry_from_parts", "kv_prefix", "operation_of"]

KV_OPERATION = "KV-Operation"
MARKER_REASON = "Nats-Marker-Reason"


class Operation(enum.StrEnum):
    """What a change did to its key; the `operation` of a Change."""

    INITIAL = "initial"  # the value the key had when a watch started (watches from the current values)
    SET = "set"
    DELETE = "delete"
    EXPIRE = "expire"  # its TTL ran out


class KVEntry(NamedTuple):
    key: str
    value: bytes | None  # None when the key was removed
    revision: int
    operation: Operation
    time: float  # seconds since the epoch, when JetStream stored it


def kv_prefix(bucket: str) -> str:
    """The subject prefix of a bucket's keys: `$KV.<bucket>.`."""
    return f"$KV.{bucket}."


def operation_of(headers: Mapping[str, str] | None) -> Operation:
    """The operation a KV message's headers record."""
    if not headers:
        return Operation.SET
    op = headers.get(KV_OPERATION)
    if op in ("DEL", "PURGE"):
        return Operation.DELETE
    reason = headers.get(MARKER_REASON)
    if reason == "MaxAge":
        return Operation.EXPIRE
    if reason in ("Remove", "Purge"):
        return Operation.DELETE
    return Operation.SET


def entry_from_parts(
    prefix: str, subject: str, data: bytes, headers: Mapping[str, str] | None, revision: int, time: float
) -> KVEntry:
    """A KVEntry from the parts of a stored KV message (`prefix` is `kv_prefix(bucket)`)."""
    operation = operation_of(headers)
    value = data if operation is Operation.SET else None
    return KVEntry(subject[len(prefix) :], value, revision, operation, time)
