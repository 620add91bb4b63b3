"""State values: only JSON goes in, and what comes out is what went in."""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec
import pytest

from corral.state.values import check_json_value, check_size, decode_value, encode_value, raw_json


@pytest.mark.parametrize(
    "value", [None, True, 0, -7, 2**62, 1.5, "", "text", [], {}, [1, "a", None], {"a": {"b": [1.25, False]}}]
)
def test_json_values_round_trip(value: Any) -> None:
    assert decode_value(encode_value(value)) == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"raw", "value at `$` is of type bytes, which JSON cannot hold; decode it to str (or base64) first"),
        ({"a": [1, {2, 3}]}, "value at `$.a[1]` is of type set, which JSON cannot hold"),
        ({"a": math.nan}, "value at `$.a` is nan: JSON has no NaN or Infinity"),
        ([math.inf], "value at `$[0]` is inf: JSON has no NaN or Infinity"),
        ({1: "one"}, "value at `$` has the key 1 of type int: JSON object keys are strings"),
        (object(), "value at `$` is of type object, which JSON cannot hold"),
    ],
)
def test_values_json_cannot_hold_are_refused_with_their_path(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_json_value(value)


def test_tuples_are_stored_as_arrays() -> None:
    assert encode_value((1, 2)) == b"[1,2]"


def test_size_limit_names_key_size_and_limit() -> None:
    assert check_size(b"12345", 5, "k") == b"12345"
    message = (
        "value for 'big.key' is 6 bytes as JSON, over the limit of 5 bytes (CORRAL_STATE_MAX_VALUE_BYTES)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        check_size(b"123456", 5, "big.key")


def test_bytes_written_by_other_tools_read_as_text() -> None:
    assert decode_value(b"hello") == "hello"
    assert decode_value(b"") == ""
    assert decode_value(None) is None
    assert decode_value(b'{"a": 1}') == {"a": 1}


def test_raw_json_keeps_json_bytes_and_quotes_the_rest() -> None:
    assert bytes(raw_json(b'{"a" : 1}')) == b'{"a" : 1}'
    assert bytes(raw_json(b"hello")) == b'"hello"'
    assert msgspec.json.encode({"v": raw_json(b"not json{")}) == b'{"v":"not json{"}'
