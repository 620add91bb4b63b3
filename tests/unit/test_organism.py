"""Unit tests for the organism's rule model, its mutations and the in-memory RuleStore."""

from __future__ import annotations

import dataclasses
import random
import re
import sys
from pathlib import Path
from typing import Any, get_args

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "examples/modules/organism"))

import rule_store
import rules
from rules import Rule

SEEDS = range(200)


def make_rule(**changes: Any) -> Rule:
    base = Rule("r1", "energy", "<", "eat", {"threshold": 30.0, "intensity": 0.8})
    return dataclasses.replace(base, **changes)


def mutate(
    rule: Rule, type_: rules.MutationType, seed: int, existing: set[str] | None = None
) -> rules.Mutation:
    return rules.mutate(rule, type_, random.Random(seed), existing or {rule.id})


def in_range(rule: Rule) -> bool:
    return all(
        rules.PARAMETER_RANGES[name][0] <= value <= rules.PARAMETER_RANGES[name][1]
        for name, value in rule.parameters.items()
    )


# ----------------------------------------------------------------------------------- the model


def test_seed_rules_are_valid() -> None:
    seeded = rules.seed_rules()
    assert [rule.id for rule in seeded] == ["r1", "r2", "r3", "r4"]
    for rule in seeded:
        assert rule.sensor in rules.SENSORS
        assert rule.comparator in rules.COMPARATORS
        assert rule.action in rules.ACTIONS
        assert set(rule.parameters) == set(rules.PARAMETER_RANGES)
        assert in_range(rule)
        assert (rule.generation, rule.parent) == (0, None)


def test_seed_rules_are_fresh_each_time() -> None:
    first, second = rules.seed_rules(), rules.seed_rules()
    assert first == second
    assert first[0].parameters is not second[0].parameters


def test_the_condition_is_the_test_in_lisp() -> None:
    assert make_rule().condition == "(< energy threshold)"
    assert make_rule(sensor="threat", comparator=">=").condition == "(>= threat threshold)"


def test_mutation_types_are_the_literal() -> None:
    assert (
        rules.MUTATION_TYPES
        == get_args(rules.MutationType)
        == ("parameter", "structure", "delete", "duplicate")
    )


# ------------------------------------------------------------------------------------ mutations


@pytest.mark.parametrize("type_", rules.MUTATION_TYPES)
def test_a_seed_makes_a_mutation_repeatable(type_: rules.MutationType) -> None:
    for seed in range(20):
        assert mutate(make_rule(), type_, seed) == mutate(make_rule(), type_, seed)


@pytest.mark.parametrize("type_", ["parameter", "structure"])
def test_different_seeds_give_different_mutations(type_: rules.MutationType) -> None:
    assert len({repr(mutate(make_rule(), type_, seed).rule) for seed in range(20)}) > 5


@pytest.mark.parametrize("rule", rules.seed_rules(), ids=lambda rule: rule.id)
def test_a_parameter_mutation_changes_one_parameter_within_its_range(rule: Rule) -> None:
    for seed in SEEDS:
        mutation = mutate(rule, "parameter", seed)
        assert mutation.rule is not None
        changed = {
            name for name in rule.parameters if mutation.rule.parameters[name] != rule.parameters[name]
        }
        assert len(changed) == 1, seed
        (name,) = changed
        low, high = rules.PARAMETER_RANGES[name]
        old, new = rule.parameters[name], mutation.rule.parameters[name]
        assert low <= new <= high
        assert 0.05 * (high - low) - 0.001 <= abs(new - old) <= 0.25 * (high - low) + 0.001
        assert mutation.change == f"{name} {old} -> {new}"
        assert mutation.rule == dataclasses.replace(
            rule, parameters=mutation.rule.parameters, generation=rule.generation + 1
        )


@pytest.mark.parametrize(("name", "value"), [("threshold", 0.0), ("threshold", 100.0), ("intensity", 1.0)])
def test_a_parameter_at_a_bound_stays_inside(name: str, value: float) -> None:
    rule = make_rule(parameters={"threshold": 50.0, "intensity": 0.5, name: value})
    for seed in SEEDS:
        mutated = mutate(rule, "parameter", seed).rule
        assert mutated is not None
        assert in_range(mutated), seed


def test_a_parameter_mutation_leaves_the_original_alone() -> None:
    rule = make_rule()
    before = dict(rule.parameters)
    for seed in range(20):
        mutate(rule, "parameter", seed)
    assert rule.parameters == before


def test_a_structure_mutation_changes_one_part_to_another_value_of_its_alphabet() -> None:
    rule = make_rule(generation=3, parent="r0")
    alphabets = {"sensor": rules.SENSORS, "comparator": rules.COMPARATORS, "action": rules.ACTIONS}
    seen = set()
    for seed in SEEDS:
        mutation = mutate(rule, "structure", seed)
        assert mutation.rule is not None
        changed = [part for part in alphabets if getattr(mutation.rule, part) != getattr(rule, part)]
        assert len(changed) == 1, seed
        (part,) = changed
        new = getattr(mutation.rule, part)
        assert new in alphabets[part]
        assert mutation.change == f"{part} {getattr(rule, part)} -> {new}"
        assert mutation.rule == dataclasses.replace(rule, **{part: new}, generation=4)
        seen.add(part)
    assert seen == set(alphabets)  # every part gets mutated for some seed


def test_duplicate_copies_under_a_child_id() -> None:
    rule = make_rule(generation=2)
    mutation = mutate(rule, "duplicate", 0, {"r1", "r2"})
    assert mutation == rules.Mutation(
        "duplicate",
        "r1",
        dataclasses.replace(rule, id="r1.1", generation=3, parent="r1"),
        "duplicated r1 as r1.1",
    )
    again = mutate(rule, "duplicate", 0, {"r1", "r1.1"})
    assert again.rule is not None
    assert again.rule.id == "r1.2"


def test_delete_removes_the_rule() -> None:
    assert mutate(make_rule(id="r7"), "delete", 0) == rules.Mutation("delete", "r7", None, "deleted r7")


@pytest.mark.parametrize(
    ("parent", "existing", "expected"),
    [
        ("r1", set(), "r1.1"),
        ("r1", {"r1", "r1.1"}, "r1.2"),
        ("r1", {"r1.1", "r1.3"}, "r1.2"),  # the first free number
        ("r1.2", {"r1.2", "r1.2.1"}, "r1.2.2"),
        ("r1", {"r2.1"}, "r1.1"),
    ],
)
def test_child_id(parent: str, existing: set[str], expected: str) -> None:
    assert rules.child_id(parent, existing) == expected


def test_change_texts_read_well() -> None:
    texts = [mutate(make_rule(), type_, 3).change for type_ in rules.MUTATION_TYPES]
    assert re.fullmatch(r"(threshold|intensity) [0-9.]+ -> [0-9.]+", texts[0])
    assert re.fullmatch(r"(sensor|comparator|action) \S+ -> \S+", texts[1])
    assert texts[2:] == ["deleted r1", "duplicated r1 as r1.1"]


# ---------------------------------------------------------------------------------------- store


async def test_the_in_memory_store() -> None:
    store: rule_store.RuleStore = rule_store.InMemoryRuleStore(rules.seed_rules())
    assert [rule.id for rule in await store.all()] == ["r1", "r2", "r3", "r4"]
    r2 = await store.get("r2")
    assert r2 is not None
    assert r2.action == "flee"
    assert await store.get("r9") is None

    await store.put(dataclasses.replace(r2, action="hide"))  # replaces, keeps its place
    await store.put(make_rule(id="r1.1"))  # adds at the end
    assert [(rule.id, rule.action) for rule in await store.all()] == [
        ("r1", "eat"), ("r2", "hide"), ("r3", "reproduce"), ("r4", "rest"), ("r1.1", "eat"),
    ]  # fmt: skip

    assert await store.delete("r3") is True
    assert await store.delete("r3") is False
    assert await store.get("r3") is None
    assert [rule.id for rule in await store.all()] == ["r1", "r2", "r4", "r1.1"]


async def test_stores_do_not_share_rules() -> None:
    first, second = rule_store.InMemoryRuleStore(rules.seed_rules()), rule_store.InMemoryRuleStore()
    await first.delete("r1")
    assert await second.all() == []
    assert [rule.id for rule in await first.all()] == ["r2", "r3", "r4"]
