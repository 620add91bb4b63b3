"""State values: any JSON value, stored as its JSON bytes. Pure logic: no NATS.

Values are checked before they are stored, not when they are read: msgspec would happily
turn bytes into base64, NaN into null and a datetime into a string, and a reader would then
get back something other than what was written. So a value must already be JSON: None,
bool, int, finite float, str, and lists and str-keyed dicts of those.

Reading is lenient: a value written by another tool (`nats kv put corral_state k hello`)
that is not JSON reads as the string of its UTF-8 text instead of failing every reader.
"""

from __future__ import annotations

import math
from typing import Any, Final

import msgspec

__all__ = ["check_json_value", "check_size", "decode_value", "encode_value", "raw_json"]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
_SCALARS: Final = (str, int, bool, type(None))


def check_json_value(value: Any, path: str = "$") -> None:
    """Raise ValueError naming the first part of `value` that JSON cannot hold."""
    if isinstance(value, _SCALARS):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"value at `{path}` is {value}: JSON has no NaN or Infinity")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_json_value(item, f"{path}[{index}]")
        return
    if isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(name, str):
                raise ValueError(
                    f"value at `{path}` has the key {name!r} of type {type(name).__name__}: "
                    "JSON object keys are strings"
                )
            check_json_value(item, f"{path}.{name}")
        return
    hint = "; decode it to str (or base64) first" if isinstance(value, bytes | bytearray) else ""
    raise ValueError(f"value at `{path}` is of type {type(value).__name__}, which JSON cannot hold{hint}")


def check_size(data: bytes, limit: int, key: str) -> bytes:
    """Return `data` if it fits in `limit` bytes, else raise ValueError saying by how much it does not."""
    if len(data) > limit:
        raise ValueError(
            f"value for {key!r} is {len(data)} bytes as JSON, over the limit of {limit} bytes "
            "(CORRAL_STATE_MAX_VALUE_BYTES); store large data elsewhere and keep a reference here"
        )
    return data


def encode_value(value: Any) -> bytes:
    """A checked value's JSON bytes."""
    check_json_value(value)
    return _encode(value)


def decode_value(data: bytes | None) -> Any:
    """A stored value: its JSON, or the text of bytes that are not JSON (see the module docstring)."""
    if data is None:
        return None
    try:
        return _decode(data)
    except msgspec.DecodeError:
        return data.decode("utf-8", errors="replace")


def raw_json(data: bytes) -> msgspec.Raw:
    """Stored bytes as Raw JSON to embed in a reply; bytes that are not JSON become a JSON string."""
    try:
        return msgspec.json.decode(data, type=msgspec.Raw)
    except msgspec.DecodeError:
        return msgspec.Raw(_encode(data.decode("utf-8", errors="replace")))
