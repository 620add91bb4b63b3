"""The organism's behaviour rules and the four ways to mutate one (pure logic, no NATS, no I/O).

A rule reads: when ``sensor comparator threshold`` holds, do ``action`` with ``intensity``.  Its
``condition`` is that test written in the interpreter's Lisp, e.g. ``(< energy threshold)``, so
it can be evaluated with the sensor readings and the rule's parameters as the context.

Mutations take a ``random.Random``, so the same seed and the same rule give the same result:

parameter
    one numeric parameter moves by 5 to 25 percent of its range, staying within the range.
structure
    the sensor, the comparator or the action changes to a different value of its alphabet.
duplicate
    an exact copy under a new id (``r1`` -> ``r1.1``, then ``r1.2``), one generation on, whose
    ``parent`` is the original; it can then drift apart by its own mutations.
delete
    the rule goes away.

Parameter and structure mutations keep the id and add one to ``generation``.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal, get_args

__all__ = [
    "ACTIONS",
    "COMPARATORS",
    "MUTATION_TYPES",
    "PARAMETER_RANGES",
    "SENSORS",
    "Mutation",
    "MutationType",
    "Rule",
    "child_id",
    "mutate",
    "seed_rules",
]

MutationType = Literal["parameter", "structure", "delete", "duplicate"]
MUTATION_TYPES: tuple[MutationType, ...] = get_args(MutationType)

SENSORS = ("energy", "temperature", "light", "food_distance", "threat")
COMPARATORS = ("<", ">", "<=", ">=")
ACTIONS = ("eat", "rest", "move", "flee", "hide", "reproduce")
PARAMETER_RANGES: dict[str, tuple[float, float]] = {"threshold": (0.0, 100.0), "intensity": (0.0, 1.0)}


@dataclass(frozen=True, slots=True)
class Rule:
    """When ``sensor comparator parameters["threshold"]``, do ``action`` with ``parameters["intensity"]``."""

    id: str
    sensor: str
    comparator: str
    action: str
    parameters: dict[str, float]  # never mutated in place: a mutation makes a new dict
    generation: int = 0
    parent: str | None = None  # the rule this one was duplicated from

    @property
    def condition(self) -> str:
        """The test in the interpreter's Lisp: ``(< energy threshold)``."""
        return f"({self.comparator} {self.sensor} threshold)"


@dataclass(frozen=True, slots=True)
class Mutation:
    """What a mutation did: ``rule`` is the changed rule or the new copy, None after a delete."""

    type: MutationType
    rule_id: str  # the rule that was mutated
    rule: Rule | None
    change: str  # for people: "threshold 30.0 -> 42.5", "action eat -> rest", "deleted r2"


def seed_rules() -> list[Rule]:
    """The rules an organism is born with."""
    return [
        Rule("r1", "energy", "<", "eat", {"threshold": 30.0, "intensity": 0.8}),
        Rule("r2", "threat", ">", "flee", {"threshold": 70.0, "intensity": 1.0}),
        Rule("r3", "energy", ">=", "reproduce", {"threshold": 90.0, "intensity": 0.5}),
        Rule("r4", "light", "<", "rest", {"threshold": 20.0, "intensity": 0.3}),
    ]


def mutate(rule: Rule, type_: MutationType, rng: random.Random, existing_ids: Collection[str]) -> Mutation:
    """Apply one mutation of ``type_`` to ``rule``; ``existing_ids`` keeps a duplicate's id unique."""
    if type_ == "parameter":
        return _mutate_parameter(rule, rng)
    if type_ == "structure":
        return _mutate_structure(rule, rng)
    if type_ == "duplicate":
        copy = dataclasses.replace(
            rule, id=child_id(rule.id, existing_ids), generation=rule.generation + 1, parent=rule.id
        )
        return Mutation(type_, rule.id, copy, f"duplicated {rule.id} as {copy.id}")
    return Mutation(type_, rule.id, None, f"deleted {rule.id}")


def child_id(parent_id: str, existing_ids: Collection[str]) -> str:
    """The first free ``<parent_id>.<n>``, n counting from 1."""
    number = 1
    while f"{parent_id}.{number}" in existing_ids:
        number += 1
    return f"{parent_id}.{number}"


def _mutate_parameter(rule: Rule, rng: random.Random) -> Mutation:
    name = rng.choice(sorted(rule.parameters))
    low, high = PARAMETER_RANGES.get(name, (0.0, 100.0))
    old = rule.parameters[name]
    delta = rng.uniform(0.05, 0.25) * (high - low) * rng.choice((-1, 1))
    if not low <= old + delta <= high:
        delta = -delta  # the step is at most a quarter of the range, so the other way stays inside
    new = round(min(max(old + delta, low), high), 3)
    mutated = dataclasses.replace(
        rule, parameters={**rule.parameters, name: new}, generation=rule.generation + 1
    )
    return Mutation("parameter", rule.id, mutated, f"{name} {old} -> {new}")


def _mutate_structure(rule: Rule, rng: random.Random) -> Mutation:
    part, alphabet = rng.choice((("sensor", SENSORS), ("comparator", COMPARATORS), ("action", ACTIONS)))
    old = getattr(rule, part)
    new = rng.choice([value for value in alphabet if value != old])
    changes: dict[str, Any] = {part: new, "generation": rule.generation + 1}
    mutated = dataclasses.replace(rule, **changes)
    return Mutation("structure", rule.id, mutated, f"{part} {old} -> {new}")
