"""Iterative operations on Lisp data: tree walking, printing, equality and JSON conversion.

None of them recurse in Python, so no value, however deeply nested, exhausts the recursion limit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from lisp_values import (
    MAX_INT_BITS,
    NIL,
    Budget,
    Builtin,
    EvalError,
    Lambda,
    LimitError,
    Symbol,
    Value,
    is_number,
)

SNIPPET_LENGTH = 40  # longest source/value excerpt quoted in error messages
T = TypeVar("T")
R = TypeVar("R")


# ------------------------------------------------------------------------------ iterative helpers


class _CycleError(Exception):
    """A container that (indirectly) contains itself."""


def map_tree(
    root: T,
    children: Callable[[T], Sequence[T] | None],
    leaf: Callable[[T], R],
    branch: Callable[[T, list[R]], R],
    enter: Callable[[T, int, int], None] | None = None,
) -> R:
    """Bottom-up map over a tree without recursion.

    ``children`` returns None for leaves; ``enter(branch, size, depth)`` is called before a branch's
    children are visited.  A branch that is its own ancestor raises _CycleError.
    """
    results: list[R] = []
    stack: list[tuple[T, int, int]] = [(root, -1, 1)]  # (item, child count once expanded, depth)
    active: set[int] = set()
    while stack:
        item, count, depth = stack.pop()
        if count >= 0:
            active.discard(id(item))
            kids = results[len(results) - count :]
            del results[len(results) - count :]
            results.append(branch(item, kids))
            continue
        kids_in = children(item)
        if kids_in is None:
            results.append(leaf(item))
            continue
        if id(item) in active:
            raise _CycleError
        if enter is not None:
            enter(item, len(kids_in), depth)
        active.add(id(item))
        stack.append((item, len(kids_in), depth))
        stack.extend((kid, -1, depth + 1) for kid in reversed(kids_in))
    return results[0]


class _Raw:
    """Literal text pushed on the printer's stack (parentheses and separators)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


_OPEN, _CLOSE, _SPACE = _Raw("("), _Raw(")"), _Raw(" ")


def _quote_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def _atom_text(value: Value) -> str:
    if isinstance(value, bool):
        return "#t" if value else "#f"
    if isinstance(value, str):
        return _quote_string(value)
    if isinstance(value, Symbol):
        return value.name
    return str(value)


def write(value: Value, limit: int) -> tuple[str, bool]:
    """Print ``value`` as Lisp source; returns (text, complete) and stops after ``limit`` chars."""
    parts: list[str] = []
    size = 0
    stack: list[Value | _Raw] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Raw):
            text = item.text
        elif isinstance(item, tuple):
            stack.append(_CLOSE)
            for index in range(len(item) - 1, -1, -1):
                stack.append(item[index])
                if index:
                    stack.append(_SPACE)
            text = _OPEN.text
        else:
            text = _atom_text(item)
        parts.append(text)
        size += len(text)
        if size > limit:
            return "".join(parts)[:limit], False
    return "".join(parts), True


def excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_LENGTH else text[: SNIPPET_LENGTH - 3] + "..."


def _type_name(value: Value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Symbol):
        return "symbol"
    if isinstance(value, tuple):
        return "list"
    return "function"


def describe(value: Value) -> str:
    """E.g. ``string "a"`` or ``list (1 2)``, for error messages."""
    text, complete = write(value, SNIPPET_LENGTH)
    return f"{_type_name(value)} {text if complete else text[: SNIPPET_LENGTH - 3] + '...'}"


def equal(left: Value, right: Value, budget: Budget) -> bool:
    """Structural equality; numbers compare by value, booleans only equal booleans."""
    stack = [(left, right)]
    seen: set[tuple[int, int]] = set()
    while stack:
        a, b = stack.pop()
        if a is b:
            continue
        if isinstance(a, tuple) and isinstance(b, tuple):
            key = (id(a), id(b))
            if len(a) != len(b):
                return False
            if key not in seen:
                seen.add(key)
                budget.charge_list(len(a))
                stack.extend(zip(a, b, strict=True))
        elif not _atom_equal(a, b):
            return False
    return True


def _atom_equal(a: Value, b: Value) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if is_number(a) and is_number(b):
        return a == b
    if isinstance(a, str | Symbol) and type(a) is type(b):
        return a == b
    return a is b  # functions (and mismatched kinds) are only equal to themselves


def as_tuple(_: object, items: list[Value]) -> Value:
    return tuple(items)


# ---------------------------------------------------------------------------- JSON conversion


def _json_children(value: Any) -> Sequence[Any] | None:
    if isinstance(value, list | tuple):
        return value
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise TypeError("a dict with non-string keys")
        return [[key, item] for key, item in value.items()]
    return None


def _json_leaf(value: Any) -> Value:
    if value is None:
        return NIL
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if value.bit_length() > MAX_INT_BITS:
            raise TypeError(f"an integer larger than {MAX_INT_BITS} bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError("a non-finite float")
        return value
    raise TypeError(f"unsupported type {type(value).__name__}")


def from_json(name: str, value: Any) -> Value:
    try:
        return map_tree(value, _json_children, _json_leaf, as_tuple)
    except TypeError as error:
        raise EvalError(f"context value for '{name}' has {error}") from None
    except _CycleError:
        raise EvalError(f"context value for '{name}' contains a cycle") from None


def _result_leaf(value: Value) -> Any:
    if isinstance(value, Symbol):
        return value.name
    if isinstance(value, Lambda | Builtin):
        return str(value)
    return value


def to_json(value: Value, budget: Budget, max_depth: int) -> Any:
    def enter(_: Value, size: int, depth: int) -> None:
        if depth > max_depth:
            raise LimitError(f"result nested deeper than {max_depth} levels")
        budget.charge_list(size)

    return map_tree(
        value, lambda v: v if isinstance(v, tuple) else None, _result_leaf, lambda _, kids: kids, enter
    )
