"""The dependency graph: checks, layers, start and stop order, dependents."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral import graph

DIAMONDS = {
    "base": [], "left": ["base"], "right": ["base"], "top": ["left", "right"],
    "a": ["top"], "b": ["top"], "c": ["a", "b"], "lone": [],
}  # fmt: skip


def test_layers_put_each_module_after_all_it_needs() -> None:
    assert graph.start_layers(DIAMONDS) == [["base", "lone"], ["left", "right"], ["top"], ["a", "b"], ["c"]]


def test_stop_order_is_the_reverse_of_the_start_order_it_is_given() -> None:
    started = ["lone", "base", "right", "left", "top", "b", "a", "c"]
    assert graph.stop_order(DIAMONDS, started) == list(reversed(started))
    # Without a start order: reverse start_order.
    assert graph.stop_order(DIAMONDS) == list(reversed(graph.start_order(DIAMONDS)))


def test_modules_that_never_started_hold_nothing_up() -> None:
    deps = {"base": [], "up": ["base"], "down": ["base"]}
    assert graph.stop_order(deps, ["base", "up"]) == ["down", "up", "base"]


def test_dependents_and_dependencies_are_transitive() -> None:
    assert graph.dependents(DIAMONDS, "left") == ["c", "b", "a", "top"]
    assert graph.dependents(DIAMONDS, "c") == []
    assert graph.dependencies(DIAMONDS, "c") == ["base", "left", "right", "top", "a", "b"]


@pytest.mark.parametrize(
    ("deps", "message"),
    [
        ({"a": ["b"], "b": ["c"], "c": ["a"]}, "dependency cycle: a -> b -> c -> a"),
        ({"a": ["a"]}, "dependency cycle: a -> a"),
        ({"x": [], "a": ["x", "b"], "b": ["a"]}, "dependency cycle: a -> b -> a"),
        ({"a": ["ghost"]}, "module 'a' depends on unknown module 'ghost' (modules: a)"),
    ],
)
def test_bad_graphs_are_refused_with_the_problem_named(deps: dict[str, list[str]], message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        graph.check(deps)


@st.composite
def dags(draw: st.DrawFn) -> dict[str, list[str]]:
    n = draw(st.integers(1, 25))
    names = [f"m{i}" for i in range(n)]
    return {
        name: draw(st.lists(st.sampled_from(names[:i]), unique=True, max_size=4)) if i else []
        for i, name in enumerate(names)
    }


@given(dags(), st.randoms(use_true_random=False))
def test_any_dag_starts_and_stops_in_a_valid_order(deps: dict[str, list[str]], rng: random.Random) -> None:
    order = graph.start_order(deps)
    assert sorted(order) == sorted(deps)
    for name, needs in deps.items():
        assert all(order.index(d) < order.index(name) for d in needs)
    started = list(order)
    rng.shuffle(started)
    stop = graph.stop_order(deps, started)
    assert sorted(stop) == sorted(deps)
    for name, needs in deps.items():
        assert all(stop.index(d) > stop.index(name) for d in needs)
