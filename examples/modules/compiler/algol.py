"""A compiler from a small ALGOL 60 subset to the interpreter's Lisp (pure Python, no NATS).

``compile_algol(source)`` returns the Lisp program and the names it assigns, or raises
:class:`AlgolSyntaxError` (``syntax error at line 1, column 15: expected THEN, found 'y'``).
The pipeline is algol_tokens (lexer) -> algol_parser (recursive descent to the algol_ast
dataclasses) -> algol_codegen (Lisp text).

The language
------------
Statements, separated by ``;`` (empty statements are allowed)::

    x := expression
    IF condition THEN statement [ELSE statement]       ELSE binds to the nearest IF
    FOR i := start [STEP step] UNTIL limit DO statement
    WHILE condition DO statement
    BEGIN statement; statement; ... END

Expressions, loosest first: conditional ``IF c THEN a ELSE b``; ``OR``; ``AND``; ``NOT``; the
comparisons ``= <> < > <= >=`` (they do not chain); ``+ -``; ``* / DIV MOD``; unary ``- +``;
then literals, variables and parentheses.  Literals: integers ``42``, reals ``3.5`` ``1.5e3``,
strings ``"a ""quoted"" word"`` (double quotes, a doubled quote inside, one line), ``TRUE``, ``FALSE``.
Keywords are case-insensitive; identifiers (``[A-Za-z][A-Za-z0-9_]*``) are case-sensitive.
``COMMENT any text ;`` is skipped.  Names the Lisp defines (``list``, ``car``, ``max``, ...)
cannot be variables.  Nesting deeper than 50 levels is refused.

Semantics
---------
* Variables are untyped Lisp globals; every assignment compiles to ``(define x ...)``, so it works
  the same in any branch or loop iteration.  There are no declarations: a variable read before
  any assignment must come from the interpreter's ``context`` (else the interpreter reports
  ``unbound symbol``), and a context value is the initial value of a variable the program assigns.
* ``/`` is real division (``6 / 3`` is ``2.0``); ``DIV`` is the floored integer quotient and
  ``MOD`` the matching remainder (``-7 DIV 2`` is ``-4``, ``-7 MOD 2`` is ``1``).  Other
  arithmetic is the Lisp's: integers stay exact, a real operand makes a real.
* Conditions follow the Lisp's truthiness: only ``FALSE`` (and the empty list) is false.
* ``FOR i := a STEP s UNTIL b`` assigns ``i := a``, then evaluates ``s`` and ``b`` once; it runs
  the body while ``i <= b`` (``i >= b`` when ``s`` is negative) and adds ``s`` after each pass,
  so afterwards ``i`` holds the first value past the limit.  A step of 0 loops until the
  interpreter's step budget stops it, as does a WHILE whose condition stays true.
* The program's value -- the last form of the generated Lisp -- is an association list of every
  assigned variable that has a value, in order of first assignment in the source:
  ``IF x > 10 THEN y := 5`` evaluated with context ``{"x": 11}`` gives ``[["y", 5]]``, and with
  ``{"x": 3}`` gives ``[]`` (y was never assigned).  ``dict(result)`` turns it into a mapping.
"""

from __future__ import annotations

from dataclasses import dataclass

from algol_codegen import assigned_variables, generate
from algol_parser import MAX_NESTING, parse
from algol_tokens import AlgolSyntaxError, tokenize

__all__ = ["AlgolSyntaxError", "Compiled", "compile_algol"]


@dataclass(frozen=True, slots=True)
class Compiled:
    lisp: str
    variables: tuple[str, ...]  # assigned names, in order of first assignment


def compile_algol(source: str, *, max_depth: int = MAX_NESTING) -> Compiled:
    """Compile ``source``, nested at most ``max_depth`` levels; raises AlgolSyntaxError (with line
    and column) and nothing else."""
    program = parse(tokenize(source), max_depth)
    return Compiled(generate(program), tuple(assigned_variables(program)))
