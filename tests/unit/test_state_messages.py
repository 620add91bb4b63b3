"""Request bodies of `<prefix>.state.<verb>`: constraints live in the types, errors name the field."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest

from corral.state.consumer import AckFields, ack_fields
from corral.state.messages import (
    DeleteRequest,
    GetManyRequest,
    KeysRequest,
    RestoreRequest,
    SetRequest,
    SnapshotIdRequest,
)
from corral.state.settings import StateSettings


def decode(body: bytes, type_: Any) -> Any:
    return msgspec.json.decode(body, type=type_)


def test_set_keeps_the_value_bytes_as_sent() -> None:
    request = decode(b'{"key": "app.version", "value": {"a" : [1, 2]}, "ttl": 5}', SetRequest)
    assert bytes(request.value) == b'{"a" : [1, 2]}'
    assert request.ttl == 5
    assert request.expected_revision is None


@pytest.mark.parametrize(
    ("type_", "body", "message"),
    [
        (SetRequest, b'{"key": "a"}', "Object missing required field `value`"),
        (SetRequest, b'{"value": 1}', "Object missing required field `key`"),
        (SetRequest, b'{"key": "a b", "value": 1}', "key 'a b' contains ' ' at position 1"),
        (SetRequest, b'{"key": "a", "value": 1, "ttl": 0.5}', "Expected `float` >= 1.0 - at `$.ttl`"),
        (SetRequest, b'{"key": "a", "value": 1, "expected_revision": -1}', "Expected `int` >= 0"),
        (SetRequest, b'{"key": "a", "value": NaN}', "JSON is malformed"),
        (DeleteRequest, b'{"key": "a", "expected_revision": 0}', "Expected `int` >= 1"),
        (GetManyRequest, b'{"keys": []}', "Expected `array` of length >= 1 - at `$.keys`"),
        (GetManyRequest, b'{"keys": ["a", "b c"]}', "keys[1] 'b c' contains ' ' at position 1"),
        (KeysRequest, b'{"pattern": "a.>.b"}', "pattern 'a.>.b' has '>' before its last segment"),
        (RestoreRequest, b'{"key": "a", "revision": 0}', "Expected `int` >= 1 - at `$.revision`"),
        (SnapshotIdRequest, b'{"id": "../x"}', "snapshot id '../x' is not one"),
    ],
)
def test_malformed_requests_say_what_is_wrong(type_: Any, body: bytes, message: str) -> None:
    with pytest.raises(msgspec.DecodeError, match=re.escape(message)):
        decode(body, type_)


def test_keys_defaults_to_every_key() -> None:
    assert decode(b"{}", KeysRequest).pattern == ">"


def test_the_request_structs_export_json_schemas() -> None:
    schema = msgspec.json.schema(SetRequest)
    assert set(schema["$defs"]["SetRequest"]["required"]) == {"key", "value"}


def test_ack_subjects_of_both_formats_are_parsed() -> None:
    v1 = "$JS.ACK.KV_corral_state.cons1.1.42.7.1795265459446320000.3"
    assert ack_fields(v1) == AckFields(42, 7, 1795265459.44632, 3)
    v2 = "$JS.ACK.hub.ACCHASH.KV_corral_state.cons1.1.42.7.1795265459446320000.3.token"
    assert ack_fields(v2) == AckFields(42, 7, 1795265459.44632, 3)


def test_state_settings_come_from_the_environment() -> None:
    env = {
        "CORRAL_STATE_MAX_VERSIONS": "20",
        "CORRAL_STATE_MAX_VALUE_BYTES": "1000",
        "CORRAL_STATE_EVENTS": "0",
    }
    settings = StateSettings.from_env(env)
    assert (settings.max_versions, settings.max_value_bytes, settings.events) == (20, 1000, False)
    assert StateSettings.from_env({}) == StateSettings()


def test_state_settings_refuse_more_versions_than_kv_keeps() -> None:
    from corral.errors import ConfigError

    message = (
        "invalid state setting: Expected `int` <= 64 - at `$.max_versions` "
        "(from CORRAL_STATE_MAX_VERSIONS='65')"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        StateSettings.from_env({"CORRAL_STATE_MAX_VERSIONS": "65"})
