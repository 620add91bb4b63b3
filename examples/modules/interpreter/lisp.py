"""A small, sandboxed Lisp interpreter (pure Python, standard library only).

``evaluate(code, context)`` reads every top-level form in ``code``, evaluates them in order in a
fresh global environment and returns the value of the last form as a JSON-compatible Python value.
It is meant to run untrusted input: the only exceptions it raises are :class:`LispError` and its
subclasses (plus ``ValueError`` when the *host* passes a non-positive budget).

Dialect
-------
Reader
    integers ``42 -7``, floats ``3.14 -0.5 1e3``, strings ``"a \\"quoted\\" word\\n"`` (escapes
    ``\\" \\\\ \\n \\t``), symbols, lists ``(a b c)``, ``'x`` for ``(quote x)``, ``;`` line comments,
    booleans ``#t #f true false`` and ``nil`` (the empty list).  Every form remembers its 1-based
    line and column, and error messages point at the form that failed.
Special forms
    ``quote``, ``if`` (test then [else]), ``let`` (parallel bindings), ``define`` (``(define x 5)``
    and ``(define (f a b) body...)``), ``lambda`` (closures, recursion), ``begin``, ``and``,
    ``or``, ``cond`` (with ``else``), ``set!``, ``while`` and ``defined?``.  ``define`` returns the
    defined symbol, ``set!`` the new value.  ``(while test body...)`` evaluates ``body`` as long as
    ``test`` is truthy and returns ``nil``; it loops without recursion, so it never counts against
    ``max_depth``, and every iteration costs steps (the test is evaluated each time), so
    ``max_steps`` still stops an endless loop.  ``(defined? name)`` is ``#t`` when the symbol
    ``name`` (not evaluated) is bound in the current scope or an enclosing one, else ``#f``.
    Special-form names cannot be rebound.
Truthiness
    only ``#f`` and ``nil``/``()`` are false; ``0`` and ``""`` are true.
Builtins
    ``+ - * /`` (variadic; ``/`` of integers gives an integer when exact, else a float; ``(- x)``
    negates, ``(/ x)`` is ``1/x``), ``mod``, ``abs``, ``min``, ``max``, the comparison chains
    ``= != < > <= >=`` (``=`` and ``!=`` compare any values structurally, ``!=`` checks adjacent
    pairs; the ordering ones take all numbers or all strings), ``not``, ``list``, ``car``, ``cdr``,
    ``cons``, ``length`` (lists and strings), ``null?``, ``append``, ``nth`` (``(nth list index)``,
    0-based), ``concat`` (strings), ``str`` (concatenates the printed form of its arguments) and
    ``get`` (``(get alist key [default])``, looks a key up in a list of ``(key value)`` pairs).
Context
    ``context`` maps names to JSON values bound as globals: numbers, strings and booleans as
    themselves, ``None`` as ``nil``, lists as lists and dicts as association lists of
    ``(key value)`` pairs (use ``get``).
Result
    numbers, strings and booleans as themselves, lists (and ``nil``) as Python lists, symbols as
    their name, a lambda as ``"<lambda (x y)>"`` and a builtin as ``"<builtin +>"``.

Limits (defaults)
-----------------
``max_steps=100_000``
    one step per form evaluated; building data also costs one step per 32 list elements or string
    characters created, and comparing or returning data one step per list visited plus one per 32
    of its elements, so exponential data growth is caught too.  Exceeding it raises
    ``LimitError("evaluation exceeded 100000 steps (infinite loop?)")``.
``max_depth=200``
    at most 200 nested lambda calls (``(fact 150)`` fits); deeper raises ``LimitError("recursion
    deeper than 200 calls")``.  The returned value may not be nested deeper than this either, so
    the host can always serialise it with ``json.dumps``.
Integers are capped at 4096 bits and floats must stay finite (``EvalError`` otherwise); ``str``
and ``concat`` produce at most 100000 characters.

The evaluator never uses Python recursion for Lisp evaluation: every special form is a generator
that *yields* the sub-expressions it needs, and a driver loop keeps those generators on an explicit
stack.  Reading, printing, comparing and converting data are iterative as well, so no input can
exhaust Python's recursion limit.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
import re
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeGuard, TypeVar

__all__ = ["EvalError", "LimitError", "LispError", "ParseError", "evaluate"]

MAX_INT_BITS = 4096
MAX_STRING_LENGTH = 100_000
DATA_CHUNK = 32  # list elements or characters per step of data work
SNIPPET_LENGTH = 40  # longest source/value excerpt quoted in error messages


# --------------------------------------------------------------------------------------------- errors


class LispError(Exception):
    """Any error raised while reading or evaluating a program."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message, line, column)
        self.message = message
        self.line = line
        self.column = column

    def __str__(self) -> str:
        if self.line is None or self.column is None:
            return self.message
        return f"{self.message} at line {self.line}, column {self.column}"


class ParseError(LispError):
    """The source text is not a well-formed program."""


class EvalError(LispError):
    """A well-formed program failed while running (unbound symbol, bad argument, ...)."""


class LimitError(LispError):
    """The program exceeded its step or depth budget."""


# ------------------------------------------------------------------------------------ data model


@dataclass(frozen=True, slots=True)
class Symbol:
    name: str


@dataclass(frozen=True, eq=False, slots=True)
class Atom:
    """A literal or symbol in the source, with its position."""

    value: Value
    line: int
    column: int
    start: int
    end: int


@dataclass(frozen=True, eq=False, slots=True)
class ListNode:
    """A parenthesised form in the source, with its position."""

    items: tuple[Node, ...]
    line: int
    column: int
    start: int
    end: int


Node: TypeAlias = "Atom | ListNode"


class Env:
    """A scope: a dict of bindings plus a link to the enclosing scope."""

    __slots__ = ("parent", "vars")

    def __init__(self, bindings: dict[str, Value], parent: Env | None = None) -> None:
        self.vars = bindings
        self.parent = parent

    def find(self, name: str) -> Env | None:
        scope: Env | None = self
        while scope is not None and name not in scope.vars:
            scope = scope.parent
        return scope


@dataclass(eq=False, slots=True)
class Lambda:
    params: tuple[str, ...]
    body: tuple[Node, ...]
    env: Env
    name: str | None = None

    def __str__(self) -> str:
        return f"<lambda ({' '.join(self.params)})>"

    def label(self) -> str:
        return f"'{self.name}'" if self.name else str(self)


class Budget:
    """Counts evaluation steps and raises LimitError once the budget is spent."""

    def __init__(self, max_steps: int) -> None:
        self.max_steps = max_steps
        self.steps = 0
        self.data = 0  # data work not yet charged as a step

    def charge(self, steps: int, where: Node | None = None) -> None:
        self.steps += steps
        if self.steps > self.max_steps:
            line, column = (where.line, where.column) if where is not None else (None, None)
            raise LimitError(f"evaluation exceeded {self.max_steps} steps (infinite loop?)", line, column)

    def charge_data(self, size: int) -> None:
        """Charge one step per DATA_CHUNK list elements or characters (carrying the remainder)."""
        self.data += size
        if self.data >= DATA_CHUNK:
            steps, self.data = divmod(self.data, DATA_CHUNK)
            self.charge(steps)

    def charge_list(self, size: int) -> None:
        """Visiting a list while comparing or returning data: one step, plus its elements."""
        self.charge(1)
        self.charge_data(size)


Args: TypeAlias = "tuple[Value, ...]"
BuiltinFn: TypeAlias = "Callable[[Args, Budget], Value]"


@dataclass(frozen=True, eq=False, slots=True)
class Builtin:
    name: str
    min_args: int
    max_args: int | None
    fn: BuiltinFn

    def __str__(self) -> str:
        return f"<builtin {self.name}>"


Value: TypeAlias = "int | float | str | bool | Symbol | tuple[Value, ...] | Lambda | Builtin"
Number: TypeAlias = "int | float"
NIL: tuple[Value, ...] = ()
T = TypeVar("T")
R = TypeVar("R")


def _is_number(value: object) -> TypeGuard[Number]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _truthy(value: Value) -> bool:
    return not (value is False or (isinstance(value, tuple) and not value))


# ------------------------------------------------------------------------------ iterative helpers


class _CycleError(Exception):
    """A container that (indirectly) contains itself."""


def _map_tree(
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


def _write(value: Value, limit: int) -> tuple[str, bool]:
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


def _excerpt(text: str) -> str:
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


def _describe(value: Value) -> str:
    """E.g. ``string "a"`` or ``list (1 2)``, for error messages."""
    text, complete = _write(value, SNIPPET_LENGTH)
    return f"{_type_name(value)} {text if complete else text[: SNIPPET_LENGTH - 3] + '...'}"


def _equal(left: Value, right: Value, budget: Budget) -> bool:
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
    if _is_number(a) and _is_number(b):
        return a == b
    if isinstance(a, str | Symbol) and type(a) is type(b):
        return a == b
    return a is b  # functions (and mismatched kinds) are only equal to themselves


# ------------------------------------------------------------------------------------------ reader

_TOKEN = re.compile(
    r"""(?P<space>\s+)|(?P<comment>;[^\n]*)|(?P<open>\()|(?P<close>\))|(?P<quote>')
    |(?P<string>"(?:[^"\\]|\\.)*")|(?P<unterminated>")|(?P<atom>[^\s()'";]+)""",
    re.VERBOSE | re.DOTALL,
)
_INTEGER = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+(?=[eE]))(?:[eE][+-]?[0-9]+)?")
_NUMERIC_START = re.compile(r"[+-]?\.?[0-9]")
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}
_LITERALS: dict[str, Value] = {"#t": True, "#f": False, "true": True, "false": False, "nil": NIL}


@dataclass(slots=True)
class _Open:
    """A list being read: its items so far and the quotes waiting for their next form."""

    items: list[Node]
    quotes: list[tuple[int, int, int]]  # (line, column, start) of each pending '
    line: int = 0
    column: int = 0
    start: int = 0


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", source)]

    def position(self, offset: int) -> tuple[int, int]:
        line = bisect.bisect_right(self.line_starts, offset)
        return line, offset - self.line_starts[line - 1] + 1

    def read(self) -> list[Node]:
        stack = [_Open([], [])]
        offset = 0
        while offset < len(self.source):
            match = _TOKEN.match(self.source, offset)
            assert match is not None  # every character starts some token
            assert match.lastgroup is not None
            self.token(match.lastgroup, match, stack)
            offset = match.end()
        if len(stack) > 1:
            raise ParseError("unclosed '(' opened", stack[-1].line, stack[-1].column)
        self.check_no_pending_quote(stack[0])
        if not stack[0].items:
            raise ParseError("empty program: nothing to evaluate")
        return stack[0].items

    def token(self, kind: str, match: re.Match[str], stack: list[_Open]) -> None:
        line, column = self.position(match.start())
        if kind == "open":
            stack.append(_Open([], [], line, column, match.start()))
        elif kind == "close":
            if len(stack) == 1:
                raise ParseError("unexpected ')'", line, column)
            self.check_no_pending_quote(stack[-1])
            done = stack.pop()
            self.emit(stack[-1], ListNode(tuple(done.items), done.line, done.column, done.start, match.end()))
        elif kind == "quote":
            stack[-1].quotes.append((line, column, match.start()))
        elif kind == "unterminated":
            raise ParseError("unterminated string", line, column)
        elif kind in ("string", "atom"):
            read = _read_string if kind == "string" else _read_atom
            self.emit(stack[-1], Atom(read(match[0], line, column), line, column, match.start(), match.end()))

    @staticmethod
    def emit(parent: _Open, node: Node) -> None:
        while parent.quotes:
            line, column, start = parent.quotes.pop()
            quote = Atom(Symbol("quote"), line, column, start, start + 1)
            node = ListNode((quote, node), line, column, start, node.end)
        parent.items.append(node)

    @staticmethod
    def check_no_pending_quote(level: _Open) -> None:
        if level.quotes:
            line, column, _ = level.quotes[-1]
            raise ParseError("nothing to quote after '", line, column)


def _read_string(token: str, line: int, column: int) -> str:
    def unescape(match: re.Match[str]) -> str:
        if match[1] not in _ESCAPES:
            raise ParseError(f"unknown escape '\\{match[1]}' in string", line, column)
        return _ESCAPES[match[1]]

    return _ESCAPE.sub(unescape, token[1:-1])


def _read_atom(token: str, line: int, column: int) -> Value:
    if token in _LITERALS:
        return _LITERALS[token]
    if token.startswith("#"):
        raise ParseError(f"unknown literal '{_excerpt(token)}'", line, column)
    if not _NUMERIC_START.match(token):
        return Symbol(token)
    if _INTEGER.fullmatch(token):
        if len(token) > MAX_INT_BITS // 3 or int(token).bit_length() > MAX_INT_BITS:
            raise ParseError(f"integer literal exceeds {MAX_INT_BITS} bits", line, column)
        return int(token)
    if _FLOAT.fullmatch(token):
        number = float(token)
        if not math.isfinite(number):
            raise ParseError(f"float literal '{_excerpt(token)}' is out of range", line, column)
        return number
    raise ParseError(f"invalid number '{_excerpt(token)}'", line, column)


def _parse(source: str) -> list[Node]:
    return _Reader(source).read()


# ---------------------------------------------------------------------------------------- builtins

_BUILTINS: dict[str, Builtin] = {}


def _builtin(name: str, min_args: int = 0, max_args: int | None = None) -> Callable[[BuiltinFn], BuiltinFn]:
    def register(fn: BuiltinFn) -> BuiltinFn:
        _BUILTINS[name] = Builtin(name, min_args, max_args, fn)
        return fn

    return register


def _numbers(name: str, args: Args) -> list[Number]:
    numbers: list[Number] = []
    for arg in args:
        if not _is_number(arg):
            raise EvalError(f"'{name}' expects numbers, got {_describe(arg)}")
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
                    raise EvalError(f"'{name}' expects strings, got {_describe(arg)}")
        else:
            _numbers(name, args)
        return all(test(a, b) for a, b in itertools.pairwise(args))

    return compare


for _name, _test in {"<": operator.lt, ">": operator.gt, "<=": operator.le, ">=": operator.ge}.items():
    _BUILTINS[_name] = Builtin(_name, 1, None, _comparison(_name, _test))


@_builtin("=", 1)
def _equals(args: Args, budget: Budget) -> Value:
    return all(_equal(a, b, budget) for a, b in itertools.pairwise(args))


@_builtin("!=", 1)
def _not_equals(args: Args, budget: Budget) -> Value:
    return not any(_equal(a, b, budget) for a, b in itertools.pairwise(args))


@_builtin("not", 1, 1)
def _not(args: Args, budget: Budget) -> Value:
    return not _truthy(args[0])


def _as_list(name: str, value: Value, what: str = "a list") -> tuple[Value, ...]:
    if not isinstance(value, tuple):
        raise EvalError(f"'{name}' expects {what}, got {_describe(value)}")
    return value


def _non_empty(name: str, value: Value) -> tuple[Value, ...]:
    items = _as_list(name, value, "a non-empty list")
    if not items:
        raise EvalError(f"'{name}' expects a non-empty list, got {_describe(value)}")
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
        raise EvalError(f"'nth' expects an integer index, got {_describe(index)}")
    if not 0 <= index < len(items):
        raise EvalError(f"'nth' index {index} is out of range for a list of length {len(items)}")
    return items[index]


@_builtin("concat")
def _concat(args: Args, budget: Budget) -> Value:
    parts: list[str] = []
    for arg in args:
        if not isinstance(arg, str):
            raise EvalError(f"'concat' expects strings, got {_describe(arg)}")
        parts.append(arg)
    return _joined("concat", parts)


@_builtin("str")
def _str(args: Args, budget: Budget) -> Value:
    parts: list[str] = []
    for arg in args:
        text, complete = (arg, True) if isinstance(arg, str) else _write(arg, MAX_STRING_LENGTH)
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
            raise EvalError(f"'get' expects (key value) pairs, got {_describe(pair)}")
        if _equal(pair[0], args[1], budget):
            return pair[1]
    return args[2] if len(args) == 3 else NIL


# -------------------------------------------------------------------------------------- evaluator

_Eval: TypeAlias = "Generator[tuple[Node, Env], Value, Value]"


def _arity_text(min_args: int, max_args: int | None) -> str:
    if max_args is None:
        count, noun = f"at least {min_args}", min_args
    elif max_args == min_args:
        count, noun = str(min_args), min_args
    elif max_args == min_args + 1:
        count, noun = f"{min_args} or {max_args}", max_args
    else:
        count, noun = f"{min_args} to {max_args}", max_args
    return f"{count} argument{'' if noun == 1 else 's'}"


def _check_arity(label: str, count: int, min_args: int, max_args: int | None) -> None:
    if count < min_args or (max_args is not None and count > max_args):
        raise EvalError(f"{label} expects {_arity_text(min_args, max_args)}, got {count}")


def _located(error: LispError, node: Node) -> LispError:
    if error.line is not None:
        return error
    return type(error)(error.message, node.line, node.column)


def _node_children(node: Node) -> tuple[Node, ...] | None:
    return node.items if isinstance(node, ListNode) else None


def _node_value(node: Node) -> Value:
    return node.value if isinstance(node, Atom) else NIL


def _as_tuple(_: object, items: list[Value]) -> Value:
    return tuple(items)


def _symbol_name(node: Node) -> str | None:
    if isinstance(node, Atom) and isinstance(node.value, Symbol):
        return node.value.name
    return None


class _Interpreter:
    def __init__(self, source: str, max_steps: int, max_depth: int) -> None:
        self.source = source
        self.budget = Budget(max_steps)
        self.max_depth = max_depth
        self.depth = 0
        self.quoted: dict[int, Value] = {}

    # -- driver

    def run(self, root: Node, env: Env) -> Value:
        """Evaluate ``root`` with an explicit stack of special-form generators."""
        stack: list[_Eval] = []
        request: tuple[Node, Env] | None = (root, env)
        value: Value = NIL
        while True:
            try:
                if request is not None:
                    node, node_env = request
                    self.budget.charge(1, node)
                    if isinstance(node, Atom):
                        value, request = self.eval_atom(node, node_env), None
                        continue
                    stack.append(self.eval_list(node, node_env))
                    request = next(stack[-1])
                elif not stack:
                    return value
                else:
                    request = stack[-1].send(value)
            except StopIteration as done:
                stack.pop()
                value, request = done.value, None

    def eval_atom(self, node: Atom, env: Env) -> Value:
        if not isinstance(node.value, Symbol):
            return node.value
        name = node.value.name
        scope = env.find(name)
        if scope is not None:
            return scope.vars[name]
        if name in _SPECIAL_FORMS or name in _SIMPLE_FORMS:
            raise EvalError(f"special form '{name}' cannot be used as a value", node.line, node.column)
        raise EvalError(f"unbound symbol '{name}'", node.line, node.column)

    def eval_list(self, node: ListNode, env: Env) -> _Eval:
        if not node.items:
            return NIL
        name = _symbol_name(node.items[0]) or ""
        if name in _SIMPLE_FORMS:
            return _SIMPLE_FORMS[name](self, node, env)
        if name in _SPECIAL_FORMS:
            return (yield from _SPECIAL_FORMS[name](self, node, env))
        function = yield node.items[0], env
        args: list[Value] = []
        for arg in node.items[1:]:
            args.append((yield arg, env))
        if isinstance(function, Builtin):
            return self.call_builtin(function, tuple(args), node)
        if isinstance(function, Lambda):
            return (yield from self.call_lambda(function, tuple(args), node))
        raise EvalError(f"cannot call {_describe(function)}", node.line, node.column)

    def eval_body(self, body: Sequence[Node], env: Env) -> _Eval:
        result: Value = NIL
        for form in body:
            result = yield form, env
        return result

    # -- calls

    def call_builtin(self, function: Builtin, args: Args, node: ListNode) -> Value:
        try:
            _check_arity(f"'{function.name}'", len(args), function.min_args, function.max_args)
            result = function.fn(args, self.budget)
            self.budget.charge_data(len(result) if isinstance(result, tuple | str) else 0)
        except ArithmeticError as error:
            reason = "division by zero" if isinstance(error, ZeroDivisionError) else str(error)
            raise EvalError(f"{reason} in {self.snippet(node)}", node.line, node.column) from None
        except LispError as error:
            raise _located(error, node) from None
        return result

    def call_lambda(self, function: Lambda, args: Args, node: ListNode) -> _Eval:
        try:
            _check_arity(function.label(), len(args), len(function.params), len(function.params))
        except LispError as error:
            raise _located(error, node) from None
        if self.depth >= self.max_depth:
            raise LimitError(f"recursion deeper than {self.max_depth} calls", node.line, node.column)
        scope = Env(dict(zip(function.params, args, strict=True)), function.env)
        self.depth += 1
        result = yield from self.eval_body(function.body, scope)
        self.depth -= 1
        return result

    # -- syntax helpers

    def snippet(self, node: Node) -> str:
        return _excerpt(self.source[node.start : node.end])

    def error(self, message: str, node: Node) -> EvalError:
        return EvalError(message, node.line, node.column)

    def check_form(self, node: ListNode, min_args: int, max_args: int | None = None) -> None:
        try:
            _check_arity(f"'{_symbol_name(node.items[0])}'", len(node.items) - 1, min_args, max_args)
        except LispError as error:
            raise _located(error, node) from None

    def binding_name(self, node: Node, form: str) -> str:
        name = _symbol_name(node)
        if name is None:
            raise self.error(f"'{form}' expects a symbol, got {self.snippet(node)}", node)
        if name in _SPECIAL_FORMS or name in _SIMPLE_FORMS:
            raise self.error(f"'{name}' is a special form and cannot be rebound", node)
        return name

    def params(self, nodes: Sequence[Node], form: str) -> tuple[str, ...]:
        names: list[str] = []
        for node in nodes:
            name = self.binding_name(node, form)
            if name in names:
                raise self.error(f"duplicate parameter '{name}' in {form}", node)
            names.append(name)
        return tuple(names)

    def let_bindings(self, node: Node) -> list[tuple[str, Node]]:
        if not isinstance(node, ListNode):
            raise self.error(f"'let' expects a list of (name value) bindings, got {self.snippet(node)}", node)
        pairs: list[tuple[str, Node]] = []
        for binding in node.items:
            if not isinstance(binding, ListNode) or len(binding.items) != 2:
                raise self.error(
                    f"malformed let binding {self.snippet(binding)}: expected (name value)", binding
                )
            name = self.binding_name(binding.items[0], "let")
            if any(name == seen for seen, _ in pairs):
                raise self.error(f"duplicate name '{name}' in let", binding.items[0])
            pairs.append((name, binding.items[1]))
        return pairs

    # -- special forms

    def form_quote(self, node: ListNode, env: Env) -> Value:
        self.check_form(node, 1, 1)
        quoted = node.items[1]
        if id(quoted) not in self.quoted:
            self.quoted[id(quoted)] = _map_tree(quoted, _node_children, _node_value, _as_tuple)
        return self.quoted[id(quoted)]

    def form_lambda(self, node: ListNode, env: Env) -> Value:
        self.check_form(node, 2)
        params = node.items[1]
        if not isinstance(params, ListNode):
            raise self.error(f"'lambda' expects a parameter list, got {self.snippet(params)}", params)
        return Lambda(self.params(params.items, "lambda"), node.items[2:], env)

    def form_if(self, node: ListNode, env: Env) -> _Eval:
        self.check_form(node, 2, 3)
        if _truthy((yield node.items[1], env)):
            return (yield node.items[2], env)
        return (yield node.items[3], env) if len(node.items) == 4 else NIL

    def form_let(self, node: ListNode, env: Env) -> _Eval:
        self.check_form(node, 2)
        scope: dict[str, Value] = {}
        for name, expression in self.let_bindings(node.items[1]):
            scope[name] = yield expression, env
        return (yield from self.eval_body(node.items[2:], Env(scope, env)))

    def form_define(self, node: ListNode, env: Env) -> _Eval:
        self.check_form(node, 2)
        target = node.items[1]
        if isinstance(target, ListNode):  # (define (name params...) body...)
            if not target.items:
                raise self.error("'define' expects a symbol, got ()", target)
            name = self.binding_name(target.items[0], "define")
            env.vars[name] = Lambda(self.params(target.items[1:], "define"), node.items[2:], env, name)
            return Symbol(name)
        self.check_form(node, 2, 2)
        name = self.binding_name(target, "define")
        value = yield node.items[2], env
        if isinstance(value, Lambda) and value.name is None:
            value.name = name
        env.vars[name] = value
        return Symbol(name)

    def form_set(self, node: ListNode, env: Env) -> _Eval:
        self.check_form(node, 2, 2)
        name = self.binding_name(node.items[1], "set!")
        value = yield node.items[2], env
        scope = env.find(name)
        if scope is None:
            raise self.error(f"cannot set! unbound symbol '{name}'", node.items[1])
        scope.vars[name] = value
        return value

    def form_begin(self, node: ListNode, env: Env) -> _Eval:
        return (yield from self.eval_body(node.items[1:], env))

    def form_and(self, node: ListNode, env: Env) -> _Eval:
        result: Value = True
        for expression in node.items[1:]:
            result = yield expression, env
            if not _truthy(result):
                break
        return result

    def form_or(self, node: ListNode, env: Env) -> _Eval:
        result: Value = False
        for expression in node.items[1:]:
            result = yield expression, env
            if _truthy(result):
                break
        return result

    def form_while(self, node: ListNode, env: Env) -> _Eval:
        self.check_form(node, 1)
        while _truthy((yield node.items[1], env)):
            for form in node.items[2:]:
                yield form, env
        return NIL

    def form_defined(self, node: ListNode, env: Env) -> Value:
        self.check_form(node, 1, 1)
        name = _symbol_name(node.items[1])
        if name is None:
            raise self.error(f"'defined?' expects a symbol, got {self.snippet(node.items[1])}", node.items[1])
        return env.find(name) is not None

    def form_cond(self, node: ListNode, env: Env) -> _Eval:
        for clause in node.items[1:]:
            if not isinstance(clause, ListNode) or not clause.items:
                raise self.error(
                    f"malformed cond clause {self.snippet(clause)}: expected (test body...)", clause
                )
            test_node = clause.items[0]
            test = True if _symbol_name(test_node) == "else" else (yield test_node, env)
            if _truthy(test):
                return (yield from self.eval_body(clause.items[1:], env)) if len(clause.items) > 1 else test
        return NIL


# Forms that evaluate sub-expressions are generators; quote, lambda and defined? never do.
_SPECIAL_FORMS: dict[str, Callable[[_Interpreter, ListNode, Env], _Eval]] = {
    "if": _Interpreter.form_if,
    "let": _Interpreter.form_let,
    "define": _Interpreter.form_define,
    "set!": _Interpreter.form_set,
    "begin": _Interpreter.form_begin,
    "and": _Interpreter.form_and,
    "or": _Interpreter.form_or,
    "cond": _Interpreter.form_cond,
    "while": _Interpreter.form_while,
}
_SIMPLE_FORMS: dict[str, Callable[[_Interpreter, ListNode, Env], Value]] = {
    "quote": _Interpreter.form_quote,
    "lambda": _Interpreter.form_lambda,
    "defined?": _Interpreter.form_defined,
}


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


def _from_json(name: str, value: Any) -> Value:
    try:
        return _map_tree(value, _json_children, _json_leaf, _as_tuple)
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


def _to_json(value: Value, budget: Budget, max_depth: int) -> Any:
    def enter(_: Value, size: int, depth: int) -> None:
        if depth > max_depth:
            raise LimitError(f"result nested deeper than {max_depth} levels")
        budget.charge_list(size)

    return _map_tree(
        value, lambda v: v if isinstance(v, tuple) else None, _result_leaf, lambda _, kids: kids, enter
    )


def _global_env(context: Mapping[str, Any] | None) -> Env:
    bindings: dict[str, Value] = dict(_BUILTINS)
    for name, value in (context or {}).items():
        if not isinstance(name, str):
            raise EvalError(f"context names must be strings, got {name!r}")
        bindings[name] = _from_json(name, value)
    return Env(bindings)


# ------------------------------------------------------------------------------------- entry point


def evaluate(
    code: str,
    context: Mapping[str, Any] | None = None,
    *,
    max_steps: int = 100_000,
    max_depth: int = 200,
) -> Any:
    """Run ``code`` and return the value of its last form as JSON-compatible data.

    Raises ParseError, EvalError or LimitError (all LispError) and nothing else for any ``code``;
    ``ValueError`` only if ``max_steps`` or ``max_depth`` is not positive.
    """
    if max_steps < 1 or max_depth < 1:
        raise ValueError("max_steps and max_depth must be positive")
    try:
        forms = _parse(code)
        env = _global_env(context)
        interpreter = _Interpreter(code, max_steps, max_depth)
        result: Value = NIL
        for form in forms:
            result = interpreter.run(form, env)
        return _to_json(result, interpreter.budget, max_depth)
    except LispError:
        raise
    except Exception as error:  # defensive: the contract is that nothing but LispError escapes
        raise EvalError(f"internal error: {type(error).__name__}: {error}") from error
