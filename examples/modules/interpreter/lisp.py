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

from collections.abc import Mapping
from typing import Any

from lisp_builtins import BUILTINS
from lisp_data import to_json
from lisp_eval import SIMPLE_FORMS, SPECIAL_FORMS, Interpreter, global_env
from lisp_reader import LITERALS, parse
from lisp_values import NIL, EvalError, LimitError, LispError, ParseError, Value

__all__ = ["EvalError", "LimitError", "LispError", "ParseError", "evaluate"]

# Every name the Lisp defines, table by table; tests/unit/test_algol.py checks that
# algol_tokens.LISP_NAMES stays in step with them.
_BUILTINS = BUILTINS
_SPECIAL_FORMS = SPECIAL_FORMS
_SIMPLE_FORMS = SIMPLE_FORMS
_LITERALS = LITERALS


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
        forms = parse(code)
        env = global_env(context)
        interpreter = Interpreter(code, max_steps, max_depth)
        result: Value = NIL
        for form in forms:
            result = interpreter.run(form, env)
        return to_json(result, interpreter.budget, max_depth)
    except LispError:
        raise
    except Exception as error:  # defensive: the contract is that nothing but LispError escapes
        raise EvalError(f"internal error: {type(error).__name__}: {error}") from error
