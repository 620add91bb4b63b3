"""The ALGOL parser: tokens to a syntax tree, by recursive descent.

Grammar (``{}`` repeats, ``[]`` is optional; keywords in capitals are case-insensitive)::

    program     = statements EOF
    statements  = [statement] {";" [statement]}
    statement   = IDENT ":=" expression
                | IF expression THEN statement [ELSE statement]
                | FOR IDENT ":=" expression [STEP expression] UNTIL expression DO statement
                | WHILE expression DO statement
                | BEGIN statements END
    expression  = IF expression THEN disjunction ELSE expression | disjunction
    disjunction = conjunction {OR conjunction}
    conjunction = negation {AND negation}
    negation    = NOT negation | relation
    relation    = sum [("=" | "<>" | "<" | ">" | "<=" | ">=") sum]
    sum         = term {("+" | "-") term}
    term        = factor {("*" | "/" | DIV | MOD) factor}
    factor      = ("-" | "+") factor | primary
    primary     = NUMBER | STRING | TRUE | FALSE | IDENT | "(" expression ")"

An ELSE belongs to the nearest IF that has none (``IF a THEN IF b THEN x := 1 ELSE x := 2``
gives the ELSE to ``IF b``).  Comparisons do not chain.  Nesting (parentheses, unary operators,
nested statements) is limited to MAX_NESTING levels so no input can exhaust Python's stack.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from algol_ast import (
    Assign,
    Binary,
    Block,
    Bool,
    Conditional,
    Expr,
    For,
    If,
    Num,
    Program,
    Statement,
    Str,
    Unary,
    Var,
    While,
)
from algol_tokens import EOF, IDENT, NUMBER, STRING, AlgolSyntaxError, Token

__all__ = ["MAX_NESTING", "parse"]

MAX_NESTING = 50
RELATIONS = frozenset({"=", "<>", "<", ">", "<=", ">="})
T = TypeVar("T")


def parse(tokens: list[Token], max_nesting: int = MAX_NESTING) -> Program:
    """The program the tokens spell (the last token must be EOF), nested at most `max_nesting` deep."""
    return _Parser(tokens, max_nesting).program()


class _Parser:
    def __init__(self, tokens: list[Token], max_nesting: int) -> None:
        self.tokens = tokens
        self.position = 0
        self.depth = 0
        self.max_nesting = max_nesting

    # -- token helpers

    def peek(self) -> Token:
        return self.tokens[self.position]

    def advance(self) -> Token:
        token = self.tokens[self.position]
        if token.kind != EOF:
            self.position += 1
        return token

    def accept(self, *kinds: str) -> Token | None:
        return self.advance() if self.peek().kind in kinds else None

    def expect(self, kind: str, expected: str | None = None) -> Token:
        if self.peek().kind != kind:
            raise self.error(expected or kind)
        return self.advance()

    def error(self, expected: str, hint: str = "") -> AlgolSyntaxError:
        token = self.peek()
        return AlgolSyntaxError(
            f"expected {expected}, found {token.describe()}{hint}", token.line, token.column
        )

    def nested(self, parse: Callable[[], T]) -> T:
        """Run ``parse`` one nesting level deeper; refuse more than ``max_nesting`` levels."""
        if self.depth >= self.max_nesting:
            token = self.peek()
            raise AlgolSyntaxError(f"nesting deeper than {self.max_nesting} levels", token.line, token.column)
        self.depth += 1
        try:
            return parse()
        finally:
            self.depth -= 1

    # -- statements

    def program(self) -> Program:
        body = self.statements()
        if self.peek().kind == "END":
            token = self.peek()
            raise AlgolSyntaxError("END without a matching BEGIN", token.line, token.column)
        if self.peek().kind != EOF:
            raise self.error("';' or end of program")
        if not body:
            raise AlgolSyntaxError("empty program: write at least one statement", 1, 1)
        return Program(tuple(body))

    def statements(self) -> list[Statement]:
        """Statements separated by ';'; empty statements (``;;``, a ``;`` before END) are allowed."""
        body: list[Statement] = []
        while True:
            if self.accept(";"):
                continue
            if self.peek().kind in ("END", EOF):
                return body
            body.append(self.nested(self.statement))
            if not self.accept(";"):
                return body

    def statement(self) -> Statement:
        kind = self.peek().kind
        if kind == IDENT:
            return self.assignment()
        if kind == "BEGIN":
            return self.block()
        if kind == "IF":
            return self.if_statement()
        if kind == "FOR":
            return self.for_statement()
        if kind == "WHILE":
            return self.while_statement()
        raise self.error("a statement")

    def assignment(self) -> Assign:
        name = self.expect(IDENT, "a variable name").text
        self.expect(":=", "':='")
        return Assign(name, self.expression())

    def block(self) -> Block:
        begin = self.expect("BEGIN")
        body = self.statements()
        if self.peek().kind != "END":
            open_hint = f" (the BEGIN at line {begin.line}, column {begin.column} is not closed)"
            raise self.error("';' or END", open_hint if self.peek().kind == EOF else "")
        self.advance()
        return Block(tuple(body))

    def if_statement(self) -> If:
        self.expect("IF")
        test = self.expression()
        self.expect("THEN")
        then = self.nested(self.statement)
        else_ = self.nested(self.statement) if self.accept("ELSE") else None
        return If(test, then, else_)

    def for_statement(self) -> For:
        self.expect("FOR")
        var = self.expect(IDENT, "a variable name").text
        self.expect(":=", "':='")
        start = self.expression()
        has_step = self.accept("STEP") is not None
        step: Expr = self.expression() if has_step else Num(1)
        self.expect("UNTIL", "UNTIL" if has_step else "STEP or UNTIL")
        limit = self.expression()
        self.expect("DO")
        return For(var, start, step, limit, self.nested(self.statement))

    def while_statement(self) -> While:
        self.expect("WHILE")
        test = self.expression()
        self.expect("DO")
        return While(test, self.nested(self.statement))

    # -- expressions, lowest precedence first

    def expression(self) -> Expr:
        if not self.accept("IF"):
            return self.disjunction()
        test = self.nested(self.expression)
        self.expect("THEN")
        then = self.disjunction()
        self.expect("ELSE")
        return Conditional(test, then, self.nested(self.expression))

    def disjunction(self) -> Expr:
        return self.chain(self.conjunction, "OR")

    def conjunction(self) -> Expr:
        return self.chain(self.negation, "AND")

    def negation(self) -> Expr:
        if self.accept("NOT"):
            return Unary("NOT", self.nested(self.negation))
        return self.relation()

    def relation(self) -> Expr:
        left = self.sum()
        operator = self.accept(*RELATIONS)
        if operator is None:
            return left
        right = self.sum()
        if self.peek().kind in RELATIONS:
            token = self.peek()
            message = "comparisons do not chain: combine them with AND, as in a < b AND b < c"
            raise AlgolSyntaxError(message, token.line, token.column)
        return Binary(operator.kind, left, right)

    def sum(self) -> Expr:
        return self.chain(self.term, "+", "-")

    def term(self) -> Expr:
        return self.chain(self.factor, "*", "/", "DIV", "MOD")

    def chain(self, operand: Callable[[], Expr], *operators: str) -> Expr:
        """``operand {operator operand}``, as a left-deep tree (the operators are left-associative)."""
        left = operand()
        while operator := self.accept(*operators):
            left = Binary(operator.kind, left, operand())
        return left

    def factor(self) -> Expr:
        sign = self.accept("-", "+")
        if sign is None:
            return self.primary()
        operand = self.nested(self.factor)
        return Unary("-", operand) if sign.kind == "-" else operand

    def primary(self) -> Expr:
        token = self.peek()
        if token.kind == NUMBER:
            self.advance()
            assert isinstance(token.value, int | float)
            return Num(token.value)
        if token.kind in (STRING, IDENT):
            self.advance()
            return Str(str(token.value)) if token.kind == STRING else Var(token.text)
        if self.accept("TRUE", "FALSE"):
            return Bool(token.kind == "TRUE")
        if self.accept("("):
            inner = self.nested(self.expression)
            self.expect(")", "')'")
            return inner
        raise self.error("an expression")
