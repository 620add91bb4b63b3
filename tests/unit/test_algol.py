"""Unit tests for the ALGOL compiler (examples/modules/compiler): compile, then run the Lisp.

Every program is compiled with compile_algol and evaluated with the interpreter's lisp.evaluate;
the association list it returns is compared (values and their types) with the expected variables.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "examples/modules/interpreter"))
sys.path.insert(0, str(Path(__file__).parents[2] / "examples/modules/compiler"))

import algol
import algol_parser
import algol_tokens
import lisp

COLLATZ = """
COMMENT the number of Collatz steps from n down to 1;
steps := 0;
WHILE n <> 1 DO
BEGIN
    IF n MOD 2 = 0 THEN n := n DIV 2 ELSE n := 3 * n + 1;
    steps := steps + 1
END
"""
GCD = "a := 1071; b := 462; WHILE b <> 0 DO BEGIN t := b; b := a MOD b; a := t END"
GRADE = 'IF s >= 90 THEN g := "A" ELSE IF s >= 80 THEN g := "B" ELSE g := "C"'
DANGLING = "IF a THEN IF b THEN x := 1 ELSE x := 2"


def run(source: str, context: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compile and evaluate ``source``; the final variables as a dict."""
    compiled = algol.compile_algol(source)
    result = lisp.evaluate(compiled.lisp, context, max_steps=1_000_000)
    assert [name for name, _ in result] == [name for name in compiled.variables if name in dict(result)]
    return dict(result)


def syntax_error(source: str) -> algol.AlgolSyntaxError:
    with pytest.raises(algol.AlgolSyntaxError) as caught:
        algol.compile_algol(source)
    return caught.value


@pytest.mark.parametrize(
    ("source", "context", "expected"),
    [
        ("IF x > 10 THEN y := 5", {"x": 11}, {"y": 5}),
        ("IF x > 10 THEN y := 5", {"x": 3}, {}),  # y never assigned: not in the result
        ("s := 0; FOR i := 1 UNTIL 100 DO s := s + i", {}, {"s": 5050, "i": 101}),
        ("n := 10; f := 1; WHILE n > 1 DO BEGIN f := f * n; n := n - 1 END", {}, {"n": 1, "f": 3628800}),
        ("x := 2 + 3 * 4; y := (2 + 3) * 4; z := 2 * 3 + 4", {}, {"x": 14, "y": 20, "z": 10}),
        ("x := 10 - 3 - 2; y := 1 + 2 - 3 + 4; z := 2 * 3 MOD 4", {}, {"x": 5, "y": 4, "z": 2}),
        ("x := -3 * -2; y := -(4 - 6); z := 2 - -2; w := +5", {}, {"x": 6, "y": 2, "z": 4, "w": 5}),
        ("x := 7 / 2; y := 6 / 3; z := 1 / 4 * 2", {}, {"x": 3.5, "y": 2.0, "z": 0.5}),
        ("q := 17 DIV 5; r := 17 MOD 5; nq := -7 DIV 2; nr := -7 MOD 2", {},
         {"q": 3, "r": 2, "nq": -4, "nr": 1}),
        ("x := 1.5e3 + 0.25; y := 2 * 0.5", {}, {"x": 1500.25, "y": 1.0}),
        (GRADE, {"s": 95}, {"g": "A"}),
        (GRADE, {"s": 85}, {"g": "B"}),
        (GRADE, {"s": 10}, {"g": "C"}),
        (DANGLING, {"a": True, "b": False}, {"x": 2}),  # ELSE belongs to the inner IF ...
        (DANGLING, {"a": False, "b": False}, {}),  # ... so the outer IF has none
        ("p := 1 < 2 AND NOT 2 < 1; q := 1 > 2 OR 3 = 3 AND FALSE; r := NOT TRUE OR TRUE", {},
         {"p": True, "q": False, "r": True}),
        ('a := 1 = 1; b := 1 <> 1; c := 2 <= 2; d := 3 >= 4; e := "abc" < "abd"', {},
         {"a": True, "b": False, "c": True, "d": False, "e": True}),
        ("FOR i := 10 STEP -3 UNTIL 1 DO last := i", {}, {"i": -2, "last": 1}),
        ("FOR i := 0 STEP k UNTIL n DO c := c + 1", {"c": 0, "k": 2, "n": 9}, {"i": 10, "c": 5}),
        ("FOR i := 0 STEP k UNTIL n DO c := c + 1", {"c": 0, "k": -2, "n": -9}, {"i": -10, "c": 5}),
        ("FOR i := 5 UNTIL 1 DO x := 1", {}, {"i": 5}),  # the body never runs
        ("t := 0; FOR i := 1 UNTIL 3 DO FOR j := 1 UNTIL 3 DO t := t + i * j", {}, {"t": 36, "i": 4, "j": 4}),
        (GCD, {}, {"a": 21, "b": 0, "t": 21}),
        (COLLATZ, {"n": 27}, {"steps": 111, "n": 1}),
        ('s := "say ""hi"""; t := "back\\\\slash"; u := ""', {},
         {"s": 'say "hi"', "t": "back\\\\slash", "u": ""}),
        ("comment setup; Begin x := 1; if x = 1 then y := 2 else y := 3 end", {}, {"x": 1, "y": 2}),
        ("X := 1; x := 2", {}, {"X": 1, "x": 2}),  # identifiers are case-sensitive
        ("y := IF x < 0 THEN -x ELSE x; z := IF FALSE THEN 1 ELSE IF TRUE THEN 2 ELSE 3", {"x": -4},
         {"y": 4, "z": 2}),
        ("y := x * 2", {"x": 21}, {"y": 42}),  # read-only variables come from the context
        ("x := x + 1", {"x": 5}, {"x": 6}),  # a context value is the initial value
        ("BEGIN ; x := 1;; BEGIN END; END;", {}, {"x": 1}),  # empty statements and blocks
        ("x := " + " + ".join(["1"] * 1000), {}, {"x": 1000}),
        ("i := 0; WHILE TRUE AND i < 3 DO i := i + 1", {}, {"i": 3}),
    ],
)  # fmt: skip
def test_programs(source: str, context: dict[str, Any], expected: dict[str, Any]) -> None:
    result = run(source, context)
    assert result == expected
    assert {name: type(value) for name, value in result.items()} == {
        name: type(value) for name, value in expected.items()
    }


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("IF x > 10 y := 5", "line 1, column 11: expected THEN, found 'y'"),
        ("BEGIN x := 1",
         "line 1, column 13: expected ';' or END, found end of program "
         "(the BEGIN at line 1, column 1 is not closed)"),
        ("BEGIN\n  x := 1;\n  BEGIN y := 2\nEND",
         "line 4, column 4: expected ';' or END, found end of program "
         "(the BEGIN at line 1, column 1 is not closed)"),
        ("x := 1 END", "line 1, column 8: END without a matching BEGIN"),
        ("x := 1 @ 2", "line 1, column 8: unexpected character '@'"),
        ("x 5", "line 1, column 3: expected ':=', found '5'"),
        ("x = 5", "line 1, column 3: expected ':=', found '='"),
        ("x : 5", "line 1, column 3: unexpected character ':' (assignment is ':=')"),
        ("x := a != 1", "line 1, column 8: unexpected character '!' (not equal is '<>')"),
        ("x := 'a'", "line 1, column 6: unexpected character \"'\" (strings use double quotes)"),
        ('x := "abc', "line 1, column 6: unterminated string (close it with '\"' on the same line)"),
        ('x := "abc\ndef"', "line 1, column 6: unterminated string (close it with '\"' on the same line)"),
        ("x := ", "line 1, column 6: expected an expression, found end of program"),
        ("x := 1 +", "line 1, column 9: expected an expression, found end of program"),
        ("IF x > 1 THEN", "line 1, column 14: expected a statement, found end of program"),
        ("IF a < b < c THEN x := 1",
         "line 1, column 10: comparisons do not chain: combine them with AND, as in a < b AND b < c"),
        ("x := 1;\ny := (2 + 3;\n", "line 2, column 12: expected ')', found ';'"),
        ("x := 1 y := 2", "line 1, column 8: expected ';' or end of program, found 'y'"),
        ("x := 12abc", "line 1, column 8: expected ';' or end of program, found 'abc'"),
        ("FOR i := 1 DO x := 1", "line 1, column 12: expected STEP or UNTIL, found 'DO'"),
        ("FOR i := 1 STEP 1 DO x := 1", "line 1, column 19: expected UNTIL, found 'DO'"),
        ("FOR 1 := 1 UNTIL 2 DO x := 1", "line 1, column 5: expected a variable name, found '1'"),
        ("WHILE x < 3 x := x + 1", "line 1, column 13: expected DO, found 'x'"),
        ("y := IF x THEN 1", "line 1, column 17: expected ELSE, found end of program"),
        ("THEN x := 1", "line 1, column 1: expected a statement, found 'THEN'"),
        ("list := 1",
         "line 1, column 1: 'list' is a name of the target Lisp and cannot be a variable; rename it"),
        ("x := 1;\n  COMMENT no end",
         "line 2, column 3: unterminated comment (COMMENT runs to the next ';')"),
        ("", "line 1, column 1: empty program: write at least one statement"),
        ("COMMENT nothing else;", "line 1, column 1: empty program: write at least one statement"),
        ("x := 1e999", "line 1, column 6: real literal '1e999' is out of range"),
        ("x := " + "9" * 1001, "line 1, column 6: integer literal longer than 1000 digits"),
        ('x := "a very long string indeed" "b"',
         "line 1, column 34: expected ';' or end of program, found '\"b\"'"),
        ('x := 1 "a very long string indeed"',
         "line 1, column 8: expected ';' or end of program, found '\"a very long stri...'"),
        ("COMMENT one;\nCOMMENT two\nlines;\n\tx := @", "line 4, column 7: unexpected character '@'"),
        ("x := " + "(" * 60 + "1" + ")" * 60, "line 1, column 56: nesting deeper than 50 levels"),
        ("x := " + "- " * 60 + "1", "line 1, column 106: nesting deeper than 50 levels"),
    ],
)  # fmt: skip
def test_syntax_errors(source: str, message: str) -> None:
    error = syntax_error(source)
    assert str(error) == f"syntax error at {message}"
    assert f"line {error.line}, column {error.column}: {error.message}" == message


def test_the_generated_lisp_for_the_example() -> None:
    compiled = algol.compile_algol("IF x > 10 THEN y := 5")
    assert compiled.lisp == '(if (> x 10) (define y 5))\n(append (if (defined? y) (list (list "y" y))))'
    assert compiled.variables == ("y",)


def test_for_compiles_to_while_with_temporaries_evaluated_once() -> None:
    compiled = algol.compile_algol("FOR i := 1 STEP s UNTIL n * 2 DO x := i")
    assert compiled.lisp.splitlines()[0] == (
        "(begin (define i 1) (define %step1 s) (define %limit1 (* n 2))"
        " (while (if (< %step1 0) (>= i %limit1) (<= i %limit1)) (define x i) (define i (+ i %step1))))"
    )


def test_variables_are_listed_in_order_of_first_assignment() -> None:
    compiled = algol.compile_algol("b := 1; IF b > 0 THEN a := 2 ELSE c := 3; FOR d := 1 UNTIL 2 DO b := d")
    assert compiled.variables == ("b", "a", "c", "d")


def test_nesting_just_inside_the_limit_compiles() -> None:
    depth = algol_parser.MAX_NESTING - 1  # the statement itself is one level
    assert run("x := " + "(" * depth + "1" + ")" * depth) == {"x": 1}
    assert run("IF TRUE THEN " * (algol_parser.MAX_NESTING - 1) + "x := 1") == {"x": 1}


def test_a_step_of_zero_loops_until_the_interpreter_stops_it() -> None:
    compiled = algol.compile_algol("FOR i := 1 STEP 0 UNTIL 2 DO x := i")
    with pytest.raises(lisp.LimitError, match=r"evaluation exceeded 1000 steps"):
        lisp.evaluate(compiled.lisp, max_steps=1000)


def test_reading_an_unassigned_variable_is_the_interpreters_error() -> None:
    compiled = algol.compile_algol("y := x + 1")
    with pytest.raises(lisp.EvalError, match="unbound symbol 'x'"):
        lisp.evaluate(compiled.lisp)


def test_every_lisp_name_that_is_an_identifier_is_refused() -> None:
    """algol_tokens.LISP_NAMES stays in step with the names lisp.py defines."""
    lisp_names = {*lisp._BUILTINS, *lisp._SPECIAL_FORMS, *lisp._SIMPLE_FORMS, *lisp._LITERALS}
    identifiers = {name for name in lisp_names if re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name)}
    assert identifiers - {keyword.lower() for keyword in algol_tokens.KEYWORDS} == algol_tokens.LISP_NAMES
