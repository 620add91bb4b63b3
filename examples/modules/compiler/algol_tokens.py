"""The ALGOL lexer: source text to tokens that know their line and column.

Keywords are case-insensitive (``begin``, ``Begin`` and ``BEGIN`` are one keyword); identifiers
are case-sensitive, because they become Lisp symbols.  ``COMMENT ... ;`` is skipped, wherever it
appears.  Every lexical mistake is an :class:`AlgolSyntaxError` pointing at its first character.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = [
    "EOF",
    "IDENT",
    "KEYWORDS",
    "LISP_NAMES",
    "NUMBER",
    "STRING",
    "AlgolSyntaxError",
    "Token",
    "tokenize",
]

IDENT, NUMBER, STRING, EOF = "IDENT", "NUMBER", "STRING", "EOF"
KEYWORDS = frozenset(
    {
        "BEGIN", "END", "IF", "THEN", "ELSE", "FOR", "STEP", "UNTIL", "DO", "WHILE",
        "AND", "OR", "NOT", "DIV", "MOD", "TRUE", "FALSE", "COMMENT",
    }
)  # fmt: skip
# Names the interpreter's Lisp already gives a meaning to (special forms, builtins, literals) that
# would otherwise be valid identifiers: a variable with one of these names would shadow it.
LISP_NAMES = frozenset(
    {
        "quote", "let", "define", "lambda", "cond", "nil",
        "abs", "min", "max", "list", "car", "cdr", "cons", "length", "append", "nth", "concat", "str", "get",
    }
)  # fmt: skip
MAX_INTEGER_DIGITS = 1000  # the interpreter caps integers at 4096 bits (1233 digits)
SNIPPET_LENGTH = 20

_TOKEN = re.compile(
    r"""(?P<newline>\n)|(?P<space>[ \t\r\f\v]+)
    |(?P<number>[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)
    |(?P<word>[A-Za-z][A-Za-z0-9_]*)
    |(?P<string>"(?:[^"\n]|"")*")|(?P<unterminated>")
    |(?P<op>:=|<=|>=|<>|[-+*/=<>();])
    |(?P<bad>.)""",
    re.VERBOSE,
)
_HINTS = {":": " (assignment is ':=')", "!": " (not equal is '<>')", "'": " (strings use double quotes)"}


class AlgolSyntaxError(Exception):
    """The source is not a program of the ALGOL subset; ``line`` and ``column`` are 1-based."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message, line, column)
        self.message = message
        self.line = line
        self.column = column

    def __str__(self) -> str:
        return f"syntax error at line {self.line}, column {self.column}: {self.message}"


@dataclass(frozen=True, slots=True)
class Token:
    """``kind`` is IDENT, NUMBER, STRING, EOF, a keyword (``"IF"``) or an operator (``":="``)."""

    kind: str
    text: str
    line: int
    column: int
    value: int | float | str | None = None

    def describe(self) -> str:
        """How an error message names this token: ``'y'`` or ``end of program``."""
        if self.kind == EOF:
            return "end of program"
        text = self.text if len(self.text) <= SNIPPET_LENGTH else self.text[: SNIPPET_LENGTH - 3] + "..."
        return f"'{text}'"


def tokenize(source: str) -> list[Token]:
    """Every token of ``source``, ending with one EOF token."""
    return _Lexer(source).run()


class _Lexer:
    def __init__(self, source: str) -> None:
        self.source = source
        self.line = 1
        self.line_start = 0  # offset of the current line's first character
        self.tokens: list[Token] = []

    def run(self) -> list[Token]:
        position = 0
        while position < len(self.source):
            match = _TOKEN.match(self.source, position)
            assert match is not None  # `bad` matches any character
            assert match.lastgroup is not None
            position = self.token(match.lastgroup, match)
        self.tokens.append(Token(EOF, "", self.line, len(self.source) - self.line_start + 1))
        return self.tokens

    def token(self, kind: str, match: re.Match[str]) -> int:
        """Handle one match; return where the next token starts."""
        text, column = match[0], match.start() - self.line_start + 1
        if kind == "newline":
            self.line, self.line_start = self.line + 1, match.end()
        elif kind == "number":
            self.tokens.append(Token(NUMBER, text, self.line, column, _number(text, self.line, column)))
        elif kind == "word":
            return self.word(text, match, column)
        elif kind == "string":
            self.tokens.append(Token(STRING, text, self.line, column, text[1:-1].replace('""', '"')))
        elif kind == "unterminated":
            raise AlgolSyntaxError(
                "unterminated string (close it with '\"' on the same line)", self.line, column
            )
        elif kind == "op":
            self.tokens.append(Token(text, text, self.line, column))
        elif kind == "bad":
            raise AlgolSyntaxError(f"unexpected character {text!r}{_HINTS.get(text, '')}", self.line, column)
        return match.end()

    def word(self, text: str, match: re.Match[str], column: int) -> int:
        keyword = text.upper()
        if keyword == "COMMENT":
            return self.skip_comment(match.end(), column)
        if keyword in KEYWORDS:
            self.tokens.append(Token(keyword, text, self.line, column))
        elif text in LISP_NAMES:
            message = f"'{text}' is a name of the target Lisp and cannot be a variable; rename it"
            raise AlgolSyntaxError(message, self.line, column)
        else:
            self.tokens.append(Token(IDENT, text, self.line, column, text))
        return match.end()

    def skip_comment(self, start: int, column: int) -> int:
        end = self.source.find(";", start)
        if end < 0:
            raise AlgolSyntaxError("unterminated comment (COMMENT runs to the next ';')", self.line, column)
        for offset in range(start, end):  # keep line numbers right past a multi-line comment
            if self.source[offset] == "\n":
                self.line, self.line_start = self.line + 1, offset + 1
        return end + 1


def _number(text: str, line: int, column: int) -> int | float:
    if text.isdigit():
        if len(text) > MAX_INTEGER_DIGITS:
            raise AlgolSyntaxError(f"integer literal longer than {MAX_INTEGER_DIGITS} digits", line, column)
        return int(text)
    number = float(text)
    if not math.isfinite(number):
        raise AlgolSyntaxError(f"real literal {text!r} is out of range", line, column)
    return number
