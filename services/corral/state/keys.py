"""State keys and key patterns. Pure logic: no NATS.

A key is a dotted path (`app.version`, `workflows.active`) and is stored as the KV key
itself, so `nats kv get corral_state app.version` reads what `corral state get app.version`
reads. That fixes the alphabet: what NATS KV accepts in a key (letters, digits, `_ - / =`)
with `.` between non-empty segments. A pattern is a key whose segments may also be the
NATS wildcards `*` (one segment) and `>` (the rest of the key), so `app.*` and `app.>` mean
what they mean to every NATS tool.

The checks return the value or raise ValueError with a sentence naming the problem, its
position and what to do instead; callers turn that into a VALIDATION reply.
"""

from __future__ import annotations

import re
import string
from typing import Final

__all__ = ["MAX_KEY_LENGTH", "validate_key", "validate_pattern"]

MAX_KEY_LENGTH: Final = 255
_SEGMENT_CHARS: Final = frozenset(string.ascii_letters + string.digits + "_-/=")
_VALID_KEY: Final = re.compile(r"[A-Za-z0-9_\-/=]+(?:\.[A-Za-z0-9_\-/=]+)*")
_ALPHABET: Final = "letters, digits, '_', '-', '/', '=' and '.' between segments"


def validate_key(key: str, what: str = "key") -> str:
    """Return `key` if it names one value, else raise ValueError saying what is wrong."""
    if len(key) <= MAX_KEY_LENGTH and _VALID_KEY.fullmatch(key):
        return key  # the common case, decided by one regex
    if not key:
        raise ValueError(f"{what} is empty: use a dotted path such as 'app.version'")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"{what} is {len(key)} characters long, over the limit of {MAX_KEY_LENGTH}")
    for position, char in enumerate(key):
        if char in "*>":
            raise ValueError(
                f"{what} {key!r} contains the wildcard {char!r} at position {position}: "
                "wildcards belong in patterns (keys, watch); a key names one value"
            )
        if char != "." and char not in _SEGMENT_CHARS:
            raise ValueError(f"{what} {key!r} contains {char!r} at position {position}: use only {_ALPHABET}")
    raise ValueError(_empty_segment(key, what))


def validate_pattern(pattern: str) -> str:
    """Return `pattern` if it is a key or a NATS wildcard pattern over keys, else raise ValueError."""
    if not pattern:
        raise ValueError("pattern is empty: use '>' for every key, 'app.*' or 'app.>'")
    if len(pattern) > MAX_KEY_LENGTH:
        raise ValueError(f"pattern is {len(pattern)} characters long, over the limit of {MAX_KEY_LENGTH}")
    segments = pattern.split(".")
    if "" in segments:
        raise ValueError(_empty_segment(pattern, "pattern"))
    for index, segment in enumerate(segments):
        if segment == ">" and index != len(segments) - 1:
            raise ValueError(
                f"pattern {pattern!r} has '>' before its last segment: '>' matches the rest of a key, "
                "so it can only come last ('app.>')"
            )
        if segment in ("*", ">"):
            continue
        if "*" in segment or ">" in segment:
            raise ValueError(
                f"pattern {pattern!r} has the segment {segment!r}: a wildcard must be a whole segment "
                "('app.*', not 'app*')"
            )
        validate_key(segment, f"pattern {pattern!r} segment")
    return pattern


def _empty_segment(text: str, what: str) -> str:
    if text.startswith("."):
        where = "starts with '.'"
    elif text.endswith("."):
        where = "ends with '.'"
    else:
        where = f"has '..' at position {text.index('..')}"
    return f"{what} {text!r} {where}: segments are separated by single dots and cannot be empty"
