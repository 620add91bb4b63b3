"""The organism module: a set of behaviour rules that mutate (see rules.py for the model).

    corral send organism rules                                               # every rule
    corral send organism get '{"ruleId": "r1"}'
    corral send organism mutate '{"ruleId": "r1", "mutationType": "parameter", "seed": 7}'

`mutationType` is one of parameter, structure, delete, duplicate; a `seed` makes the mutation
repeatable. The reply names the mutated rule, the resulting rule (the changed one or the new
copy; null after a delete) and the change in words. An unknown rule is NOT_FOUND.

Rules live in a RuleStore (rule_store.py). At start this process keeps them in the state service
(`organism.rules.<id>`, seeded when there are none) if the state service answers, else in memory
(seeded, lost on restart); the log says which. The `reset` control verb puts the seed rules back:
`nats req corral.modctl.organism.reset ''`. Run it standalone with
`python examples/modules/organism --no-wait` (no orchestrator needed).
"""

from __future__ import annotations

import random
from typing import Annotated, cast

import msgspec
from rule_store import InMemoryRuleStore, RuleStore, StateRuleStore, open_rule_store
from rules import MUTATION_TYPES, MutationType, Rule, mutate, seed_rules

from corral.sdk import Module, ModuleService, NotFoundError

__all__ = ["InMemoryRuleStore", "StateRuleStore", "build_module", "module"]

RuleId = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class RuleView(msgspec.Struct):
    id: str
    condition: str
    sensor: str
    comparator: str
    action: str
    parameters: dict[str, float]
    generation: int
    parent: str | None

    @classmethod
    def of(cls, rule: Rule) -> RuleView:
        return cls(
            rule.id, rule.condition, rule.sensor, rule.comparator, rule.action,
            dict(rule.parameters), rule.generation, rule.parent,
        )  # fmt: skip


class ListRequest(msgspec.Struct, forbid_unknown_fields=True):
    pass


class GetRequest(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    rule_id: RuleId


class MutateRequest(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    rule_id: RuleId
    # A plain str checked below: msgspec's error for a Literal does not list the allowed values.
    mutation_type: str
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.mutation_type not in MUTATION_TYPES:
            allowed = ", ".join(repr(name) for name in MUTATION_TYPES)
            raise ValueError(f"mutationType must be one of {allowed}; got {self.mutation_type!r}")


class MutateReply(msgspec.Struct, rename="camel"):
    mutation_type: str
    rule_id: str
    rule: RuleView | None
    change: str


class _Rules:
    """The store the handlers use; chosen at start unless given."""

    def __init__(self, store: RuleStore | None) -> None:
        self.chosen = store

    @property
    def store(self) -> RuleStore:
        if self.chosen is None:
            raise RuntimeError("the organism's rule store is chosen at start: start the module first")
        return self.chosen


def build_module(store: RuleStore | None = None) -> Module:
    """The organism module serving the rules of `store`; without one it picks the state service
    or memory at start (tests pass a store of their own)."""
    module = Module("organism", version="1.0.0", description="behaviour rules that mutate")
    rules_ = _Rules(store)

    if store is None:

        @module.on_start
        async def choose_store(service: ModuleService) -> None:
            rules_.chosen = await open_rule_store(service.nc, service.subjects.prefix, seed_rules())

    @module.on_reset
    async def reset() -> None:
        await rules_.store.replace_all(seed_rules())

    async def find(rule_id: str) -> Rule:
        store = rules_.store
        rule = await store.get(rule_id)
        if rule is None:
            known = [known.id for known in await store.all()]
            listing = f"known rules: {', '.join(known)}" if known else "there are no rules left"
            raise NotFoundError(f"no rule {rule_id!r}; {listing}")
        return rule

    @module.handler("rules")
    async def rules(_: ListRequest) -> list[RuleView]:
        """Every rule, oldest first."""
        return [RuleView.of(rule) for rule in await rules_.store.all()]

    @module.handler("get")
    async def get(req: GetRequest) -> RuleView:
        return RuleView.of(await find(req.rule_id))

    @module.handler("mutate")
    async def mutate_(req: MutateRequest) -> MutateReply:
        store = rules_.store
        rule = await find(req.rule_id)
        rng = random.Random(req.seed)  # seed None: fresh entropy
        existing = {known.id for known in await store.all()}
        mutation_type = cast(MutationType, req.mutation_type)  # checked in MutateRequest.__post_init__
        mutation = mutate(rule, mutation_type, rng, existing)
        if mutation.rule is None:
            await store.delete(rule.id)
        else:
            await store.put(mutation.rule)
        view = None if mutation.rule is None else RuleView.of(mutation.rule)
        return MutateReply(mutation.type, mutation.rule_id, view, mutation.change)

    return module


module = build_module()


if __name__ == "__main__":
    module.run()
