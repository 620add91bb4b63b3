"""The Lisp's builtin functions, registered by name in ``BUILTINS``."""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable
from typing import Any

from lisp_data import describe, equal, write
from lisp_values import (
    MAX_INT_BITS,
    MAX_STRING_LENGTH,
    NIL,
    Args,
    Budget,
    Builtin,
    BuiltinFn,
    EvalError,
    Number,
    Value,
    is_number,
    truthy,
)

BUILTINS: dict[str, Builtin] = {}


def _builtin(name: str, min_args: int = 0, max_args: int | None = None) -> Callable[[BuiltinFn], BuiltinFn]:
    def register(fn: BuiltinFn) -> BuiltinFn:
        BUILTINS[name] = Builtin(name, min_args, max_args, fn)
        return fn

    return register


def _numbers(name: str, args: Args) -> list[Number]:
    numbers: list[Number] = []
    for arg in args:
        if not is_number(arg):
            raise EvalError(f"'{name}' expects numbers, got {describe(arg)}")
        numbers.append(arg)
    return numbers


def _checked(number: Number) -> Number:
    """Reject integers beyond MAX_INT_BITS and non-finite floats (raised as OverflowError)."""
    if isinstance(number, int) and number.bit_length() > MAX_INT_BITS:
        raise OverflowError(f"integer overflow (more than {MAX_INT_BITS} bits)")
    if isinstance(number, float) and not math.isfinite(number):
        raise OverflowError("float overflow")
    return number


def _fold(name: str, args: Args, step: Callable[[Number, Number], Number]) -> Number:
    numbers = _numbers(name, args)
    result = numbers[0]
    for number in numbers[1:]:
        result = _checked(step(result, number))
    return result


def _divide(a: Number, b: Number) -> Number:
    if b == 0:
        raise ZeroDivisionError("division by zero")
    if isinstance(a, int) and isinstance(b, int) and a % b == 0:
        return a // b
    return a / b


@_builtin("+")
def _add(args: Args, budget: Budget) -> Value:
    return _fold("+", (0, *args), operator.add)


@_builtin("*")
def _multiply(args: Args, budget: Budget) -> Value:
    return _fold("*", (1, *args), operator.mul)


@_builtin("-", 1)
def _subtract(args: Args, budget: Budget) -> Value:
    return _fold("-", (0, *args) if len(args) == 1 else args, operator.sub)


@_builtin("/", 1)
def _div(args: Args, budget: Budget) -> Value:
    return _fold("/", (1, *args) if len(args) == 1 else args, _divide)


@_builtin("mod", 2, 2)
def _mod(args: Args, budget: Budget) -> Value:
    a, b = _numbers("mod", args)
    if b == 0:
        raise ZeroDivisionError("division by zero")
    return _checked(a % b)


@_builtin("abs", 1, 1)
def _abs(args: Args, budget: Budget) -> Value:
    return abs(_numbers("abs", args)[0])


@_builtin("min", 1)
def _min(args: Args, budget: Budget) -> Value:
    return min(_numbers("min", args))


@_builtin("max", 1)
def _max(args: Args, budget: Budget) -> Value:
    return max(_numbers("max", args))


def _comparison(name: str, test: Callable[[Any, Any], bool]) -> BuiltinFn:
    def compare(args: Args, budget: Budget) -> Value:
        if isinstance(args[0], str):
            for arg in args:
                if not isinstance(arg, str):
                    raise EvalError(f"'{name}' expects strings, got {describe(arg)}")
        else:
            _numbers(name, args)
        return all(test(a, b) for a, b in itertools.pairwise(args))

    return compare


for _name, _test in {"<": operator.lt, ">": operator.gt, "<=": operator.le, ">=": operator.ge}.items():
    BUILTINS[_name] = Builtin(_name, 1, None, _comparison(_name, _test))


@_builtin("=", 1)
def _equals(args: Args, budget: Budget) -> Value:
    return all(equal(a, b, budget) for a, b in itertools.pairwise(args))


@_builtin("!=", 1)
def _not_equals(args: Args, budget: Budget) -> Value:
    return not any(equal(a, b, budget) for a, b in itertools.pairwise(args))


@_builtin("not", 1, 1)
def _not(args: Args, budget: Budget) -> Value:
    return not truthy(args[0])


def _as_list(name: str, value: Value, what: str = "a list") -> tuple[Value, ...]:
    if not isinstance(value, tuple):
        raise EvalError(f"'{name}' expects {what}, got {describe(value)}")
    return value


def _non_empty(name: str, value: Value) -> tuple[Value, ...]:
    items = _as_list(name, value, "a non-empty list")
    if not items:
        raise EvalError(f"'{name}' expects a non-empty list, got {describe(value)}")
    return items


@_builtin("list")
def _list(args: Args, budget: Budget) -> Value:
    return args


@_builtin("car", 1, 1)
def _car(args: Args, budget: Budget) -> Value:
    return _non_empty("car", args[0])[0]


@_builtin("cdr", 1, 1)
def _cdr(args: Args, budget: Budget) -> Value:
    return _non_empty("cdr", args[0])[1:]


@_builtin("cons", 2, 2)
def _cons(args: Args, budget: Budget) -> Value:
    return (args[0], *_as_list("cons", args[1], "a list as its second argument"))


@_builtin("length", 1, 1)
def _length(args: Args, budget: Budget) -> Value:
    if isinstance(args[0], str):
        return len(args[0])
    return len(_as_list("length", args[0], "a list or a string"))


@_builtin("null?", 1, 1)
def _null(args: Args, budget: Budget) -> Value:
    return isinstance(args[0], tuple) and not args[0]


@_builtin("append")
def _append(args: Args, budget: Budget) -> Value:
    return tuple(item for arg in args for item in _as_list("append", arg, "lists"))


@_builtin("nth", 2, 2)
def _nth(args: Args, budget: Budget) -> Value:
    items = _as_list("nth", args[0], "a list as its first argument")
    index = args[1]
    if not isinstance(index, int) or isinstance(index, bool):
        raise EvalError(f"'nth' expects an integer index, got {describe(index)}")
    if not 0 <= index < len(items):
        raise EvalError(f"'nth' index {index} is out of range for a list of length {len(items)}")
    return items[index]


@_builtin("concat")
def _concat(args: Args, budget: Budget) -> Value:
    parts: list[str] = []
    for arg in args:
        if not isinstance(arg, str):
            raise EvalError(f"'concat' expects strings, got {describe(arg)}")
        parts.append(arg)
    return _joined("concat", parts)


@_builtin("str")
def _str(args: Args, budget: Budget) -> Value:
    parts: list[str] = []
    for arg in args:
        text, complete = (arg, True) if isinstance(arg, str) else write(arg, MAX_STRING_LENGTH)
        if not complete:
            raise _too_long("str")
        parts.append(text)
    return _joined("str", parts)


def _too_long(name: str) -> EvalError:
    return EvalError(f"'{name}' result is longer than {MAX_STRING_LENGTH} characters")


def _joined(name: str, parts: list[str]) -> str:
    if sum(map(len, parts)) > MAX_STRING_LENGTH:
        raise _too_long(name)
    return "".join(parts)


@_builtin("get", 2, 3)
def _get(args: Args, budget: Budget) -> Value:
    for pair in _as_list("get", args[0], "a list of (key value) pairs"):
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise EvalError(f"'get' expects (key value) pairs, got {describe(pair)}")
        if equal(pair[0], args[1], budget):
            return pair[1]
    return args[2] if len(args) == 3 else NIL
