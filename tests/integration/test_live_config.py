"""Live configuration through a real orchestrator and real SDK module instances:
`<prefix>.orchestrator.config.get|set|history|rollback`, KV `<prefix>_config`, and
`<prefix>.evt.config.<module>`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import pytest
from nats.aio.client import Client
from nats.js import api

from corral.bus import request as bus_request
from corral.live_config import ConfigDocument
from corral.orchestrator.service import OrchestratorService
from corral.runtime import ServiceSettings
from corral.sdk import Module


class CompilerSettings(msgspec.Struct):
    max_depth: Annotated[int, msgspec.Meta(ge=1)] = 32
    mode: Literal["fast", "safe"] = "safe"


@dataclass
class Instance:
    """One module instance (its own Module object, as in its own process) and what it saw."""

    module: Module
    settings: ServiceSettings
    seen: list[CompilerSettings] = field(default_factory=list)
    refuse: bool = False  # its hook refuses every config (a check only this instance makes)


def compiler(settings: ServiceSettings, instance: str) -> Instance:
    module = Module("compiler", version="2.0.0")
    holder = Instance(module, msgspec.structs.replace(settings, instance=instance))

    @module.handler("depth")
    async def depth(_: dict[str, Any]) -> int:
        config: CompilerSettings = module.config
        return config.max_depth

    @module.on_config
    async def configure(config: CompilerSettings) -> None:
        if holder.refuse:
            raise RuntimeError(f"instance {instance} cannot allocate for depth {config.max_depth}")
        if config.max_depth > 10_000:
            raise ValueError(f"max_depth {config.max_depth} would exhaust the stack")
        holder.seen.append(config)

    return holder


async def request(nc: Client, subject: str, body: Any) -> dict[str, Any]:
    msg = await bus_request(nc, subject, json.dumps(body).encode(), timeout=15)
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


class Api:
    def __init__(self, nc: Client, prefix: str) -> None:
        self.nc = nc
        self.prefix = prefix

    async def call(self, verb: str, body: Any) -> dict[str, Any]:
        return await request(self.nc, f"{self.prefix}.orchestrator.config.{verb}", body)

    async def ok(self, verb: str, body: Any) -> Any:
        reply = await self.call(verb, body)
        assert reply["success"] is True, reply
        return reply["payload"]

    async def fails(self, verb: str, body: Any, code: str) -> list[str]:
        reply = await self.call(verb, body)
        assert reply["success"] is False, reply
        assert reply["payload"]["code"] == code, reply
        errors: list[str] = reply["payload"]["errors"]
        return errors

    async def depth(self) -> int:
        reply = await request(self.nc, f"{self.prefix}.mod.compiler.depth", {})
        assert reply["success"], reply
        value: int = reply["payload"]
        return value


@pytest.fixture
async def system(
    settings: ServiceSettings, nc: Client, prefix: str
) -> AsyncIterator[tuple[Api, list[Instance]]]:
    instances = [compiler(settings, "c1"), compiler(settings, "c2")]
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(OrchestratorService(settings, initial_config={}))
        for inst in instances:
            await stack.enter_async_context(inst.module.service(inst.settings))
        yield Api(nc, prefix), instances


async def config_events(nc: Client, prefix: str, count: int) -> list[dict[str, Any]]:
    sub = await nc.jetstream().subscribe(
        f"{prefix}.evt.config.compiler",
        stream=f"{prefix.upper()}_EVENTS",
        ordered_consumer=True,
        deliver_policy=api.DeliverPolicy.ALL,
    )
    try:
        return [json.loads((await sub.next_msg(timeout=5)).data) for _ in range(count)]
    finally:
        await sub.unsubscribe()


async def test_a_valid_set_is_applied_in_every_running_instance_then_versioned(
    system: tuple[Api, list[Instance]], nc: Client, prefix: str
) -> None:
    api_, instances = system
    assert await api_.depth() == 32
    change = await api_.ok("set", {"module": "compiler", "values": {"max_depth": 64}})
    assert change["version"] == 1
    assert change["previous_version"] == 0
    assert change["changed"] == ["max_depth"]
    assert change["applied_to"] == ["c1", "c2"]
    for inst in instances:  # each instance's hook saw it, and its handler serves with it
        assert inst.seen == [CompilerSettings(max_depth=64)]
        assert inst.module.config_version == 1  # the stored version number, in every instance
    assert {await api_.depth() for _ in range(6)} == {64}
    # A second change merges over the first.
    change = await api_.ok("set", {"module": "compiler", "values": {"mode": "fast"}})
    assert change["version"] == 2
    assert change["values"] == {"max_depth": 64, "mode": "fast"}
    view = await api_.ok("get", {"module": "compiler"})
    assert (view["version"], view["values"], view["source"]) == (2, {"max_depth": 64, "mode": "fast"}, "set")
    assert view["schema"]["$defs"]["CompilerSettings"]["properties"]["max_depth"]["minimum"] == 1
    assert [(i["instance"], i["config_version"]) for i in view["instances"]] == [("c1", 2), ("c2", 2)]
    events = await config_events(nc, prefix, 2)
    assert [(e["version"], e["changed"]) for e in events] == [(1, ["max_depth"]), (2, ["mode"])]


async def test_an_invalid_set_is_refused_with_the_field_and_the_old_config_stays(
    system: tuple[Api, list[Instance]],
) -> None:
    api_, instances = system
    await api_.ok("set", {"module": "compiler", "values": {"max_depth": 64}})
    errors = await api_.fails("set", {"module": "compiler", "values": {"max_depth": "deep"}}, "VALIDATION")
    assert "Expected `int`, got `str` - at `$.max_depth`" in errors[0]
    errors = await api_.fails("set", {"module": "compiler", "values": {"max_depth": 0}}, "VALIDATION")
    assert ">= 1 - at `$.max_depth`" in errors[0]
    errors = await api_.fails("set", {"module": "compiler", "values": {"max_dept": 65}}, "VALIDATION")
    assert errors == ["unknown config field 'max_dept' (the fields are max_depth, mode) - at `$.max_dept`"]
    errors = await api_.fails("set", {"module": "compiler", "values": {"max_depth": 20_000}}, "VALIDATION")
    assert "would exhaust the stack" in errors[0]
    assert "nothing was committed" in errors[-1]
    view = await api_.ok("get", {"module": "compiler"})
    assert (view["version"], view["values"]) == (1, {"max_depth": 64})
    assert {await api_.depth() for _ in range(6)} == {64}
    for inst in instances:
        assert inst.seen == [CompilerSettings(max_depth=64)]
        assert inst.module.config_version == 1


async def test_an_instance_refusing_puts_the_others_back_and_nothing_is_committed(
    system: tuple[Api, list[Instance]],
) -> None:
    api_, instances = system
    await api_.ok("set", {"module": "compiler", "values": {"max_depth": 64}})
    instances[1].refuse = True
    errors = await api_.fails("set", {"module": "compiler", "values": {"max_depth": 128}}, "VALIDATION")
    assert "instance c2 cannot allocate for depth 128" in errors[0]
    # c1 took 128 first, then was given its previous config back.
    assert [s.max_depth for s in instances[0].seen] == [64, 128, 64]
    assert instances[0].module.config == CompilerSettings(max_depth=64)
    assert instances[0].module.config_version == 1
    assert instances[1].module.config == CompilerSettings(max_depth=64)
    assert (await api_.ok("get", {"module": "compiler"}))["version"] == 1


async def test_history_lists_versions_and_rollback_restores_and_applies_one(
    system: tuple[Api, list[Instance]],
) -> None:
    api_, instances = system
    for depth in (40, 50, 60):
        await api_.ok("set", {"module": "compiler", "values": {"max_depth": depth}})
    versions = await api_.ok("history", {"module": "compiler"})
    assert [(v["version"], v["values"]["max_depth"], v["source"]) for v in versions] == [
        (1, 40, "set"), (2, 50, "set"), (3, 60, "set"),
    ]  # fmt: skip
    change = await api_.ok("rollback", {"module": "compiler", "version": 1})
    assert (change["version"], change["values"], change["note"]) == (
        4,
        {"max_depth": 40},
        "rollback to version 1",
    )
    assert change["source"] == "rollback"
    assert {await api_.depth() for _ in range(6)} == {40}
    assert all(inst.module.config_version == 4 for inst in instances)
    errors = await api_.fails("rollback", {"module": "compiler", "version": 9}, "NOT_FOUND")
    assert errors == ["module 'compiler' has no config version 9: versions 1..4 are kept"]
    # A whole document replaces instead of merging.
    change = await api_.ok("set", {"module": "compiler", "values": {"mode": "fast"}, "replace": True})
    assert change["values"] == {"mode": "fast"}
    assert {await api_.depth() for _ in range(4)} == {32}


async def test_expected_version_guards_a_set(system: tuple[Api, list[Instance]]) -> None:
    api_, _ = system
    await api_.ok("set", {"module": "compiler", "values": {"max_depth": 64}, "expected_version": 0})
    errors = await api_.fails(
        "set", {"module": "compiler", "values": {"max_depth": 65}, "expected_version": 0}, "CONFLICT"
    )
    assert errors == ["the config of 'compiler' is at version 1, not 0"]


@pytest.mark.parametrize(
    ("verb", "body", "field"),
    [
        ("get", {}, "missing required field `module`"),
        ("get", {"module": "no such"}, "$.module"),
        ("set", {"module": "compiler"}, "missing required field `values`"),
        ("set", {"module": "compiler", "values": [1, 2]}, "$.values"),
        ("set", {"module": "compiler", "values": {}, "expected_version": -1}, "$.expected_version"),
        ("set", {"module": "compiler", "values": {}, "colour": "red"}, "unknown field `colour`"),
        ("history", {"module": 7}, "$.module"),
        ("rollback", {"module": "compiler", "version": 0}, "$.version"),
        ("rollback", {"module": "compiler"}, "missing required field `version`"),
    ],
)
async def test_bad_input_gets_validation_naming_the_field(
    settings: ServiceSettings, nc: Client, prefix: str, verb: str, body: dict[str, Any], field: str
) -> None:
    async with OrchestratorService(settings, initial_config={}):
        errors = await Api(nc, prefix).fails(verb, body, "VALIDATION")
    assert field in errors[0], errors


async def test_a_stopped_module_is_checked_against_its_last_schema_and_starts_with_the_change(
    settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    api_ = Api(nc, prefix)
    async with OrchestratorService(settings, initial_config={}):
        errors = await api_.fails("set", {"module": "compiler", "values": {"max_depth": 64}}, "UNAVAILABLE")
        assert "is not running and has never declared its config schema" in errors[0]
        first = compiler(settings, "c1")
        async with first.module.service(first.settings):  # runs once: records its schema
            pass
        errors = await api_.fails("set", {"module": "compiler", "values": {"max_depth": "x"}}, "VALIDATION")
        assert errors == ["'x' is not of type 'integer' - at `$.max_depth`"]
        errors = await api_.fails("set", {"module": "compiler", "values": {"mode": "slow"}}, "VALIDATION")
        assert errors == ["'slow' is not one of ['fast', 'safe'] - at `$.mode`"]
        change = await api_.ok("set", {"module": "compiler", "values": {"max_depth": 99}})
        assert (change["version"], change["applied_to"]) == (1, [])
        # Started again (a new process would be a new Module object): it runs the live version.
        again = compiler(settings, "c1")
        async with again.module.service(again.settings) as service:
            assert await api_.depth() == 99
            assert again.seen == [CompilerSettings(max_depth=99)]
            assert again.module.config_version == 1
            # An in-process restart keeps it too, without applying it twice.
            await service.restart()
            assert await api_.depth() == 99
            assert again.seen == [CompilerSettings(max_depth=99)]


async def test_corral_toml_config_seeds_kv_once_and_live_changes_survive_a_restart(
    settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    api_ = Api(nc, prefix)
    initial = {"compiler": {"max_depth": 12}}
    async with OrchestratorService(settings, initial_config=initial):
        inst = compiler(settings, "c1")
        async with inst.module.service(inst.settings):
            assert await api_.depth() == 12
            view = await api_.ok("get", {"module": "compiler"})
            assert (view["version"], view["source"]) == (1, "corral.toml")
            await api_.ok("set", {"module": "compiler", "values": {"max_depth": 80}})
    # The orchestrator and the module start again: the file does not override the live change.
    async with OrchestratorService(settings, initial_config=initial):
        inst = compiler(settings, "c1")
        async with inst.module.service(inst.settings):
            assert await api_.depth() == 80
            assert (await api_.ok("get", {"module": "compiler"}))["version"] == 2


async def test_get_of_a_module_running_its_defaults_and_of_an_unknown_one(
    system: tuple[Api, list[Instance]],
) -> None:
    api_, _ = system
    view = await api_.ok("get", {"module": "compiler"})
    assert (view["version"], view["values"], view["source"]) == (
        0,
        {"max_depth": 32, "mode": "safe"},
        "defaults",
    )
    errors = await api_.fails("get", {"module": "nobody"}, "NOT_FOUND")
    assert "has no config" in errors[0]
    await api_.fails("history", {"module": "compiler"}, "NOT_FOUND")


async def test_an_instance_that_missed_the_broadcast_applies_the_committed_version(
    system: tuple[Api, list[Instance]], nc: Client, prefix: str
) -> None:
    api_, instances = system
    await api_.ok("set", {"module": "compiler", "values": {"max_depth": 64}})
    # A version committed while an instance was starting reaches it through its watch of the key
    # (written here straight to KV, as the orchestrator commits it).
    kv = await nc.jetstream().key_value(f"{prefix}_config")
    document = ConfigDocument(module="compiler", version=2, values={"max_depth": 70}, time=0.0, source="set")
    await kv.put("compiler", msgspec.json.encode(document))
    for _ in range(100):
        if all(inst.module.config_version == 2 for inst in instances):
            break
        await asyncio.sleep(0.02)
    assert [inst.module.config for inst in instances] == [CompilerSettings(max_depth=70)] * 2
    # Each instance applied each version once: the broadcast's, then the watch's.
    assert [[s.max_depth for s in inst.seen] for inst in instances] == [[64, 70], [64, 70]]


async def test_an_instance_too_slow_to_answer_fails_the_set_and_ends_on_the_old_config(
    settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    module = Module("compiler")
    slow_hook_done = asyncio.Event()

    @module.on_config
    async def configure(config: CompilerSettings) -> None:
        if config.max_depth == 777:
            await asyncio.sleep(2.0)  # longer than the orchestrator waits
            slow_hook_done.set()

    api_ = Api(nc, prefix)
    async with OrchestratorService(settings, initial_config={}) as orchestrator, module.service(settings):
        assert orchestrator.config_rollout is not None
        await api_.ok("set", {"module": "compiler", "values": {"max_depth": 64}})
        orchestrator.config_rollout.apply_timeout = 1.0
        errors = await api_.fails("set", {"module": "compiler", "values": {"max_depth": 777}}, "UNAVAILABLE")
        assert errors == [
            "1 of 1 instances of 'compiler' did not answer within 1s; "
            "module 'compiler' keeps its config; nothing was committed"
        ]
        # The slow hook finishes, then the old config is put back after it.
        await asyncio.wait_for(slow_hook_done.wait(), 10)
        for _ in range(250):
            if module.config == CompilerSettings(max_depth=64):
                break
            await asyncio.sleep(0.02)
        assert module.config == CompilerSettings(max_depth=64)
        assert module.config_version == 1
        assert (await api_.ok("get", {"module": "compiler"}))["version"] == 1


async def test_the_system_file_named_by_corral_config_seeds_the_config(
    settings: ServiceSettings, nc: Client, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system_file = tmp_path / "corral.toml"
    system_file.write_text(
        '[modules.compiler]\nkind = "external"\n\n[modules.compiler.config]\nmax_depth = 7\n'
    )
    monkeypatch.setenv("CORRAL_CONFIG", str(system_file))
    async with OrchestratorService(settings):
        view = await Api(nc, prefix).ok("history", {"module": "compiler"})
    assert [(v["version"], v["values"], v["source"]) for v in view] == [(1, {"max_depth": 7}, "corral.toml")]
