"""Where the organism keeps its rules: the RuleStore interface and its in-memory implementation.

The methods are async so a store on the state service or a JetStream KV bucket can implement the
same interface; the module only ever talks to a RuleStore.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from rules import Rule

__all__ = ["InMemoryRuleStore", "RuleStore"]


class RuleStore(Protocol):
    async def get(self, rule_id: str) -> Rule | None:
        """The rule, or None if there is none with that id."""
        ...

    async def all(self) -> list[Rule]:
        """Every rule, oldest first."""
        ...

    async def put(self, rule: Rule) -> None:
        """Add the rule, or replace the one with its id."""
        ...

    async def delete(self, rule_id: str) -> bool:
        """Remove the rule; False if there was none."""
        ...


class InMemoryRuleStore:
    """A dict in this process: state is lost on restart and not shared between instances."""

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self._rules = {rule.id: rule for rule in rules}

    async def get(self, rule_id: str) -> Rule | None:
        return self._rules.get(rule_id)

    async def all(self) -> list[Rule]:
        return list(self._rules.values())

    async def put(self, rule: Rule) -> None:
        self._rules[rule.id] = rule

    async def delete(self, rule_id: str) -> bool:
        return self._rules.pop(rule_id, None) is not None
