"""The orchestrator's lifecycle against a real nats-server and real module processes (the probe
module in tests/fixtures/modules): dependency-ordered start and stop, rollback, per-module verbs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

from corral.config import ModuleConfig, load_config
from corral.errors import ConfigError
from corral.runtime import ServiceSettings
from corral.sdk import Module
from tests.lifecycle_helpers import EventLog, call, journal, orchestrator, probe, system

pytestmark = pytest.mark.slow


def twenty_modules(journal_file: Path) -> dict[str, object]:
    """A 20-module graph: a base, two diamonds, fan-in, an optional module that cannot start
    (`flaky`) with two modules behind it, and an optional module that starts fine."""
    env = {"PROBE_JOURNAL": str(journal_file)}
    graph: dict[str, list[str]] = {
        "base": [],
        "left": ["base"], "right": ["base"], "top": ["left", "right"],  # diamond 1
        "a1": ["top"], "a2": ["top"], "a3": ["a1", "a2"],  # diamond 2
        "b1": ["base"], "b2": ["b1"], "b3": ["b2", "a1"],
        "c1": [], "c2": ["c1", "base"], "c3": ["c2", "b3", "a3"],
        "flaky": ["c1"], "after_flaky": ["flaky"], "after_after": ["after_flaky", "c3"],
        "extra": ["c1"], "leaf1": ["c3"], "leaf2": ["c3", "extra"], "leaf3": ["leaf1", "leaf2"],
    }  # fmt: skip
    modules: dict[str, object] = {}
    for name, deps in graph.items():
        fields: dict[str, object] = {"env": env}
        if name == "flaky":
            fields = {"env": {**env, "PROBE_EXIT": "4"}, "required": False}
        elif name == "extra":
            fields["required"] = False
        elif name in ("left", "right"):
            # Each branch of the first diamond waits for the other's launch before it registers:
            # a start that waited for one to run before launching the other would never finish.
            sibling = "right" if name == "left" else "left"
            fields = {"env": {**env, "PROBE_AWAIT_LAUNCH": sibling}}
        modules[name] = probe(deps, **fields)
    return modules


async def test_a_20_module_graph_starts_in_dependency_order_and_stops_in_reverse(
    tmp_path: Path, settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    journal_file = tmp_path / "journal"
    modules = twenty_modules(journal_file)
    assert len(modules) == 20
    config = system(tmp_path, modules)  # type: ignore[arg-type]
    events = EventLog()
    await events.attach(nc, prefix)
    async with orchestrator(settings, config):
        reply = await call(nc, f"{prefix}.orchestrator.start_system", timeout=120)
        assert reply["success"], reply
        report = reply["payload"]
        assert report["system"] == "degraded", report
        assert set(report["skipped"]) == {"flaky", "after_flaky", "after_after"}
        assert "flaky exited with code 4 during startup" in report["skipped"]["flaky"]
        assert report["skipped"]["after_flaky"] == "not started: depends on flaky, which did not start"
        started = [r["module"] for r in report["started"]]
        assert set(started) == set(modules) - {"flaky", "after_flaky", "after_after"}

        # Each module was launched only after all it depends on were running, and came up after them.
        running_at = {e["module"]: e["time"] for e in events.events if e["new"] == "running"}
        launched_at = {row[0]: float(row[3]) for row in journal(journal_file) if row[1] == "launch"}
        for name in started:
            for dep in modules[name].depends_on:  # type: ignore[attr-defined]
                assert running_at[dep] <= launched_at[name], (name, dep)
                assert started.index(dep) < started.index(name), (name, dep)
        assert "after_flaky" not in launched_at  # never launched
        assert events.of("flaky") == [("registered", "starting"), ("starting", "failed")]
        assert events.of("after_flaky") == [("registered", "stopped")]

        # The parallel start overlapped: both branches of the first diamond were launched
        # before either was running (each waits for the other's launch, so this is not a race).
        assert max(launched_at["left"], launched_at["right"]) < min(running_at["left"], running_at["right"])

        status = await call(nc, f"{prefix}.orchestrator.status")
        assert status["payload"]["system"] == "degraded"
        assert status["payload"]["module_states"]["top"] == "running"

        stop = await call(nc, f"{prefix}.orchestrator.stop_system", {"timeout": 5}, timeout=120)
        assert stop["success"], stop
        stopped = [r["module"] for r in stop["payload"]["stopped"] if r["module"] in started]
        assert stopped == list(reversed(started)), (stopped, started)  # exactly the reverse
        stopped_at = {e["module"]: e["time"] for e in events.events if e["new"] == "stopped"}
        for name in started:
            for dep in modules[name].depends_on:  # type: ignore[attr-defined]
                assert stopped_at[name] <= stopped_at[dep], (name, dep)


async def test_a_required_module_failing_rolls_back_in_reverse_order(
    tmp_path: Path, settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    journal_file = tmp_path / "journal"
    env = {"PROBE_JOURNAL": str(journal_file)}
    modules = {
        "first": probe(env=env),
        "second": probe(["first"], env=env),
        "broken": probe(["second"], env={**env, "PROBE_EXIT": "3"}),
        "never": probe(["broken"], env=env),
    }
    # One at a time, a pause between launches.
    config = system(tmp_path, modules, parallel_startup=False, module_start_delay=0.2)
    events = EventLog()
    await events.attach(nc, prefix)
    async with orchestrator(settings, config):
        reply = await call(nc, f"{prefix}.orchestrator.start_system", timeout=120)
        assert not reply["success"]
        assert reply["payload"]["code"] == "UNAVAILABLE"
        (error,) = reply["payload"]["errors"]
        assert "module broken exited with code 3 during startup" in error
        assert "broken: exiting with 3 as asked" in error  # the log tail says why
        assert "broken is required, so startup was aborted" in error
        assert error.endswith("stopped again, in reverse order: second, first")
        assert events.became("stopped") == ["second", "first"]
        assert events.state("never") is None  # never even started
        launches = [row[0] for row in journal(journal_file) if row[1] == "launch"]
        assert launches == ["first", "second"]  # one at a time: broken exits before it journals


async def test_module_verbs_respect_dependents(
    tmp_path: Path, settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    modules = {"db": probe(), "api": probe(["db"]), "web": probe(["api"])}
    config = system(tmp_path, modules)
    events = EventLog()
    await events.attach(nc, prefix)
    async with orchestrator(settings, config):
        assert (await call(nc, f"{prefix}.orchestrator.start_system"))["success"]
        refused = await call(nc, f"{prefix}.orchestrator.stop", {"module": "db"})
        assert refused["payload"] == {
            "code": "CONFLICT",
            "errors": [
                "db is needed by web, api; stop those first or pass cascade (`corral stop db --cascade`)"
            ],
        }
        cascade = await call(nc, f"{prefix}.orchestrator.stop", {"module": "api", "cascade": True})
        assert [r["module"] for r in cascade["payload"]] == ["web", "api"]
        assert events.state("db") == "running"
        blocked = await call(nc, f"{prefix}.orchestrator.start", {"module": "web"})
        assert blocked["payload"]["errors"] == [
            "cannot start web: it depends on api (stopped); start those first"
        ]
        assert (await call(nc, f"{prefix}.orchestrator.start", {"module": "api"}))["payload"][
            "state"
        ] == "running"
        before = (await call(nc, f"{prefix}.orchestrator.module", {"module": "db"}))["payload"]["record"]
        restarted = await call(nc, f"{prefix}.orchestrator.restart", {"module": "db"})
        assert restarted["payload"]["state"] == "running"
        assert restarted["payload"]["pids"] != [i["pid"] for i in before["instances"]]
        assert events.of("db")[-4:] == [
            ("running", "stopping"), ("stopping", "stopped"),
            ("stopped", "starting"), ("starting", "running"),
        ]  # fmt: skip
        ghost = await call(nc, f"{prefix}.orchestrator.restart", {"module": "ghost"})
        assert ghost["payload"]["code"] == "NOT_FOUND"
        assert "no module 'ghost' in the registry (modules: api, db, web)" in ghost["payload"]["errors"][0]


BAD_INPUT = [
    ("start_system", {"modules": ["db"]}, "Object contains unknown field `modules`"),
    ("start_system", b"[1", "invalid request body: Expected `object`, got `array`"),
    ("stop_system", {"timeout": -1}, "Expected `float` > 0.0 - at `$.timeout`"),
    ("start", {"module": 5}, "Expected `str`, got `int` - at `$.module`"),
    ("stop", {"module": "db", "cascade": "yes"}, "Expected `bool`, got `str` - at `$.cascade`"),
    ("restart", {}, "Object missing required field `module`"),
    ("module", {"module": "no spaces"}, "- at `$.module`"),
    ("recovery.history", {"module": "db", "limit": 0}, "Expected `int` >= 1 - at `$.limit`"),
    ("deregister", {"modul": "db"}, "Object contains unknown field `modul`"),
    ("register", {"module": "w"}, "register needs `instance` (an SDK instance) or `descriptor` - at `$`"),
    (
        "register",
        {"module": "w", "descriptor": {"command": ["x"], "restart": {"max_attempts": 0}}},
        "Expected `int` >= 1 - at `$.descriptor.restart.max_attempts`",
    ),
    (
        "register",
        {"module": "w", "descriptor": {"command": ["x"], "limits": {"open_files": 3}}},
        "Expected `int` >= 16 - at `$.descriptor.limits.open_files`",
    ),
    (
        "register",
        {"module": "w", "descriptor": {"kind": "process"}},
        "module 'w' is a process but has no command - at `$.modules.w.command` - at `$.descriptor`",
    ),
    (
        "register",
        {"module": "w", "descriptor": {"command": ["x"], "restart": {"strategy": "system_restart"}}},
        "the system_restart strategy is for modules marked critical = true",
    ),
    (
        "register",
        {"module": "w", "descriptor": {"command": ["x"], "depends_on": ["nope"]}},
        "module 'w' depends on unknown module 'nope' (modules: db, w) - at `$.descriptor`",
    ),
]


async def test_bad_input_to_every_lifecycle_endpoint_names_the_field(
    tmp_path: Path, settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    async with orchestrator(settings, system(tmp_path, {"db": probe()})):
        for verb, body, expected in BAD_INPUT:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            reply = await call(nc, f"{prefix}.orchestrator.{verb}", data)
            assert reply["success"] is False, (verb, body)
            assert reply["payload"]["code"] == "VALIDATION", (verb, reply)
            assert expected in reply["payload"]["errors"][0], (verb, reply["payload"]["errors"])


async def test_modules_registered_at_run_time_join_the_graph(
    tmp_path: Path, settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    async with orchestrator(settings, system(tmp_path, {"db": probe()})):
        register = f"{prefix}.orchestrator.register"
        added = await call(
            nc,
            register,
            {"module": "cache", "descriptor": {"command": probe().command, "depends_on": ["db"]}},
        )
        assert added["success"], added
        # `db` cannot come to depend on `cache` now: that is a cycle, refused and named.
        again = await call(
            nc, register, {"module": "db", "descriptor": {"command": ["x"], "depends_on": ["cache"]}}
        )
        assert again["payload"]["code"] == "CONFLICT"  # db exists already
        loop = await call(
            nc, register, {"module": "loop", "descriptor": {"command": ["x"], "depends_on": ["loop"]}}
        )
        assert loop["payload"]["errors"] == ["dependency cycle: loop -> loop - at `$.descriptor`"]
        started = await call(nc, f"{prefix}.orchestrator.start_system")
        assert [r["module"] for r in started["payload"]["started"]] == ["db", "cache"]
        refused = await call(nc, f"{prefix}.orchestrator.deregister", {"module": "db"})
        assert refused["payload"]["errors"] == ["db is a dependency of cache; deregister those first"]
        running = await call(nc, f"{prefix}.orchestrator.deregister", {"module": "cache"})
        assert running["payload"]["errors"] == ["cache is running; stop it first (`corral stop cache`)"]
        await call(nc, f"{prefix}.orchestrator.stop", {"module": "cache"})
        gone = await call(nc, f"{prefix}.orchestrator.deregister", {"module": "cache"})
        assert gone["success"], gone
        registry = await call(nc, f"{prefix}.orchestrator.registry")
        assert [r["name"] for r in registry["payload"]] == ["db"]


def test_a_cycle_in_the_system_file_is_refused_and_named(tmp_path: Path) -> None:
    path = tmp_path / "corral.toml"
    path.write_text(
        '[modules.a]\ncommand = ["x"]\ndepends_on = ["c"]\n'
        '[modules.b]\ncommand = ["x"]\ndepends_on = ["a"]\n'
        '[modules.c]\ncommand = ["x"]\ndepends_on = ["b"]\n'
    )
    with pytest.raises(ConfigError, match=r"dependency cycle: a -> c -> b -> a"):
        load_config(path)


async def test_an_external_module_is_gated_and_stopped_but_never_spawned(
    tmp_path: Path, settings: ServiceSettings, nc: Client, prefix: str
) -> None:
    external = msgspec.convert(
        {"kind": "external", "depends_on": ["base"], "startup_timeout": 20}, ModuleConfig
    )
    config = system(tmp_path, {"base": probe(), "ext": external})
    module = Module("ext", depends_on=["base"])

    @module.handler("hello")
    async def hello(_payload: object) -> str:
        return "hi"

    events = EventLog()
    await events.attach(nc, prefix)
    async with orchestrator(settings, config):
        # Started by someone else (a pod), before the system: it registers and waits.
        service = module.service(settings, wait_for_ready=True)
        await service.start()
        try:
            await asyncio.sleep(1.0)
            assert service.ready is False  # `base` is not running yet, so it is not told ready
            started = await call(nc, f"{prefix}.orchestrator.start_system")
            assert [r["module"] for r in started["payload"]["started"]] == ["base", "ext"]
            assert started["payload"]["started"][1]["pids"] == []  # not ours: no process launched
            assert service.ready is True
            assert (await call(nc, f"{prefix}.send.ext", {"type": "hello", "payload": {}}))["payload"] == "hi"
            stopped = await call(nc, f"{prefix}.orchestrator.stop", {"module": "ext"})
            assert stopped["payload"][0]["detail"] == "stopped by its stop verb"
            await asyncio.wait_for(service.wait_stopped(), 5)  # the stop verb reached it
            assert events.of("ext") == [
                ("registered", "starting"), ("starting", "running"),
                ("running", "stopping"), ("stopping", "stopped"),
            ]  # fmt: skip
        finally:
            await service.stop()
