"""The ALGOL syntax tree: what the parser builds and the code generator reads.

Expressions are immutable values; operators keep their ALGOL spelling (``"+"``, ``"<>"``,
``"DIV"``, ``"AND"``) and the code generator maps them to Lisp.  Chains of one precedence level
(``a + b - c``) are left-deep ``Binary`` nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

__all__ = [
    "Assign", "Binary", "Block", "Bool", "Conditional", "Expr", "For", "If", "Num", "Program",
    "Statement", "Str", "Unary", "Var", "While",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Num:
    value: int | float


@dataclass(frozen=True, slots=True)
class Str:
    value: str


@dataclass(frozen=True, slots=True)
class Bool:
    value: bool


@dataclass(frozen=True, slots=True)
class Var:
    name: str


@dataclass(frozen=True, slots=True)
class Unary:
    op: str  # "-", "NOT"
    operand: Expr


@dataclass(frozen=True, slots=True)
class Binary:
    op: str  # arithmetic, comparison, AND, OR
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Conditional:
    """``IF test THEN then ELSE else_`` used as a value."""

    test: Expr
    then: Expr
    else_: Expr


Expr: TypeAlias = "Num | Str | Bool | Var | Unary | Binary | Conditional"


@dataclass(frozen=True, slots=True)
class Assign:
    name: str
    value: Expr


@dataclass(frozen=True, slots=True)
class If:
    test: Expr
    then: Statement
    else_: Statement | None = None


@dataclass(frozen=True, slots=True)
class While:
    test: Expr
    body: Statement


@dataclass(frozen=True, slots=True)
class For:
    """``FOR var := start [STEP step] UNTIL limit DO body``; no STEP means a step of 1."""

    var: str
    start: Expr
    step: Expr
    limit: Expr
    body: Statement


@dataclass(frozen=True, slots=True)
class Block:
    """``BEGIN s1; s2; ... END``."""

    body: tuple[Statement, ...]


Statement: TypeAlias = "Assign | If | While | For | Block"


@dataclass(frozen=True, slots=True)
class Program:
    body: tuple[Statement, ...]
