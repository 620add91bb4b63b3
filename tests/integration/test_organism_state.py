"""The organism keeps its rules in the state service when one answers (a real StateService
in-process), and in memory when none does."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from nats.aio.client import Client

from corral.runtime import ServiceSettings
from corral.sdk.state import StateClient
from corral.state.service import StateService

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "modules" / "organism"


def load_organism() -> ModuleType:
    """`examples/modules/organism/__main__.py` under the name test_examples.py gives it."""
    name = "corral_example_organism"
    if name in sys.modules:
        return sys.modules[name]
    if str(EXAMPLE) not in sys.path:
        sys.path.insert(0, str(EXAMPLE))
    spec = importlib.util.spec_from_file_location(name, EXAMPLE / "__main__.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


organism = load_organism()


async def ok(nc: Client, prefix: str, subject: str, payload: Any = None) -> Any:
    msg = await nc.request(f"{prefix}.{subject}", json.dumps(payload or {}).encode(), timeout=10)
    reply: dict[str, Any] = json.loads(msg.data)
    assert reply["success"] is True, reply
    return reply["payload"]


async def test_rules_live_in_the_state_service_and_survive_a_restart(
    settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    state = StateClient(nc, prefix=prefix)
    async with StateService(settings):
        async with organism.build_module().service(settings):
            rules = await ok(nc, prefix, "mod.organism.rules")
            assert [rule["id"] for rule in rules] == ["r1", "r2", "r3", "r4"]
            assert await state.keys("organism.rules.>") == [f"organism.rules.r{n}" for n in range(1, 5)]
            entry = await state.get("organism.rules.r1")
            assert entry.value["rule"]["action"] == "eat"

            dup = await ok(
                nc, prefix, "mod.organism.mutate", {"ruleId": "r1", "mutationType": "duplicate", "seed": 1}
            )
            assert dup["rule"]["id"] == "r1.1"
            await ok(nc, prefix, "mod.organism.mutate", {"ruleId": "r2", "mutationType": "delete"})
            moved = await ok(
                nc, prefix, "mod.organism.mutate", {"ruleId": "r3", "mutationType": "parameter", "seed": 3}
            )
            assert moved["rule"]["generation"] == 1

        # A new process (here: a new service) finds the rules where the last one left them.
        async with organism.build_module().service(settings):
            rules = await ok(nc, prefix, "mod.organism.rules")
            assert [rule["id"] for rule in rules] == ["r1", "r3", "r4", "r1.1"]
            assert rules[1]["generation"] == 1
            assert len(await state.history("organism.rules.r3")) == 2  # versioned like all state

            # `reset` puts the seed rules back (after draining), then starts again.
            await ok(nc, prefix, "modctl.organism.reset")

            async def seeded() -> bool:
                try:
                    rules = await ok(nc, prefix, "mod.organism.rules")
                except Exception:
                    return False
                return [rule["id"] for rule in rules] == ["r1", "r2", "r3", "r4"]

            for _ in range(100):
                if await seeded():
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the organism did not reset its rules")
            assert all(rule["generation"] == 0 for rule in await ok(nc, prefix, "mod.organism.rules"))


async def test_without_a_state_service_rules_are_kept_in_memory(
    settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    async with organism.build_module().service(settings):
        await ok(nc, prefix, "mod.organism.mutate", {"ruleId": "r4", "mutationType": "delete"})
        rules = await ok(nc, prefix, "mod.organism.rules")
        assert [rule["id"] for rule in rules] == ["r1", "r2", "r3"]
