"""The Lisp's values and the objects they live in: errors, source nodes, scopes, lambdas, budgets.

Everything here is plain data; reading, printing and evaluating it live in the other ``lisp_*`` files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias, TypeGuard

MAX_INT_BITS = 4096
MAX_STRING_LENGTH = 100_000
DATA_CHUNK = 32  # list elements or characters per step of data work


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


def is_number(value: object) -> TypeGuard[Number]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def truthy(value: Value) -> bool:
    return not (value is False or (isinstance(value, tuple) and not value))
