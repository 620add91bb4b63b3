"""The state service over the wire: every verb of `<prefix>.state.<verb>` as plain JSON (and
msgpack), against the session's real nats-server, and the bucket as other NATS tools see it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client

from corral.runtime import ServiceSettings
from corral.state.service import StateService
from corral.state.settings import StateSettings

MAX_VERSIONS = 5
MAX_VALUE_BYTES = 4096


@pytest.fixture
async def service(settings: ServiceSettings) -> AsyncIterator[StateService]:
    state = StateSettings(max_versions=MAX_VERSIONS, max_value_bytes=MAX_VALUE_BYTES)
    async with StateService(settings, state) as running:
        yield running


async def call(nc: Client, prefix: str, verb: str, body: Any = None) -> dict[str, Any]:
    data = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    msg = await nc.request(f"{prefix}.state.{verb}", data, timeout=10)
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


async def ok(nc: Client, prefix: str, verb: str, body: Any = None) -> Any:
    reply = await call(nc, prefix, verb, body)
    assert reply["success"] is True, reply
    assert reply["type"] == f"{verb}:success"
    return reply["payload"]


async def fails(nc: Client, prefix: str, verb: str, body: Any, code: str) -> str:
    reply = await call(nc, prefix, verb, body)
    assert reply["success"] is False, reply
    assert reply["type"] == f"{verb}:error"
    assert reply["payload"]["code"] == code, reply
    message: str = reply["payload"]["errors"][0]
    return message


async def test_set_then_get_returns_value_and_revision(
    service: StateService, nc: Client, prefix: str
) -> None:
    first = await ok(nc, prefix, "set", {"key": "app.version", "value": "1.0.0"})
    second = await ok(nc, prefix, "set", {"key": "app.config", "value": {"debug": True, "workers": [1, 2]}})
    assert second["revision"] > first["revision"] > 0
    entry = await ok(nc, prefix, "get", {"key": "app.config"})
    assert entry["key"] == "app.config"
    assert entry["value"] == {"debug": True, "workers": [1, 2]}
    assert entry["revision"] == second["revision"]
    assert abs(entry["updated"] - time.time()) < 60


async def test_the_kv_bucket_holds_the_json_under_the_dotted_key(
    service: StateService, nc: Client, prefix: str
) -> None:
    await ok(nc, prefix, "set", {"key": "app.version", "value": "1.0.0"})
    kv = await nc.jetstream().key_value(
        f"{prefix}_state"
    )  # what `nats kv get <prefix>_state app.version` reads
    entry = await kv.get("app.version")
    assert entry.value == b'"1.0.0"'
    status = await kv.status()
    assert status.history == MAX_VERSIONS
    assert status.stream_info.config.storage == "file"


async def test_get_of_an_absent_key_is_not_found(service: StateService, nc: Client, prefix: str) -> None:
    message = await fails(nc, prefix, "get", {"key": "no.such.key"}, "NOT_FOUND")
    assert message == "key 'no.such.key' has no value (never set, deleted, or expired)"


async def test_compare_and_set(service: StateService, nc: Client, prefix: str) -> None:
    revision = (await ok(nc, prefix, "set", {"key": "counter", "value": 1}))["revision"]
    newer = await ok(nc, prefix, "set", {"key": "counter", "value": 2, "expected_revision": revision})
    message = await fails(
        nc, prefix, "set", {"key": "counter", "value": 3, "expected_revision": revision}, "CONFLICT"
    )
    assert message == (
        f"key 'counter' was expected at revision {revision}, but another writer changed it "
        f"(now at revision {newer['revision']}): read it again and retry"
    )
    assert (await ok(nc, prefix, "get", {"key": "counter"}))["value"] == 2


async def test_expected_revision_zero_creates_only_absent_keys(
    service: StateService, nc: Client, prefix: str
) -> None:
    await ok(nc, prefix, "set", {"key": "lock", "value": "me", "expected_revision": 0})
    message = await fails(
        nc, prefix, "set", {"key": "lock", "value": "you", "expected_revision": 0}, "CONFLICT"
    )
    assert message.startswith("key 'lock' was expected to have no value, but it has a value (now at revision")
    await ok(nc, prefix, "delete", {"key": "lock"})
    await ok(nc, prefix, "set", {"key": "lock", "value": "you", "expected_revision": 0})
    assert (await ok(nc, prefix, "get", {"key": "lock"}))["value"] == "you"


async def test_get_many_returns_entries_and_missing_keys(
    service: StateService, nc: Client, prefix: str
) -> None:
    await ok(nc, prefix, "set", {"key": "a", "value": 1})
    await ok(nc, prefix, "set", {"key": "b", "value": [2]})
    reply = await ok(nc, prefix, "get_many", {"keys": ["a", "nope", "b"]})
    assert [(e["key"], e["value"]) for e in reply["entries"]] == [("a", 1), ("b", [2])]
    assert reply["missing"] == ["nope"]


async def test_keys_follow_nats_wildcards_and_skip_deleted_keys(
    service: StateService, nc: Client, prefix: str
) -> None:
    for key in ("app.version", "app.name", "app.db.host", "workflows.active", "gone"):
        await ok(nc, prefix, "set", {"key": key, "value": 1})
    await ok(nc, prefix, "delete", {"key": "gone"})
    assert (await ok(nc, prefix, "keys", {"pattern": "app.*"}))["keys"] == ["app.name", "app.version"]
    assert (await ok(nc, prefix, "keys", {"pattern": "app.>"}))["keys"] == [
        "app.db.host",
        "app.name",
        "app.version",
    ]
    everything = ["app.db.host", "app.name", "app.version", "workflows.active"]
    assert (await ok(nc, prefix, "keys", {}))["keys"] == everything
    assert (await ok(nc, prefix, "keys", {"pattern": "nothing.*"}))["keys"] == []


async def test_delete_keeps_history_and_is_idempotent(service: StateService, nc: Client, prefix: str) -> None:
    await ok(nc, prefix, "set", {"key": "k", "value": "v"})
    deleted = await ok(nc, prefix, "delete", {"key": "k"})
    assert deleted["deleted"] is True
    assert deleted["revision"] > 0
    again = await ok(nc, prefix, "delete", {"key": "k"})
    assert again == {"key": "k", "deleted": False, "revision": None}
    await fails(nc, prefix, "get", {"key": "k"}, "NOT_FOUND")
    versions = (await ok(nc, prefix, "history", {"key": "k"}))["versions"]
    assert [(v["operation"], v["value"]) for v in versions] == [("set", "v"), ("delete", None)]


async def test_delete_with_a_stale_revision_conflicts(service: StateService, nc: Client, prefix: str) -> None:
    first = (await ok(nc, prefix, "set", {"key": "k", "value": 1}))["revision"]
    await ok(nc, prefix, "set", {"key": "k", "value": 2})
    await fails(nc, prefix, "delete", {"key": "k", "expected_revision": first}, "CONFLICT")
    assert (await ok(nc, prefix, "get", {"key": "k"}))["value"] == 2


async def test_history_keeps_the_last_max_versions(service: StateService, nc: Client, prefix: str) -> None:
    revisions = [(await ok(nc, prefix, "set", {"key": "k", "value": i}))["revision"] for i in range(8)]
    versions = (await ok(nc, prefix, "history", {"key": "k"}))["versions"]
    assert [v["revision"] for v in versions] == revisions[-MAX_VERSIONS:]
    assert [v["value"] for v in versions] == [3, 4, 5, 6, 7]
    assert all(v["operation"] == "set" and v["time"] > 0 for v in versions)
    message = await fails(nc, prefix, "history", {"key": "never.set"}, "NOT_FOUND")
    assert message == "key 'never.set' has no history: it was never set"


async def test_restore_writes_an_old_value_back_as_a_new_revision(
    service: StateService, nc: Client, prefix: str
) -> None:
    old = (await ok(nc, prefix, "set", {"key": "app.version", "value": "1.0.0"}))["revision"]
    await ok(nc, prefix, "set", {"key": "app.version", "value": "2.0.0"})
    restored = await ok(nc, prefix, "restore", {"key": "app.version", "revision": old})
    entry = await ok(nc, prefix, "get", {"key": "app.version"})
    assert entry == {**entry, "value": "1.0.0", "revision": restored["revision"]}
    assert restored["revision"] > old


async def test_restore_refuses_unknown_revisions_and_deletes(
    service: StateService, nc: Client, prefix: str
) -> None:
    kept = [(await ok(nc, prefix, "set", {"key": "k", "value": i}))["revision"] for i in range(2)]
    other = (await ok(nc, prefix, "set", {"key": "other", "value": 0}))["revision"]
    marker = (await ok(nc, prefix, "delete", {"key": "k"}))["revision"]
    message = await fails(nc, prefix, "restore", {"key": "k", "revision": other}, "NOT_FOUND")
    assert message == (
        f"key 'k' has no revision {other}: the revisions kept are {kept[0]}, {kept[1]}, {marker} "
        f"(the last {MAX_VERSIONS}, CORRAL_STATE_MAX_VERSIONS)"
    )
    await fails(nc, prefix, "restore", {"key": "k", "revision": 999999}, "NOT_FOUND")
    message = await fails(nc, prefix, "restore", {"key": "k", "revision": marker}, "VALIDATION")
    assert message == (
        f"revision {marker} of 'k' is a delete, not a value: restore a revision that holds one (see history)"
    )


async def test_a_value_with_a_ttl_expires(service: StateService, nc: Client, prefix: str) -> None:
    await ok(nc, prefix, "set", {"key": "session.x", "value": "token", "ttl": 1})
    await ok(nc, prefix, "set", {"key": "session.y", "value": "token"})
    assert (await ok(nc, prefix, "get", {"key": "session.x"}))["value"] == "token"
    for _ in range(60):
        if (await call(nc, prefix, "get", {"key": "session.x"}))["success"] is False:
            break
        await asyncio.sleep(0.1)
    await fails(nc, prefix, "get", {"key": "session.x"}, "NOT_FOUND")
    assert (await ok(nc, prefix, "keys", {"pattern": "session.*"}))["keys"] == ["session.y"]


async def test_msgpack_requests_store_json(service: StateService, nc: Client, prefix: str) -> None:
    headers = {"Content-Type": "application/msgpack"}
    body = msgspec.msgpack.encode({"key": "m", "value": {"n": 1, "list": [1.5, "x"]}})
    msg = await nc.request(f"{prefix}.state.set", body, timeout=5, headers=headers)
    assert msgspec.msgpack.decode(msg.data)["success"] is True
    kv = await nc.jetstream().key_value(f"{prefix}_state")
    assert json.loads((await kv.get("m")).value) == {"n": 1, "list": [1.5, "x"]}
    msg = await nc.request(
        f"{prefix}.state.get", msgspec.msgpack.encode({"key": "m"}), timeout=5, headers=headers
    )
    assert msgspec.msgpack.decode(msg.data)["payload"]["value"] == {"n": 1, "list": [1.5, "x"]}


async def test_msgpack_values_json_cannot_hold_are_refused(
    service: StateService, nc: Client, prefix: str
) -> None:
    body = msgspec.msgpack.encode({"key": "m", "value": {"blob": b"\x00\x01"}})
    msg = await nc.request(
        f"{prefix}.state.set", body, timeout=5, headers={"Content-Type": "application/msgpack"}
    )
    reply = msgspec.msgpack.decode(msg.data)
    assert reply["payload"] == {
        "code": "VALIDATION",
        "errors": [
            "invalid request body: value at `$.blob` is of type bytes, which JSON cannot hold; "
            "decode it to str (or base64) first"
        ],
    }


async def test_values_written_by_other_tools_are_read_as_text(
    service: StateService, nc: Client, prefix: str
) -> None:
    kv = await nc.jetstream().key_value(f"{prefix}_state")
    await kv.put("raw", b"plain text")  # `nats kv put <prefix>_state raw "plain text"`
    assert (await ok(nc, prefix, "get", {"key": "raw"}))["value"] == "plain text"


BAD_INPUT = [
    ("set", {"key": "a b", "value": 1}, "key 'a b' contains ' ' at position 1"),
    ("set", {"key": "", "value": 1}, "key is empty"),
    ("set", {"key": "app..version", "value": 1}, "key 'app..version' has '..' at position 3"),
    ("set", {"key": "app.*", "value": 1}, "key 'app.*' contains the wildcard '*'"),
    (
        "set",
        {"key": "big", "value": "x" * MAX_VALUE_BYTES},
        f"is {MAX_VALUE_BYTES + 2} bytes as JSON, over the limit",
    ),
    ("set", {"key": "k"}, "Object missing required field `value`"),
    ("set", {"key": "k", "value": 1, "ttl": 0.2}, "Expected `float` >= 1.0 - at `$.ttl`"),
    ("get", {"key": "a/b c"}, "key 'a/b c' contains ' '"),
    ("get_many", {"keys": []}, "Expected `array` of length >= 1 - at `$.keys`"),
    ("keys", {"pattern": "app.>.x"}, "pattern 'app.>.x' has '>' before its last segment"),
    ("keys", {"pattern": "app*"}, "a wildcard must be a whole segment"),
    ("delete", {"key": ".k"}, "key '.k' starts with '.'"),
    ("history", {"key": "k."}, "key 'k.' ends with '.'"),
    ("restore", {"key": "k", "revision": 0}, "Expected `int` >= 1 - at `$.revision`"),
    ("snapshot.restore", {"id": "../../etc"}, "snapshot id '../../etc' is not one"),
    ("snapshot.create", {"metadata": [1]}, "Expected `object`, got `array` - at `$.metadata`"),
]


@pytest.mark.parametrize(("verb", "body", "message"), BAD_INPUT)
async def test_bad_input_gets_validation_naming_the_problem(
    service: StateService, nc: Client, prefix: str, verb: str, body: dict[str, Any], message: str
) -> None:
    assert message in await fails(nc, prefix, verb, body, "VALIDATION")


async def test_a_malformed_body_gets_validation(service: StateService, nc: Client, prefix: str) -> None:
    message = await fails(nc, prefix, "set", b'{"key": "k", "value": ', "VALIDATION")
    assert message.startswith("malformed request body: not valid JSON")
    assert (await ok(nc, prefix, "status"))["bucket"] == f"{prefix}_state"  # and the service still serves


@pytest.mark.parametrize("verb", ["snapshot.restore", "snapshot.delete"])
async def test_unknown_snapshot_ids_are_not_found(
    service: StateService, nc: Client, prefix: str, verb: str
) -> None:
    message = await fails(nc, prefix, verb, {"id": "20200101T000000Z-abcdef"}, "NOT_FOUND")
    assert message == "no snapshot '20200101T000000Z-abcdef': snapshot.list shows the ids there are"
