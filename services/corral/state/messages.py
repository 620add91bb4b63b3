"""The bodies of `<prefix>.state.<verb>` requests and replies.

Constraints live in the types, so a malformed request gets a VALIDATION reply naming the
field before any handler runs. Key, pattern and snapshot id checks run in `__post_init__`
(msgspec turns their ValueError into a ValidationError) because their messages name the
offending character, which a regex constraint cannot do.

`SetRequest.value` is `msgspec.Raw`: a JSON request's value is stored as the bytes that
came, never decoded and re-encoded. A msgpack request's Raw holds msgpack, which the service
converts (see `corral.state.service`).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from corral.state.entries import Operation
from corral.state.keys import validate_key, validate_pattern
from corral.state.snapshots import validate_snapshot_id

__all__ = [
    "DeleteReply",
    "DeleteRequest",
    "Entry",
    "GetManyReply",
    "GetManyRequest",
    "HistoryReply",
    "KeyRequest",
    "KeysReply",
    "KeysRequest",
    "RestoreRequest",
    "SetReply",
    "SetRequest",
    "SnapshotCreateRequest",
    "SnapshotDeleteReply",
    "SnapshotIdRequest",
    "Version",
]

Revision = Annotated[int, msgspec.Meta(ge=1)]
ExpectedRevision = Annotated[int, msgspec.Meta(ge=0)]  # 0: only if the key does not exist
Ttl = Annotated[float, msgspec.Meta(ge=1, le=10 * 365 * 24 * 3600)]  # JetStream's minimum is 1 s
MAX_KEYS_PER_REQUEST = 1000


class SetRequest(msgspec.Struct, kw_only=True):
    key: str
    value: msgspec.Raw
    expected_revision: ExpectedRevision | None = None
    ttl: Ttl | None = None

    def __post_init__(self) -> None:
        validate_key(self.key)


class KeyRequest(msgspec.Struct, kw_only=True):
    """`get` and `history`."""

    key: str

    def __post_init__(self) -> None:
        validate_key(self.key)


class DeleteRequest(msgspec.Struct, kw_only=True):
    key: str
    expected_revision: Revision | None = None

    def __post_init__(self) -> None:
        validate_key(self.key)


class GetManyRequest(msgspec.Struct, kw_only=True):
    keys: Annotated[list[str], msgspec.Meta(min_length=1, max_length=MAX_KEYS_PER_REQUEST)]

    def __post_init__(self) -> None:
        for index, key in enumerate(self.keys):
            validate_key(key, f"keys[{index}]")


class KeysRequest(msgspec.Struct, kw_only=True):
    pattern: str = ">"

    def __post_init__(self) -> None:
        validate_pattern(self.pattern)


class RestoreRequest(msgspec.Struct, kw_only=True):
    key: str
    revision: Revision

    def __post_init__(self) -> None:
        validate_key(self.key)


class SnapshotCreateRequest(msgspec.Struct, kw_only=True):
    metadata: dict[str, Any] = {}


class SnapshotIdRequest(msgspec.Struct, kw_only=True):
    """`snapshot.restore` and `snapshot.delete`."""

    id: str

    def __post_init__(self) -> None:
        validate_snapshot_id(self.id)


# --- replies --------------------------------------------------------------------------------------


class SetReply(msgspec.Struct):
    key: str
    revision: int


class Entry(msgspec.Struct):
    """A key's current value. `value` is Raw JSON on JSON replies and decoded on msgpack ones."""

    key: str
    value: Any
    revision: int
    updated: float


class GetManyReply(msgspec.Struct):
    entries: list[Entry]
    missing: list[str]


class KeysReply(msgspec.Struct):
    pattern: str
    keys: list[str]


class DeleteReply(msgspec.Struct):
    key: str
    deleted: bool  # False when there was nothing to delete
    revision: int | None  # the delete marker's revision


class Version(msgspec.Struct):
    revision: int
    operation: Operation
    value: Any
    time: float


class HistoryReply(msgspec.Struct):
    key: str
    versions: list[Version]  # oldest first


class SnapshotDeleteReply(msgspec.Struct):
    id: str
    deleted: bool
