"""Unit tests for the example Lisp interpreter (examples/modules/interpreter/lisp.py)."""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parents[2] / "examples/modules/interpreter"))

import lisp

FACT = "(define (fact n) (if (<= n 1) 1 (* n (fact (- n 1)))))"


def error_of(code: str, context: dict[str, Any] | None = None, **limits: int) -> lisp.LispError:
    with pytest.raises(lisp.LispError) as caught:
        lisp.evaluate(code, context, **limits)
    return caught.value


# ------------------------------------------------------------------------------------ public API


def test_public_api_is_exactly_the_documented_names() -> None:
    assert sorted(lisp.__all__) == ["EvalError", "LimitError", "LispError", "ParseError", "evaluate"]


@pytest.mark.parametrize("cls", [lisp.ParseError, lisp.EvalError, lisp.LimitError])
def test_error_classes_derive_from_lisp_error(cls: type[lisp.LispError]) -> None:
    assert issubclass(cls, lisp.LispError)
    assert issubclass(lisp.LispError, Exception)


@pytest.mark.parametrize(
    ("line", "column", "text"),
    [
        (2, 5, "unbound symbol 'foo' at line 2, column 5"),
        (None, None, "unbound symbol 'foo'"),
    ],
)
def test_lisp_error_attributes_and_str(line: int | None, column: int | None, text: str) -> None:
    error = lisp.EvalError("unbound symbol 'foo'", line, column)
    assert (error.message, error.line, error.column) == ("unbound symbol 'foo'", line, column)
    assert str(error) == text


# --------------------------------------------------------------------------- values and forms


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        # examples from the brief
        ("(+ 1 2 3)", 6),
        ("(* 6 7)", 42),
        ("(/ 10 4)", 2.5),
        ("(/ 10 2)", 5),
        ("(let ((a 2) (b 3)) (* a b))", 6),
        (FACT + " (fact 10)", 3628800),
        ("(quote (a b c))", ["a", "b", "c"]),
        ("((lambda (x) (* x x)) 5)", 25),
        ("(car (list 1 2 3))", 1),
        # reader
        ("42", 42),
        ("-7", -7),
        ("+5", 5),
        ("3.14", 3.14),
        ("-0.5", -0.5),
        ("1e3", 1000.0),
        (".5", 0.5),
        ('"hi"', "hi"),
        (r'"a \"quoted\" \\ word\n\tend"', 'a "quoted" \\ word\n\tend'),
        ('"multi\nline"', "multi\nline"),
        ("#t", True),
        ("#f", False),
        ("true", True),
        ("false", False),
        ("nil", []),
        ("()", []),
        ("'x", "x"),
        ('\'(1 (2 "s") #t nil)', [1, [2, "s"], True, []]),
        ("''a", ["quote", "a"]),
        ("; a comment\n(+ 1 1) ; trailing\n", 2),
        ("1 2 3", 3),
        ("'-", "-"),
        ("'null?", "null?"),
        # if
        ("(if #t 1 2)", 1),
        ("(if #f 1 2)", 2),
        ("(if nil 1 2)", 2),
        ("(if '() 1 2)", 2),
        ("(if 0 1 2)", 1),
        ('(if "" 1 2)', 1),
        ("(if #f 1)", []),
        # let
        ("(let ((x 1)) (let ((x 2) (y x)) (+ x y)))", 3),
        ("(let () 7)", 7),
        ("(let ((x 1)) (define y 2) (+ x y))", 3),
        # define / lambda / closures / set!
        ("(define x 5)", "x"),
        ("(define (f a b) (+ a b))", "f"),
        ("(define x 5) (* x 2)", 10),
        ("(define (f a b) (- a b)) (f 10 3)", 7),
        ("(define (f) 42) (f)", 42),
        ("(define (adder n) (lambda (x) (+ x n))) ((adder 3) 4)", 7),
        ("(define sq (lambda (x) (* x x))) (sq 9)", 81),
        ("(define (f) (define local 3) local) (f)", 3),
        ("(define x 1) (define (bump) (set! x (+ x 1))) (bump) (bump) x", 3),
        ("(define x 1) (set! x 10)", 10),
        (
            "(define (counter) (let ((n 0)) (lambda () (set! n (+ n 1)) n))) "
            "(define c (counter)) (c) (c) (c)",
            3,
        ),
        (
            "(define (even? n) (if (= n 0) #t (odd? (- n 1))))"
            " (define (odd? n) (if (= n 0) #f (even? (- n 1)))) (even? 10)",
            True,
        ),
        (FACT + " (fact 150) (= (fact 20) 2432902008176640000)", True),
        # begin / and / or / cond
        ("(begin 1 2 3)", 3),
        ("(begin)", []),
        ("(and)", True),
        ("(and 1 2 3)", 3),
        ("(and 1 #f (car '()))", False),
        ("(or)", False),
        ("(or #f nil 7)", 7),
        ("(or 1 (car '()))", 1),
        ("(cond ((= 1 2) 'a) ((= 1 1) 'b) (else 'c))", "b"),
        ("(cond ((= 1 2) 'a) (else 'c))", "c"),
        ("(cond (#f 1))", []),
        ("(cond ((+ 1 1)))", 2),
        ("(cond (#t 1 2 3))", 3),
        # arithmetic
        ("(+)", 0),
        ("(*)", 1),
        ("(+ 1 2.5)", 3.5),
        ("(- 10 1 2)", 7),
        ("(- 5)", -5),
        ("(/ 100 5 4)", 5),
        ("(/ 2)", 0.5),
        ("(/ -6 3)", -2),
        ("(/ 7 2.0)", 3.5),
        ("(mod 7 3)", 1),
        ("(mod -7 3)", 2),
        ("(mod 5.5 2)", 1.5),
        ("(abs -4)", 4),
        ("(abs 2.5)", 2.5),
        ("(min 3 1 2)", 1),
        ("(max 3 1 2.5)", 3),
        ("(* 99999999999 99999999999)", 9999999999800000000001),
        # comparisons
        ("(= 1 1 1)", True),
        ("(= 1 1.0)", True),
        ("(= 1 2)", False),
        ("(= 'a 'a)", True),
        ('(= "a" "a")', True),
        ("(= '(1 (2)) (list 1 (list 2)))", True),
        ("(= '(1 2) '(1 3))", False),
        ("(= #t 1)", False),
        ('(= "a" \'a)', False),
        ("(= car car)", True),
        ("(!= 1 2)", True),
        ("(!= 1 2 1)", True),
        ("(!= 1 1)", False),
        ("(< 1 2 3)", True),
        ("(< 1 3 2)", False),
        ("(> 3 2 1)", True),
        ("(<= 1 1 2)", True),
        ("(>= 2 2 3)", False),
        ('(< "apple" "banana")', True),
        ("(< 5)", True),
        ("(not #f)", True),
        ("(not nil)", True),
        ("(not 0)", False),
        # lists
        ("(list)", []),
        ('(list 1 "a" \'b)', [1, "a", "b"]),
        ("(cdr '(1 2 3))", [2, 3]),
        ("(cdr '(1))", []),
        ("(cons 0 '(1 2))", [0, 1, 2]),
        ("(cons '(a) nil)", [["a"]]),
        ("(length '(1 2 3))", 3),
        ('(length "hello")', 5),
        ("(null? nil)", True),
        ("(null? '(1))", False),
        ("(null? 0)", False),
        ("(append '(1) '(2 3) nil '(4))", [1, 2, 3, 4]),
        ("(append)", []),
        ("(nth '(a b c) 0)", "a"),
        ("(nth '(a b c) 2)", "c"),
        ("(get '((a 1) (b 2)) 'b)", 2),
        ("(get '((a 1)) 'z)", []),
        ("(get '((a 1)) 'z 0)", 0),
        # strings
        ('(concat "foo" "bar" "")', "foobar"),
        ("(concat)", ""),
        ('(str 1 " " 2.5 " " #t " " \'sym)', "1 2.5 #t sym"),
        ('(str \'(1 "two" (3)))', '(1 "two" (3))'),
        ("(str nil)", "()"),
        ("(str (lambda (x) x) car)", "<lambda (x)><builtin car>"),
        # functions as results
        ("(lambda (x y) (+ x y))", "<lambda (x y)>"),
        ("(define (f a) a) f", "<lambda (a)>"),
        ("car", "<builtin car>"),
        ("(list + (lambda () 1))", ["<builtin +>", "<lambda ()>"]),
    ],
)
def test_evaluate(code: str, expected: Any) -> None:
    result = lisp.evaluate(code)
    assert result == expected
    assert type(result) is type(expected)


def test_factorial_150_fits_the_default_depth() -> None:
    assert lisp.evaluate(FACT + " (fact 150)") == _python_factorial(150)


def _python_factorial(n: int) -> int:
    result = 1
    for k in range(2, n + 1):
        result *= k
    return result


# -------------------------------------------------------------------------------------- context


@pytest.mark.parametrize(
    ("code", "context", "expected"),
    [
        ('(if (> x 10) "big" "small")', {"x": 11}, "big"),
        ('(if (> x 10) "big" "small")', {"x": 3}, "small"),
        ("(car xs)", {"xs": [1, 2, 3]}, 1),
        ("(length xs)", {"xs": [[1], [2, 3]]}, 2),
        ('(concat name "!")', {"name": "Ada"}, "Ada!"),
        ("(not flag)", {"flag": False}, True),
        ("(null? nothing)", {"nothing": None}, True),
        ("(* ratio 2)", {"ratio": 0.25}, 0.5),
        ('(get user "age")', {"user": {"name": "Ada", "age": 36}}, 36),
        ("user", {"user": {"name": "Ada", "tags": ["x"]}}, [["name", "Ada"], ["tags", ["x"]]]),
        ("(define x 2) x", {"x": 1}, 2),
        ("(+ 1 2)", {}, 3),
        ("(list a b)", {"a": 1, "b": "two"}, [1, "two"]),
    ],
)
def test_context_bindings(code: str, context: dict[str, Any], expected: Any) -> None:
    assert lisp.evaluate(code, context) == expected


def test_context_is_not_modified_and_each_call_is_fresh() -> None:
    context = {"xs": [1, 2]}
    assert lisp.evaluate("(define xs (cons 0 xs)) xs", context) == [0, 1, 2]
    assert context == {"xs": [1, 2]}
    assert error_of("y").message == "unbound symbol 'y'"
    lisp.evaluate("(define y 1)")
    assert error_of("y").message == "unbound symbol 'y'"


def _cyclic() -> list[Any]:
    items: list[Any] = [1]
    items.append(items)
    return items


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"x": float("nan")}, "context value for 'x' has a non-finite float"),
        ({"x": [float("inf")]}, "context value for 'x' has a non-finite float"),
        ({"x": 2**5000}, "context value for 'x' has an integer larger than 4096 bits"),
        ({"x": {1: 2}}, "context value for 'x' has a dict with non-string keys"),
        ({"x": {1, 2}}, "context value for 'x' has unsupported type set"),
        ({"x": _cyclic()}, "context value for 'x' contains a cycle"),
        ({3: 1}, "context names must be strings, got 3"),
    ],
)
def test_invalid_context_values(context: dict[Any, Any], message: str) -> None:
    error = error_of("1", context)
    assert type(error) is lisp.EvalError
    assert str(error) == message


# ---------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("code", "cls", "text"),
    [
        # reader
        ("", lisp.ParseError, "empty program: nothing to evaluate"),
        ("  ; only a comment\n\n", lisp.ParseError, "empty program: nothing to evaluate"),
        ("(+ 1 2", lisp.ParseError, "unclosed '(' opened at line 1, column 1"),
        ("(list 1\n  (+ 2 3", lisp.ParseError, "unclosed '(' opened at line 2, column 3"),
        ("(+ 1 2))", lisp.ParseError, "unexpected ')' at line 1, column 8"),
        (")", lisp.ParseError, "unexpected ')' at line 1, column 1"),
        ('(concat "abc)', lisp.ParseError, "unterminated string at line 1, column 9"),
        ('"abc\\"', lisp.ParseError, "unterminated string at line 1, column 1"),
        ('"a\\qb"', lisp.ParseError, "unknown escape '\\q' in string at line 1, column 1"),
        ("'", lisp.ParseError, "nothing to quote after ' at line 1, column 1"),
        ("(list ')", lisp.ParseError, "nothing to quote after ' at line 1, column 7"),
        ("(+ 1abc 2)", lisp.ParseError, "invalid number '1abc' at line 1, column 4"),
        ("1e", lisp.ParseError, "invalid number '1e' at line 1, column 1"),
        ("#x", lisp.ParseError, "unknown literal '#x' at line 1, column 1"),
        ("1e999", lisp.ParseError, "float literal '1e999' is out of range at line 1, column 1"),
        ("9" * 1300, lisp.ParseError, "integer literal exceeds 4096 bits at line 1, column 1"),
        ("9" * 5000, lisp.ParseError, "integer literal exceeds 4096 bits at line 1, column 1"),
        # symbols and calls
        ("(foo 1)", lisp.EvalError, "unbound symbol 'foo' at line 1, column 2"),
        ("(+ 1\n    bar)", lisp.EvalError, "unbound symbol 'bar' at line 2, column 5"),
        ("(list if)", lisp.EvalError, "special form 'if' cannot be used as a value at line 1, column 7"),
        ("(5 3)", lisp.EvalError, "cannot call number 5 at line 1, column 1"),
        ('("f")', lisp.EvalError, 'cannot call string "f" at line 1, column 1'),
        ("('(1 2) 0)", lisp.EvalError, "cannot call list (1 2) at line 1, column 1"),
        ("((lambda (x) x))", lisp.EvalError, "<lambda (x)> expects 1 argument, got 0 at line 1, column 1"),
        ("(define (f a b) a)\n(f 1)", lisp.EvalError, "'f' expects 2 arguments, got 1 at line 2, column 1"),
        (
            "(define g (lambda () 1)) (g 1)",
            lisp.EvalError,
            "'g' expects 0 arguments, got 1 at line 1, column 26",
        ),
        # builtin arity and types
        ('(+ 1 "a")', lisp.EvalError, "'+' expects numbers, got string \"a\" at line 1, column 1"),
        ("(* 2 #t)", lisp.EvalError, "'*' expects numbers, got boolean #t at line 1, column 1"),
        ("(- 'x)", lisp.EvalError, "'-' expects numbers, got symbol x at line 1, column 1"),
        ("(-)", lisp.EvalError, "'-' expects at least 1 argument, got 0 at line 1, column 1"),
        ("(/)", lisp.EvalError, "'/' expects at least 1 argument, got 0 at line 1, column 1"),
        ("(mod 1)", lisp.EvalError, "'mod' expects 2 arguments, got 1 at line 1, column 1"),
        ("(car 1 2)", lisp.EvalError, "'car' expects 1 argument, got 2 at line 1, column 1"),
        ("(get)", lisp.EvalError, "'get' expects 2 or 3 arguments, got 0 at line 1, column 1"),
        ("(<)", lisp.EvalError, "'<' expects at least 1 argument, got 0 at line 1, column 1"),
        ('(< 1 "b")', lisp.EvalError, "'<' expects numbers, got string \"b\" at line 1, column 1"),
        ('(< "a" 1)', lisp.EvalError, "'<' expects strings, got number 1 at line 1, column 1"),
        ("(car '())", lisp.EvalError, "'car' expects a non-empty list, got list () at line 1, column 1"),
        ("(cdr 5)", lisp.EvalError, "'cdr' expects a non-empty list, got number 5 at line 1, column 1"),
        (
            "(cons 1 2)",
            lisp.EvalError,
            "'cons' expects a list as its second argument, got number 2 at line 1, column 1",
        ),
        (
            "(length 5)",
            lisp.EvalError,
            "'length' expects a list or a string, got number 5 at line 1, column 1",
        ),
        ("(append '(1) 2)", lisp.EvalError, "'append' expects lists, got number 2 at line 1, column 1"),
        (
            "(nth 1 '(1))",
            lisp.EvalError,
            "'nth' expects a list as its first argument, got number 1 at line 1, column 1",
        ),
        (
            "(nth '(1) 1.0)",
            lisp.EvalError,
            "'nth' expects an integer index, got number 1.0 at line 1, column 1",
        ),
        (
            "(nth '(1 2) 5)",
            lisp.EvalError,
            "'nth' index 5 is out of range for a list of length 2 at line 1, column 1",
        ),
        (
            "(nth '(1 2) -1)",
            lisp.EvalError,
            "'nth' index -1 is out of range for a list of length 2 at line 1, column 1",
        ),
        ('(concat "a" 1)', lisp.EvalError, "'concat' expects strings, got number 1 at line 1, column 1"),
        ("(get '(1) 1)", lisp.EvalError, "'get' expects (key value) pairs, got number 1 at line 1, column 1"),
        (
            "(get 5 1)",
            lisp.EvalError,
            "'get' expects a list of (key value) pairs, got number 5 at line 1, column 1",
        ),
        (
            '(+ 1 (car (list "a very long string that will be cut short in the message")) 2)',
            lisp.EvalError,
            "'+' expects numbers, got string \"a very long string that will be cut ... at line 1, column 1",
        ),
        # arithmetic faults
        ("(/ 1 0)", lisp.EvalError, "division by zero in (/ 1 0) at line 1, column 1"),
        ("(/ 1.5 0.0)", lisp.EvalError, "division by zero in (/ 1.5 0.0) at line 1, column 1"),
        ("(/ 0)", lisp.EvalError, "division by zero in (/ 0) at line 1, column 1"),
        ("(mod 5 0)", lisp.EvalError, "division by zero in (mod 5 0) at line 1, column 1"),
        (
            "(let ((z 0))\n  (+ 1 (/ 10\n          z)))",
            lisp.EvalError,
            "division by zero in (/ 10 z) at line 2, column 8",
        ),
        ("(* 1e308 10)", lisp.EvalError, "float overflow in (* 1e308 10) at line 1, column 1"),
        (
            "(define (sq x n) (if (= n 0) x (sq (* x x) (- n 1)))) (sq 2 30)",
            lisp.EvalError,
            "integer overflow (more than 4096 bits) in (* x x) at line 1, column 36",
        ),
        # special forms
        ("(quote)", lisp.EvalError, "'quote' expects 1 argument, got 0 at line 1, column 1"),
        ("(quote a b)", lisp.EvalError, "'quote' expects 1 argument, got 2 at line 1, column 1"),
        ("(if)", lisp.EvalError, "'if' expects 2 or 3 arguments, got 0 at line 1, column 1"),
        ("(if 1 2 3 4)", lisp.EvalError, "'if' expects 2 or 3 arguments, got 4 at line 1, column 1"),
        ("(let)", lisp.EvalError, "'let' expects at least 2 arguments, got 0 at line 1, column 1"),
        (
            "(let x 1)",
            lisp.EvalError,
            "'let' expects a list of (name value) bindings, got x at line 1, column 6",
        ),
        (
            "(let ((x)) x)",
            lisp.EvalError,
            "malformed let binding (x): expected (name value) at line 1, column 7",
        ),
        ("(let ((1 2)) 3)", lisp.EvalError, "'let' expects a symbol, got 1 at line 1, column 8"),
        ("(let ((x 1) (x 2)) x)", lisp.EvalError, "duplicate name 'x' in let at line 1, column 14"),
        ("(define x)", lisp.EvalError, "'define' expects at least 2 arguments, got 1 at line 1, column 1"),
        ("(define x 1 2)", lisp.EvalError, "'define' expects 2 arguments, got 3 at line 1, column 1"),
        ("(define 5 1)", lisp.EvalError, "'define' expects a symbol, got 5 at line 1, column 9"),
        ("(define () 1)", lisp.EvalError, "'define' expects a symbol, got () at line 1, column 9"),
        ("(define (f 1) 1)", lisp.EvalError, "'define' expects a symbol, got 1 at line 1, column 12"),
        ("(define if 3)", lisp.EvalError, "'if' is a special form and cannot be rebound at line 1, column 9"),
        ("(lambda (x))", lisp.EvalError, "'lambda' expects at least 2 arguments, got 1 at line 1, column 1"),
        ("(lambda x x)", lisp.EvalError, "'lambda' expects a parameter list, got x at line 1, column 9"),
        ('(lambda (x "y") x)', lisp.EvalError, "'lambda' expects a symbol, got \"y\" at line 1, column 12"),
        ("(lambda (x x) x)", lisp.EvalError, "duplicate parameter 'x' in lambda at line 1, column 12"),
        (
            "(lambda (quote) 1)",
            lisp.EvalError,
            "'quote' is a special form and cannot be rebound at line 1, column 10",
        ),
        ("(set! y 5)", lisp.EvalError, "cannot set! unbound symbol 'y' at line 1, column 7"),
        ("(set! 5 5)", lisp.EvalError, "'set!' expects a symbol, got 5 at line 1, column 7"),
        ("(set! x)", lisp.EvalError, "'set!' expects 2 arguments, got 1 at line 1, column 1"),
        (
            "(cond (#f 1) 2)",
            lisp.EvalError,
            "malformed cond clause 2: expected (test body...) at line 1, column 14",
        ),
        (
            "(cond ())",
            lisp.EvalError,
            "malformed cond clause (): expected (test body...) at line 1, column 7",
        ),
        # errors inside function bodies point at the failing form, not the call
        (
            "(define (f x)\n  (car x))\n(f 5)",
            lisp.EvalError,
            "'car' expects a non-empty list, got number 5 at line 2, column 3",
        ),
    ],
)
def test_errors(code: str, cls: type[lisp.LispError], text: str) -> None:
    error = error_of(code)
    assert type(error) is cls
    assert str(error) == text


def test_error_location_attributes() -> None:
    error = error_of("(list 1\n   (foo))")
    assert (error.message, error.line, error.column) == ("unbound symbol 'foo'", 2, 5)


# ---------------------------------------------------------------------------------------- limits


@pytest.mark.parametrize(
    ("code", "limits", "text"),
    [
        ("(define (loop) (loop)) (loop)", {}, "recursion deeper than 200 calls at line 1, column 16"),
        (FACT + " (fact 10)", {"max_depth": 5}, "recursion deeper than 5 calls at line 1, column 38"),
        ("(+ 1 2)", {"max_steps": 3}, "evaluation exceeded 3 steps (infinite loop?) at line 1, column 6"),
        (
            "(define (f n) (if (= n 0) 0 (+ (f (- n 1)) (f (- n 1))))) (f 25)",
            {},
            "evaluation exceeded 100000 steps (infinite loop?) at line 1, column 19",
        ),
        ("'" + "(" * 201 + ")" * 201, {}, "result nested deeper than 200 levels"),
        ("'((((1))))", {"max_depth": 3}, "result nested deeper than 3 levels"),
    ],
)
def test_limits(code: str, limits: dict[str, int], text: str) -> None:
    error = error_of(code, **limits)
    assert type(error) is lisp.LimitError
    assert str(error) == text


def test_step_budget_is_exact() -> None:
    # (+ 1 2) evaluates four forms: the list, '+', '1' and '2'.
    assert lisp.evaluate("(+ 1 2)", max_steps=4) == 3


def test_depth_budget_is_exact() -> None:
    assert lisp.evaluate(FACT + " (fact 5)", max_depth=5) == 120
    assert type(error_of(FACT + " (fact 6)", max_depth=5)) is lisp.LimitError


@pytest.mark.parametrize(
    ("code", "text"),
    [
        # exponential data through sharing: printing, returning and growing it are all bounded
        (
            "(define (g n x) (if (= n 0) x (g (- n 1) (list x x)))) (g 100 1)",
            "evaluation exceeded 100000 steps (infinite loop?)",
        ),
        (
            "(define (g n x) (if (= n 0) x (g (- n 1) (list x x)))) (str (g 100 1))",
            "'str' result is longer than 100000 characters at line 1, column 56",
        ),
        (
            "(define (g n x) (if (= n 0) x (g (- n 1) (append x x)))) (length (g 100 '(1)))",
            "evaluation exceeded 100000 steps (infinite loop?) at line 1, column 42",
        ),
        (
            '(define (g n x) (if (= n 0) x (g (- n 1) (concat x x)))) (length (g 100 "ab"))',
            "'concat' result is longer than 100000 characters at line 1, column 42",
        ),
    ],
)
def test_runaway_data_is_stopped(code: str, text: str) -> None:
    assert str(error_of(code)) == text


def test_comparing_shared_structures_is_cheap() -> None:
    code = "(define (g n x) (if (= n 0) x (g (- n 1) (list x x)))) (= (g 100 1) (g 100 1))"
    assert lisp.evaluate(code) is True


def test_deeply_nested_source_does_not_hit_python_recursion_limit() -> None:
    depth = 5000
    assert lisp.evaluate("(+ 1 " * depth + "0" + ")" * depth) == depth
    error = error_of("(" * depth)
    assert str(error) == f"unclosed '(' opened at line 1, column {depth}"


def test_deepest_allowed_result_is_json_serialisable() -> None:
    result = lisp.evaluate("'" + "(" * 200 + ")" * 200)
    assert json.dumps(result) == "[" * 200 + "]" * 200


@pytest.mark.parametrize("limits", [{"max_steps": 0}, {"max_depth": 0}, {"max_steps": -1}])
def test_non_positive_budgets_are_a_host_error(limits: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="max_steps and max_depth must be positive"):
        lisp.evaluate("1", **limits)


# ---------------------------------------------------------------------------------------- property


@given(st.lists(st.integers(min_value=-(10**12), max_value=10**12), max_size=50))
def test_sum_matches_python(numbers: list[int]) -> None:
    assert lisp.evaluate(f"(+ {' '.join(map(str, numbers))})") == sum(numbers)


@given(st.lists(st.integers(min_value=-1000, max_value=1000), min_size=1, max_size=20))
def test_min_max_length_and_ordering_match_python(numbers: list[int]) -> None:
    context = {"xs": numbers}
    assert lisp.evaluate("(length xs)", context) == len(numbers)
    literal = " ".join(map(str, numbers))
    assert lisp.evaluate(f"(min {literal})") == min(numbers)
    assert lisp.evaluate(f"(< {literal})") == all(a < b for a, b in itertools.pairwise(numbers))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5),
    max_leaves=20,
)


def _nil_as_list(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, list):
        return [_nil_as_list(item) for item in value]
    return value


@given(json_values)
def test_context_values_round_trip(value: Any) -> None:
    assert lisp.evaluate("v", {"v": value}) == _nil_as_list(value)
    assert lisp.evaluate("(= v v)", {"v": value}) is True


@given(st.text())
def test_strings_round_trip_through_the_reader(text: str) -> None:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    assert lisp.evaluate(f'"{escaped}"') == text


@settings(deadline=None, max_examples=300)
@given(st.text(alphabet="()'\"; \n\\#abcxyz019.+-*/=<>!?", max_size=60))
def test_arbitrary_input_only_raises_lisp_errors(code: str) -> None:
    with contextlib.suppress(lisp.LispError):
        json.dumps(lisp.evaluate(code, {"x": [1, "a"]}, max_steps=2000, max_depth=20))


@settings(deadline=None, max_examples=100)
@given(
    st.recursive(
        st.sampled_from(["1", "0", "-2.5", '"s"', "x", "nil", "#t", "car", "cdr", "+", "/", "'a", "f"]),
        lambda children: st.lists(children, max_size=4).map(lambda items: "(" + " ".join(items) + ")"),
        max_leaves=30,
    )
)
def test_random_programs_only_raise_lisp_errors(code: str) -> None:
    program = "(define (f a) (f (cdr a))) (define x '(1 2)) " + code
    try:
        value = lisp.evaluate(program, max_steps=5000)
    except lisp.LispError:
        return  # the only exception untrusted input may raise
    assert json.loads(json.dumps(value)) == value  # and any value is plain JSON
