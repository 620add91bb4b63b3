"""The Lisp evaluator: special forms as generators, driven by an explicit stack (no Python recursion)."""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, TypeAlias

from lisp_builtins import BUILTINS
from lisp_data import as_tuple, describe, excerpt, from_json, map_tree
from lisp_values import (
    NIL,
    Args,
    Atom,
    Budget,
    Builtin,
    Env,
    EvalError,
    Lambda,
    LimitError,
    LispError,
    ListNode,
    Node,
    Symbol,
    Value,
    truthy,
)

_Eval: TypeAlias = "Generator[tuple[Node, Env], Value, Value]"


def _arity_text(min_args: int, max_args: int | None) -> str:
    if max_args is None:
        count, noun = f"at least {min_args}", min_args
    elif max_args == min_args:
        count, noun = str(min_args), min_args
    elif max_args == min_args + 1:
        count, noun = f"{min_args} or {max_args}", max_args
    else:
        count, noun = f"{min_args} to {max_args}", max_args
    return f"{count} argument{'' if noun == 1 else 's'}"


def _check_arity(label: str, count: int, min_args: int, max_args: int | None) -> None:
    if count < min_args or (max_args is not None and count > max_args):
        raise EvalError(f"{label} expects {_arity_text(min_args, max_args)}, got {count}")


def _located(error: LispError, node: Node) -> LispError:
    if error.line is not None:
        return error
    return type(error)(error.message, node.line, node.column)


def _node_children(node: Node) -> tuple[Node, ...] | None:
    return node.items if isinstance(node, ListNode) else None


def _node_value(node: Node) -> Value:
    return node.value if isinstance(node, Atom) else NIL


def _symbol_name(node: Node) -> str | None:
    if isinstance(node, Atom) and isinstance(node.value, Symbol):
        return node.value.name
    return None


class Interpreter:
    def __init__(self, source: str, max_steps: int, max_depth: int) -> None:
        self.source = source
        self.budget = Budget(max_steps)
        self.max_depth = max_depth
        self.depth = 0
        self.quoted: dict[int, Value] = {}

    # -- driver

    def run(self, root: Node, env: Env) -> Value:
        """Evaluate ``root`` with an explicit stack of special-form generators."""
        stack: list[_Eval] = []
        request: tuple[Node, Env] | None = (root, env)
        value: Value = NIL
        while True:
            try:
                if request is not None:
                    node, node_env = request
                    self.budget.charge(1, node)
                    if isinstance(node, Atom):
                        value, request = self.eval_atom(node, node_env), None
                        continue
                    stack.append(self.eval_list(node, node_env))
                    request = next(stack[-1])
                elif not stack:
                    return value
                else:
                    request = stack[-1].send(value)
            except StopIteration as done:
                stack.pop()
                value, request = done.value, None

    def eval_atom(self, node: Atom, env: Env) -> Value:
        if not isinstance(node.value, Symbol):
            return node.value
        name = node.value.name
        scope = env.find(name)
        if scope is not None:
            return scope.vars[name]
        if name in SPECIAL_FORMS or name in SIMPLE_FORMS:
            raise EvalError(f"special form '{name}' cannot be used as a value", node.line, node.column)
        raise EvalError(f"unbound symbol '{name}'", node.line, node.column)

    def eval_list(self, node: ListNode, env: Env) -> _Eval:
        if not node.items:
            return NIL
        name = _symbol_name(node.items[0]) or ""
        if name in SIMPLE_FORMS:
            return SIMPLE_FORMS[name](self, node, env)
        if name in SPECIAL_FORMS:
            return (yield from SPECIAL_FORMS[name](self, node, env))
        function = yield node.items[0], env
        args: list[Value] = []
        for arg in node.items[1:]:
            args.append((yield arg, env))
        if isinstance(function, Builtin):
            return self.call_builtin(function, tuple(args), node)
        if isinstance(function, Lambda):
            return (yield from self.call_lambda(function, tuple(args), node))
        raise EvalError(f"cannot call {describe(function)}", node.line, node.column)

    def eval_body(self, body: Sequence[Node], env: Env) -> _Eval:
        result: Value = NIL
        for form in body:
            result = yield form, env
        return result

    # -- calls

    def call_builtin(self, function: Builtin, args: Args, node: ListNode) -> Value:
        try:
            _check_arity(f"'{function.name}'", len(args), function.min_args, function.max_args)
            result = function.fn(args, self.budget)
            self.budget.charge_data(len(result) if isinstance(result, tuple | str) else 0)
        except ArithmeticError as error:
            reason = "division by zero" if isinstance(error, ZeroDivisionError) else str(error)
            raise EvalError(f"{reason} in {self.snippet(node)}", node.line, node.column) from None
        except LispError as error:
            raise _located(error, node) from None
        return result

    def call_lambda(self, function: Lambda, args: Args, node: ListNode) -> _Eval:
        try:
            _check_arity(function.label(), len(args), len(function.params), len(function.params))
        except LispError as error:
            raise _located(error, node) from None
        if self.depth >= self.max_depth:
            raise LimitError(f"recursion deeper than {self.max_depth} calls", node.line, node.column)
        scope = Env(dict(zip(function.params, args, strict=True)), function.env)
        self.depth += 1
        result = yield from self.eval_body(function.body, scope)
        self.depth -= 1
        return result

    # -- syntax helpers

    def snippet(self, node: Node) -> str:
        return excerpt(self.source[node.start : node.end])

    def error(self, message: str, node: Node) -> EvalError:
        return EvalError(message, node.line, node.column)

    def check_form(self, node: ListNode, min_args: int, max_args: int | None = None) -> None:
        try:
            _check_arity(f"'{_symbol_name(node.items[0])}'", len(node.items) - 1, min_args, max_args)
        except LispError as error:
            raise _located(error, node) from None

    def binding_name(self, node: Node, form: str) -> str:
        name = _symbol_name(node)
        if name is None:
            raise self.error(f"'{form}' expects a symbol, got {self.snippet(node)}", node)
        if name in SPECIAL_FORMS or name in SIMPLE_FORMS:
            raise self.error(f"'{name}' is a special form and cannot be rebound", node)
        return name

    def params(self, nodes: Sequence[Node], form: str) -> tuple[str, ...]:
        names: list[str] = []
        for node in nodes:
            name = self.binding_name(node, form)
            if name in names:
                raise self.error(f"duplicate parameter '{name}' in {form}", node)
            names.append(name)
        return tuple(names)

    def let_bindings(self, node: Node) -> list[tuple[str, Node]]:
        if not isinstance(node, ListNode):
            raise self.error(f"'let' expects a list of (name value) bindings, got {self.snippet(node)}", node)
        pairs: list[tuple[str, Node]] = []
        for binding in node.items:
            if not isinstance(binding, ListNode) or len(binding.items) != 2:
                raise self.error(
                    f"malformed let binding {self.snippet(binding)}: expected (name value)", binding
                )
            name = self.binding_name(binding.items[0], "let")
            if any(name == seen for seen, _ in pairs):
                raise self.error(f"duplicate name '{name}' in let", binding.items[0])
            pairs.append((name, binding.items[1]))
        return pairs

    # -- special forms

    def form_quote(self, node: ListNode, env: Env) -> Value:
        self.check_form(node, 1, 1)
        quoted = node.items[1]
        if id(quoted) not in self.quoted:
            self.quoted[id(quoted)] = map_tree(quoted, _node_children, _node_value, as_tuple)
        return self.quoted[id(quoted)]

    def form_lambda(self, node: ListNode, env: Env) -> Value:
        self.check_form(node, 2)
        params = node.items[1]
        if not isinstance(params, ListNode):
            raise self.error(f"'lambda' expects a parameter list, got {self.snippet(params)}", params)
        return Lambda(self.params(params.items, "lambda"), node.items[2:], env)

    def form_if(self, node: ListNode, env: Env) -> _Eval:
        self.check_form(node, 2, 3)
        if truthy((yield node.items[1], env)):
            return (yield node.items[2], env)
        return (yield node.items[3], env) if len(node.items) == 4 else NIL

    def form_let(self, node: ListNode, env: Env) -> _Eval:
        self.check_form(node, 2)
        scope: dict[str, Value] = {}
        for name, expression in self.let_bindings(node.items[1]):
            scope[name] = yield expression, env
        return (yield from self.eval_body(node.items[2:], Env(scope, env)))

    def form_define(self, node: ListNode, env: Env) -> _Eval:
        self.check_form(node, 2)
        target = node.items[1]
        if isinstance(target, ListNode):  # (define (name params...) body...)
            if not target.items:
                raise self.error("'define' expects a symbol, got ()", target)
            name = self.binding_name(target.items[0], "define")
            env.vars[name] = Lambda(self.params(target.items[1:], "define"), node.items[2:], env, name)
            return Symbol(name)
        self.check_form(node, 2, 2)
        name = self.binding_name(target, "define")
        value = yield node.items[2], env
        if isinstance(value, Lambda) and value.name is None:
            value.name = name
        env.vars[name] = value
        return Symbol(name)

    def form_set(self, node: ListNode, env: Env) -> _Eval:
        self.check_form(node, 2, 2)
        name = self.binding_name(node.items[1], "set!")
        value = yield node.items[2], env
        scope = env.find(name)
        if scope is None:
            raise self.error(f"cannot set! unbound symbol '{name}'", node.items[1])
        scope.vars[name] = value
        return value

    def form_begin(self, node: ListNode, env: Env) -> _Eval:
        return (yield from self.eval_body(node.items[1:], env))

    def form_and(self, node: ListNode, env: Env) -> _Eval:
        result: Value = True
        for expression in node.items[1:]:
            result = yield expression, env
            if not truthy(result):
                break
        return result

    def form_or(self, node: ListNode, env: Env) -> _Eval:
        result: Value = False
        for expression in node.items[1:]:
            result = yield expression, env
            if truthy(result):
                break
        return result

    def form_while(self, node: ListNode, env: Env) -> _Eval:
        self.check_form(node, 1)
        while truthy((yield node.items[1], env)):
            for form in node.items[2:]:
                yield form, env
        return NIL

    def form_defined(self, node: ListNode, env: Env) -> Value:
        self.check_form(node, 1, 1)
        name = _symbol_name(node.items[1])
        if name is None:
            raise self.error(f"'defined?' expects a symbol, got {self.snippet(node.items[1])}", node.items[1])
        return env.find(name) is not None

    def form_cond(self, node: ListNode, env: Env) -> _Eval:
        for clause in node.items[1:]:
            if not isinstance(clause, ListNode) or not clause.items:
                raise self.error(
                    f"malformed cond clause {self.snippet(clause)}: expected (test body...)", clause
                )
            test_node = clause.items[0]
            test = True if _symbol_name(test_node) == "else" else (yield test_node, env)
            if truthy(test):
                return (yield from self.eval_body(clause.items[1:], env)) if len(clause.items) > 1 else test
        return NIL


# Forms that evaluate sub-expressions are generators; quote, lambda and defined? never do.
SPECIAL_FORMS: dict[str, Callable[[Interpreter, ListNode, Env], _Eval]] = {
    "if": Interpreter.form_if,
    "let": Interpreter.form_let,
    "define": Interpreter.form_define,
    "set!": Interpreter.form_set,
    "begin": Interpreter.form_begin,
    "and": Interpreter.form_and,
    "or": Interpreter.form_or,
    "cond": Interpreter.form_cond,
    "while": Interpreter.form_while,
}
SIMPLE_FORMS: dict[str, Callable[[Interpreter, ListNode, Env], Value]] = {
    "quote": Interpreter.form_quote,
    "lambda": Interpreter.form_lambda,
    "defined?": Interpreter.form_defined,
}


def global_env(context: Mapping[str, Any] | None) -> Env:
    bindings: dict[str, Value] = dict(BUILTINS)
    for name, value in (context or {}).items():
        if not isinstance(name, str):
            raise EvalError(f"context names must be strings, got {name!r}")
        bindings[name] = from_json(name, value)
    return Env(bindings)
