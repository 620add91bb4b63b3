"""State keys and patterns: what is accepted, and the exact message for what is not."""

from __future__ import annotations

import re

import pytest

from corral.state.keys import MAX_KEY_LENGTH, validate_key, validate_pattern


@pytest.mark.parametrize(
    "key", ["app", "app.version", "workflows.active", "a-b_c.d/e=f", "A1.B2.C3", "x" * MAX_KEY_LENGTH]
)
def test_valid_keys_are_returned(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "key is empty: use a dotted path such as 'app.version'"),
        (
            "app version",
            "key 'app version' contains ' ' at position 3: use only letters, digits, '_', '-', '/', '=' "
            "and '.' between segments",
        ),
        ("app.vérsion", "key 'app.vérsion' contains 'é' at position 5"),
        ("app:version", "key 'app:version' contains ':' at position 3"),
        (
            "app.*",
            "key 'app.*' contains the wildcard '*' at position 4: wildcards belong in patterns "
            "(keys, watch); a key names one value",
        ),
        ("app.>", "key 'app.>' contains the wildcard '>' at position 4"),
        (
            "app..version",
            "key 'app..version' has '..' at position 3: segments are separated by single dots "
            "and cannot be empty",
        ),
        (".app", "key '.app' starts with '.'"),
        ("app.", "key 'app.' ends with '.'"),
        ("x" * (MAX_KEY_LENGTH + 1), f"key is {MAX_KEY_LENGTH + 1} characters long, over the limit of 255"),
    ],
)
def test_invalid_keys_name_the_problem(key: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        validate_key(key)


@pytest.mark.parametrize("pattern", [">", "*", "app.*", "app.>", "app.*.name", "*.version", "app.version"])
def test_valid_patterns_are_returned(pattern: str) -> None:
    assert validate_pattern(pattern) == pattern


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "pattern is empty: use '>' for every key, 'app.*' or 'app.>'"),
        ("app.>.name", "pattern 'app.>.name' has '>' before its last segment"),
        ("app*", "pattern 'app*' has the segment 'app*': a wildcard must be a whole segment"),
        ("app.v>", "pattern 'app.v>' has the segment 'v>'"),
        ("app..*", "pattern 'app..*' has '..' at position 3"),
        ("app. x", "pattern 'app. x' segment ' x' contains ' ' at position 0"),
    ],
)
def test_invalid_patterns_name_the_problem(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        validate_pattern(pattern)
