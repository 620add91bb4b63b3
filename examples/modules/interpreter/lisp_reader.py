"""The Lisp reader: source text to a list of located forms, or a ParseError pointing at the problem."""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass

from lisp_data import excerpt
from lisp_values import MAX_INT_BITS, NIL, Atom, ListNode, Node, ParseError, Symbol, Value

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
LITERALS: dict[str, Value] = {"#t": True, "#f": False, "true": True, "false": False, "nil": NIL}


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
    if token in LITERALS:
        return LITERALS[token]
    if token.startswith("#"):
        raise ParseError(f"unknown literal '{excerpt(token)}'", line, column)
    if not _NUMERIC_START.match(token):
        return Symbol(token)
    if _INTEGER.fullmatch(token):
        if len(token) > MAX_INT_BITS // 3 or int(token).bit_length() > MAX_INT_BITS:
            raise ParseError(f"integer literal exceeds {MAX_INT_BITS} bits", line, column)
        return int(token)
    if _FLOAT.fullmatch(token):
        number = float(token)
        if not math.isfinite(number):
            raise ParseError(f"float literal '{excerpt(token)}' is out of range", line, column)
        return number
    raise ParseError(f"invalid number '{excerpt(token)}'", line, column)


def parse(source: str) -> list[Node]:
    return _Reader(source).read()
