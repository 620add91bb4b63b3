"""The code generator: an ALGOL syntax tree to a program of the interpreter's Lisp.

Every assignment is a ``define`` of a global (so it works in any branch and any iteration),
loops become ``while``, and the last form evaluates to the association list of the assigned
variables that have a value.  Hidden loop temporaries are named ``%step1``, ``%limit1``, ... and
``%a``/``%b``: ``%`` cannot start an ALGOL identifier, so they never collide with a variable.
"""

from __future__ import annotations

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

__all__ = ["assigned_variables", "generate"]

_SIMPLE = {
    "+": "+", "-": "-", "*": "*", "MOD": "mod", "AND": "and", "OR": "or",
    "=": "=", "<>": "!=", "<": "<", ">": ">", "<=": "<=", ">=": ">=",
}  # fmt: skip
_VARIADIC = frozenset({"+", "-", "*", "AND", "OR"})  # Lisp folds these left to right, like ALGOL


def generate(program: Program) -> str:
    """Lisp source for ``program``: one top-level form per line, then the result form."""
    generator = _Generator()
    lines = generator.forms(program.body)
    lines.append(result_form(assigned_variables(program)))
    return "\n".join(lines)


def result_form(variables: list[str]) -> str:
    """``(append (if (defined? x) (list (list "x" x))) ...)``: ``(("x" 1) ...)`` of the bound ones."""
    entries = "".join(f' (if (defined? {name}) (list (list "{name}" {name})))' for name in variables)
    return f"(append{entries})"


def assigned_variables(program: Program) -> list[str]:
    """Every assigned name (FOR variables included), in order of first appearance in the source."""
    names: dict[str, None] = {}
    pending: list[Statement] = list(reversed(program.body))
    while pending:
        statement = pending.pop()
        if isinstance(statement, Assign | For):
            names.setdefault(statement.name if isinstance(statement, Assign) else statement.var)
        children = _children(statement)
        pending.extend(reversed(children))
    return list(names)


def _children(statement: Statement) -> tuple[Statement, ...]:
    if isinstance(statement, Block):
        return statement.body
    if isinstance(statement, If):
        return (statement.then,) if statement.else_ is None else (statement.then, statement.else_)
    if isinstance(statement, While | For):
        return (statement.body,)
    return ()


class _Generator:
    def __init__(self) -> None:
        self.loops = 0  # numbers the temporaries of each FOR loop

    # -- statements

    def forms(self, statements: tuple[Statement, ...]) -> list[str]:
        """One form per statement; a nested BEGIN ... END is spliced in (it has no scope of its own)."""
        result: list[str] = []
        for statement in statements:
            if isinstance(statement, Block):
                result.extend(self.forms(statement.body))
            else:
                result.append(self.statement(statement))
        return result

    def statement(self, statement: Statement) -> str:
        if isinstance(statement, Assign):
            return f"(define {statement.name} {self.expression(statement.value)})"
        if isinstance(statement, If):
            branches = [self.single(statement.then)]
            if statement.else_ is not None:
                branches.append(self.single(statement.else_))
            return f"(if {self.expression(statement.test)} {' '.join(branches)})"
        if isinstance(statement, While):
            return _form("while", self.expression(statement.test), *self.forms((statement.body,)))
        if isinstance(statement, For):
            return self.for_loop(statement)
        return self.single(statement)

    def single(self, statement: Statement) -> str:
        """Exactly one form: several statements are wrapped in ``begin``."""
        forms = self.forms((statement,))
        return forms[0] if len(forms) == 1 else _form("begin", *forms)

    def for_loop(self, loop: For) -> str:
        """``i := start``; then, while i has not passed the limit, the body and ``i := i + step``.

        Step and limit are evaluated once, before the first iteration (after ``i := start``).
        """
        self.loops += 1
        var, number = loop.var, self.loops
        forms = [f"(define {var} {self.expression(loop.start)})"]
        step = self.operand(loop.step, f"%step{number}", forms)
        limit = self.operand(loop.limit, f"%limit{number}", forms)
        up, down = f"(<= {var} {limit})", f"(>= {var} {limit})"
        sign = _constant_sign(loop.step)
        test = up if sign == 1 else down if sign == -1 else f"(if (< {step} 0) {down} {up})"
        body = self.forms((loop.body,))
        forms.append(_form("while", test, *body, f"(define {var} (+ {var} {step}))"))
        return _form("begin", *forms)

    def operand(self, expression: Expr, temporary: str, forms: list[str]) -> str:
        """A constant as itself; anything else evaluated once into ``temporary``."""
        if _constant_sign(expression) is not None:
            return self.expression(expression)
        forms.append(f"(define {temporary} {self.expression(expression)})")
        return temporary

    # -- expressions

    def expression(self, expression: Expr) -> str:
        if isinstance(expression, Num):
            return repr(expression.value)
        if isinstance(expression, Str):
            return _string(expression.value)
        if isinstance(expression, Bool):
            return "#t" if expression.value else "#f"
        if isinstance(expression, Var):
            return expression.name
        if isinstance(expression, Unary):
            if expression.op == "-" and isinstance(expression.operand, Num):
                return repr(-expression.operand.value)  # -2 rather than (- 2)
            return f"({'-' if expression.op == '-' else 'not'} {self.expression(expression.operand)})"
        if isinstance(expression, Conditional):
            parts = (expression.test, expression.then, expression.else_)
            return _form("if", *(self.expression(part) for part in parts))
        return self.binary(expression)

    def binary(self, expression: Binary) -> str:
        """Walk the left spine iteratively (chains like 1 + 1 + ... can be long), merging same-op runs."""
        spine: list[Binary] = []
        node: Expr = expression
        while isinstance(node, Binary):
            spine.append(node)
            node = node.left
        operator, operands = "", [self.expression(node)]
        for link in reversed(spine):
            right = self.expression(link.right)
            if link.op != operator or operator not in _VARIADIC:
                operands = [_apply(operator, operands)] if operator else operands
                operator = link.op
            operands.append(right)
        return _apply(operator, operands)


def _apply(operator: str, operands: list[str]) -> str:
    if operator == "/":  # ALGOL's / is real division: 6 / 3 is 2.0
        return f"(* 1.0 (/ {' '.join(operands)}))"
    if operator == "DIV":  # floored quotient, consistent with MOD: a = b * (a DIV b) + a MOD b
        left, right = operands
        return f"(let ((%a {left}) (%b {right})) (/ (- %a (mod %a %b)) %b))"
    return _form(_SIMPLE[operator], *operands)


def _form(head: str, *items: str) -> str:
    return f"({' '.join((head, *items))})"


def _string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t")
    return f'"{escaped}"'


def _constant_sign(expression: Expr) -> int | None:
    """1 or -1 for a non-zero number literal (possibly negated), else None."""
    if isinstance(expression, Unary) and expression.op == "-":
        inner = _constant_sign(expression.operand)
        return None if inner is None else -inner
    if isinstance(expression, Num) and not isinstance(expression.value, bool) and expression.value:
        return 1 if expression.value > 0 else -1
    return None
