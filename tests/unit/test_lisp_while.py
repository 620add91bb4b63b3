"""Unit tests for the `while` and `defined?` special forms of the example Lisp (lisp.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "examples/modules/interpreter"))

import lisp

SUM_TO = "(define i 0) (define s 0) (while (< i n) (set! i (+ i 1)) (set! s (+ s i))) s"


def error_of(code: str, **limits: int) -> lisp.LispError:
    with pytest.raises(lisp.LispError) as caught:
        lisp.evaluate(code, None, **limits)
    return caught.value


@pytest.mark.parametrize(
    ("code", "context", "expected"),
    [
        (SUM_TO, {"n": 100}, 5050),
        (SUM_TO, {"n": 0}, 0),  # a false test on entry: the body never runs
        ("(while #f (undefined-function))", {}, []),  # while is nil; the body is not evaluated
        ("(define i 0) (while (< i 3) (set! i (+ i 1)))", {}, []),
        # every body form runs, in order, each iteration
        ("(define log nil) (define i 0) (while (< i 3) (set! i (+ i 1)) (set! log (cons i log))) log",
         {}, [3, 2, 1]),
        # the test is evaluated afresh before each iteration, side effects included
        ("(define k 0) (while (< (begin (set! k (+ k 1)) k) 5)) k", {}, 5),
        # a loop inside a function works on its local bindings
        ("(define (fact n) (let ((acc 1)) (while (> n 1) (set! acc (* acc n)) (set! n (- n 1))) acc))"
         " (fact 20)", {}, 2432902008176640000),
        # nested loops
        ("(define c 0) (define i 0) (while (< i 4) (set! i (+ i 1)) (define j 0)"
         " (while (< j i) (set! j (+ j 1)) (set! c (+ c 1)))) c", {}, 10),
        # only #f and nil stop it: 0 is true
        ("(define x 3) (define n 0) (while x (set! n (+ n 1)) (set! x (if (= n 2) nil 0))) n", {}, 2),
    ],
)  # fmt: skip
def test_while_loops(code: str, context: dict[str, Any], expected: Any) -> None:
    assert lisp.evaluate(code, context) == expected


def test_many_iterations_do_not_grow_the_depth() -> None:
    """10000 iterations run with max_depth=1: the loop is iterative, not recursive."""
    assert lisp.evaluate(SUM_TO, {"n": 10_000}, max_steps=1_000_000, max_depth=1) == 50_005_000


def test_a_recursive_call_in_the_body_still_counts_depth() -> None:
    code = "(define (deep n) (if (= n 0) 0 (deep (- n 1)))) (define i 0) (while (< i 1) (set! i 1) (deep 50))"
    assert str(error_of(code, max_depth=10)) == "recursion deeper than 10 calls at line 1, column 32"


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("(while #t)", "evaluation exceeded 1000 steps (infinite loop?) at line 1, column 8"),
        ("(define i 0)\n(while #t (set! i (+ i 1)))", "evaluation exceeded 1000 steps (infinite loop?)"),
        ("(while (= 1 1) 1 2 3)", "evaluation exceeded 1000 steps (infinite loop?)"),
    ],
)
def test_an_endless_loop_runs_out_of_steps(code: str, message: str) -> None:
    error = error_of(code, max_steps=1000)
    assert isinstance(error, lisp.LimitError)
    assert str(error).startswith(message)


def test_each_iteration_costs_steps() -> None:
    """The same loop fits a budget for 10 iterations but not one for 10000."""
    assert lisp.evaluate(SUM_TO, {"n": 10}, max_steps=1000) == 55
    assert isinstance(error_of(f"(define n 10000) {SUM_TO}", max_steps=1000), lisp.LimitError)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("(while)", "'while' expects at least 1 argument, got 0 at line 1, column 1"),
        ("(define while 1)", "'while' is a special form and cannot be rebound at line 1, column 9"),
        ("(list while)", "special form 'while' cannot be used as a value at line 1, column 7"),
        ("(while (car nil))", "'car' expects a non-empty list, got list () at line 1, column 8"),
        ("(define i 0) (while (< i 1) (set! i 1) (+ 1 \"a\"))",
         "'+' expects numbers, got string \"a\" at line 1, column 40"),
    ],
)  # fmt: skip
def test_while_errors(code: str, message: str) -> None:
    assert str(error_of(code)) == message


# --------------------------------------------------------------------------------------- defined?


@pytest.mark.parametrize(
    ("code", "context", "expected"),
    [
        ("(defined? x)", {"x": 1}, True),
        ("(defined? x)", {}, False),
        ("(defined? x)", {"x": None}, True),  # bound to nil is still bound
        ("(define y 2) (defined? y)", {}, True),
        ("(defined? car)", {}, True),  # builtins are bound
        ("(defined? if)", {}, False),  # special forms are not values
        ("(let ((z 1)) (defined? z))", {}, True),  # local scopes count
        ("(let ((z 1)) z) (defined? z)", {}, False),  # ... only inside them
        ("(if (defined? y) y 0)", {}, 0),  # the guard it is made for
    ],
)
def test_defined(code: str, context: dict[str, Any], expected: Any) -> None:
    result = lisp.evaluate(code, context)
    assert result == expected
    assert type(result) is type(expected)  # #t is True, not 1


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("(defined?)", "'defined?' expects 1 argument, got 0 at line 1, column 1"),
        ("(defined? a b)", "'defined?' expects 1 argument, got 2 at line 1, column 1"),
        ("(defined? 1)", "'defined?' expects a symbol, got 1 at line 1, column 11"),
        ("(defined? (car x))", "'defined?' expects a symbol, got (car x) at line 1, column 11"),
        ("(define defined? 1)", "'defined?' is a special form and cannot be rebound at line 1, column 9"),
    ],
)
def test_defined_errors(code: str, message: str) -> None:
    assert str(error_of(code)) == message
