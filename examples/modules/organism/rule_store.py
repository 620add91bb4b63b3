"""Where the organism keeps its rules: the RuleStore interface and two implementations.

* `StateRuleStore`: the state service, one key per rule (`organism.rules.<id>`), so rules
  survive restarts, are shared by every instance, and are versioned like all state
  (`corral state get organism.rules.r1`, `corral state history ...`);
* `InMemoryRuleStore`: a dict in this process, for tests and for running without a state service.

`open_rule_store` picks one at start: the state service if it answers, else memory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Protocol

import msgspec
from nats.aio.client import Client
from rules import Rule

from corral.errors import CallTimeoutError, NotFoundError, UnavailableError
from corral.sdk.state import StateClient
from corral.state.keys import validate_key

__all__ = ["KEY_PREFIX", "InMemoryRuleStore", "RuleStore", "StateRuleStore", "open_rule_store"]

log = logging.getLogger("organism")

KEY_PREFIX = "organism.rules"


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

    async def replace_all(self, rules: Iterable[Rule]) -> None:
        """Forget every rule, then keep these (the `reset` control verb)."""
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

    async def replace_all(self, rules: Iterable[Rule]) -> None:
        self._rules = {rule.id: rule for rule in rules}


class _Stored(msgspec.Struct):
    """The value of `organism.rules.<id>`: the rule, and when it was first stored (for order)."""

    rule: Rule
    created: int  # time.time_ns() of the first put; a replacement keeps it


class StateRuleStore:
    """Rules in the state service: `organism.rules.<id>` holds `{"rule": {...}, "created": ns}`."""

    def __init__(self, state: StateClient) -> None:
        self.state = state

    @staticmethod
    def key(rule_id: str) -> str | None:
        """The rule's key, or None when the id cannot be one (then there is no such rule)."""
        try:
            return validate_key(f"{KEY_PREFIX}.{rule_id}")
        except ValueError:
            return None

    async def _get(self, rule_id: str) -> _Stored | None:
        key = self.key(rule_id)
        if key is None:
            return None
        try:
            entry = await self.state.get(key)
        except NotFoundError:
            return None
        return msgspec.convert(entry.value, _Stored)

    async def get(self, rule_id: str) -> Rule | None:
        stored = await self._get(rule_id)
        return None if stored is None else stored.rule

    async def all(self) -> list[Rule]:
        keys = await self.state.keys(f"{KEY_PREFIX}.>")
        if not keys:
            return []
        entries = await self.state.get_many(keys)
        stored = [msgspec.convert(entry.value, _Stored) for entry in entries.values()]
        return [item.rule for item in sorted(stored, key=lambda item: (item.created, item.rule.id))]

    async def put(self, rule: Rule) -> None:
        key = self.key(rule.id)
        if key is None:
            raise ValueError(f"rule id {rule.id!r} cannot be a state key")
        existing = await self._get(rule.id)
        created = existing.created if existing else time.time_ns()
        await self.state.set(key, msgspec.to_builtins(_Stored(rule, created)))

    async def delete(self, rule_id: str) -> bool:
        key = self.key(rule_id)
        return key is not None and await self.state.delete(key)

    async def replace_all(self, rules: Iterable[Rule]) -> None:
        for key in await self.state.keys(f"{KEY_PREFIX}.>"):
            await self.state.delete(key)
        for rule in rules:
            await self.put(rule)


async def open_rule_store(nc: Client, prefix: str, seed: Iterable[Rule]) -> RuleStore:
    """The state service's store (seeded with `seed` when it holds no rules yet) if the state
    service answers, else an in-memory store seeded with `seed`."""
    state = StateClient(nc, prefix=prefix, timeout=2.0)
    try:
        existing = await state.keys(f"{KEY_PREFIX}.>")
    except (UnavailableError, CallTimeoutError) as exc:
        log.warning("rules are kept in memory (lost on restart): the state service did not answer: %s", exc)
        return InMemoryRuleStore(seed)
    store = StateRuleStore(state)
    if not existing:
        await store.replace_all(seed)
    log.info("rules are kept in the state service under %s.* (%d found)", KEY_PREFIX, len(existing))
    return store
