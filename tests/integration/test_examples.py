"""The example modules working together, spoken to the way the NATS CLI speaks.

The orchestrator and the interpreter, compiler and organism modules run in-process on the
session's nats-server under this test's prefix; every request is raw JSON on
`<prefix>.send.<module>`. The organism gets a fresh in-memory rule set per test.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from nats.aio.client import Client

from corral.orchestrator.service import OrchestratorService
from corral.runtime import ServiceSettings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "modules"


def load_example(folder: str) -> ModuleType:
    """`examples/modules/<folder>/__main__.py`, imported as `corral_example_<folder>`.

    Its folder goes on sys.path for its sibling imports (`from algol import ...`), and the module
    sits in sys.modules because msgspec resolves the postponed annotations of its Structs there.
    """
    name = f"corral_example_{folder}"
    if name in sys.modules:
        return sys.modules[name]
    directory = EXAMPLES / folder
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    spec = importlib.util.spec_from_file_location(name, directory / "__main__.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


interpreter = load_example("interpreter")
compiler = load_example("compiler")
organism = load_example("organism")

SUM_PROGRAM = """
BEGIN
    COMMENT the sum of 1 .. n;
    total := 0;
    FOR i := 1 UNTIL n DO total := total + i
END
"""


@pytest.fixture
async def system(settings: ServiceSettings) -> AsyncIterator[str]:
    """Orchestrator, interpreter, compiler and a fresh organism; yields the prefix."""
    rules_module = organism.build_module(organism.InMemoryRuleStore(organism.seed_rules()))
    services = [
        OrchestratorService(settings, call_timeout=5.0),
        interpreter.module.service(settings),
        compiler.module.service(settings),
        rules_module.service(settings),
    ]
    async with services[0], services[1], services[2], services[3]:
        for service in services:
            await service.nc.flush()  # every subscription is known to the server before we send
        yield settings.prefix


async def send(nc: Client, prefix: str, module: str, type_: str, payload: Any) -> dict[str, Any]:
    """`nats req <prefix>.send.<module> '{"type": ..., "payload": ...}'`; the decoded reply."""
    body = json.dumps({"type": type_, "payload": payload}).encode()
    msg = await nc.request(f"{prefix}.send.{module}", body, timeout=5)
    reply: dict[str, Any] = json.loads(msg.data)
    assert set(reply) == {"type", "payload", "success", "timestamp"}, reply
    return reply


async def ok(nc: Client, prefix: str, module: str, type_: str, payload: Any) -> Any:
    reply = await send(nc, prefix, module, type_, payload)
    assert reply["success"] is True, reply
    assert reply["type"] == f"{type_}:success"
    return reply["payload"]


async def failed(nc: Client, prefix: str, module: str, type_: str, payload: Any) -> dict[str, Any]:
    reply = await send(nc, prefix, module, type_, payload)
    assert reply["success"] is False, reply
    assert reply["type"] == f"{type_}:error"
    error: dict[str, Any] = reply["payload"]
    return error


# --- compiler and interpreter ----------------------------------------------------------------------


async def test_compile_then_evaluate_with_a_context(system: str, nc: Client) -> None:
    compiled = await ok(
        nc, system, "compiler", "compile", {"source": "IF x > 10 THEN y := 5", "language": "algol"}
    )
    assert compiled == {
        "lisp": '(if (> x 10) (define y 5))\n(append (if (defined? y) (list (list "y" y))))',
        "variables": ["y"],
    }
    for x, expected in [(11, [["y", 5]]), (3, [])]:
        result = await ok(nc, system, "interpreter", "eval", {"code": compiled["lisp"], "context": {"x": x}})
        assert result == expected


async def test_a_loop_compiles_to_lisp_that_the_interpreter_runs(system: str, nc: Client) -> None:
    compiled = await ok(nc, system, "compiler", "compile", {"source": SUM_PROGRAM})  # language defaults
    assert compiled["variables"] == ["total", "i"]
    result = await ok(nc, system, "interpreter", "eval", {"code": compiled["lisp"], "context": {"n": 100}})
    assert dict(result) == {"total": 5050, "i": 101}


async def test_a_syntax_error_is_validation_with_line_and_column(system: str, nc: Client) -> None:
    reply = await send(
        nc, system, "compiler", "compile", {"source": "IF x > 10\n  y := 5", "language": "algol"}
    )
    assert reply["type"] == "compile:error"
    assert reply["success"] is False
    assert reply["payload"] == {
        "code": "VALIDATION",
        "errors": ["syntax error at line 2, column 3: expected THEN, found 'y'"],
    }


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"source": "x := 1", "language": "fortran"},
         "unsupported language 'fortran'; supported languages: algol"),
        ({"language": "algol"}, "invalid request body: Object missing required field `source`"),
        ({"source": 1}, "invalid request body: Expected `str`, got `int` - at `$.source`"),
        ({"source": "x := 1", "lang": "algol"}, "invalid request body: Object contains unknown field `lang`"),
    ],
)  # fmt: skip
async def test_a_bad_compile_request_is_validation(
    system: str, nc: Client, payload: dict[str, Any], message: str
) -> None:
    assert await failed(nc, system, "compiler", "compile", payload) == {
        "code": "VALIDATION",
        "errors": [message],
    }


async def test_a_runaway_compiled_loop_is_stopped_by_the_interpreter(system: str, nc: Client) -> None:
    compiled = await ok(nc, system, "compiler", "compile", {"source": "WHILE TRUE DO x := 1"})
    error = await failed(nc, system, "interpreter", "eval", {"code": compiled["lisp"], "max_steps": 1000})
    assert error["code"] == "VALIDATION"
    assert error["errors"][0].startswith("lisp: evaluation exceeded 1000 steps (infinite loop?)")


# --- organism --------------------------------------------------------------------------------------


async def test_rules_and_get(system: str, nc: Client) -> None:
    listed = await ok(nc, system, "organism", "rules", {})
    assert [rule["id"] for rule in listed] == ["r1", "r2", "r3", "r4"]
    assert await ok(nc, system, "organism", "get", {"ruleId": "r1"}) == {
        "id": "r1",
        "condition": "(< energy threshold)",
        "sensor": "energy",
        "comparator": "<",
        "action": "eat",
        "parameters": {"threshold": 30.0, "intensity": 0.8},
        "generation": 0,
        "parent": None,
    }


async def test_a_seeded_mutation_is_the_pure_one_and_is_kept(system: str, nc: Client) -> None:
    reply = await ok(
        nc, system, "organism", "mutate", {"ruleId": "r1", "mutationType": "parameter", "seed": 7}
    )
    seed_rule = organism.seed_rules()[0]
    expected = organism.mutate(seed_rule, "parameter", random.Random(7), {"r1", "r2", "r3", "r4"})
    assert reply["mutationType"] == "parameter"
    assert reply["ruleId"] == "r1"
    assert reply["change"] == expected.change
    assert reply["rule"]["parameters"] == expected.rule.parameters
    assert reply["rule"]["generation"] == 1
    assert await ok(nc, system, "organism", "get", {"ruleId": "r1"}) == reply["rule"]


async def test_duplicate_and_delete(system: str, nc: Client) -> None:
    copy = await ok(nc, system, "organism", "mutate", {"ruleId": "r2", "mutationType": "duplicate"})
    assert copy["ruleId"] == "r2"
    assert copy["change"] == "duplicated r2 as r2.1"
    assert (copy["rule"]["id"], copy["rule"]["parent"], copy["rule"]["generation"]) == ("r2.1", "r2", 1)

    gone = await ok(nc, system, "organism", "mutate", {"ruleId": "r2", "mutationType": "delete"})
    assert gone == {"mutationType": "delete", "ruleId": "r2", "rule": None, "change": "deleted r2"}
    listed = await ok(nc, system, "organism", "rules", {})
    assert [rule["id"] for rule in listed] == ["r1", "r3", "r4", "r2.1"]
    error = await failed(nc, system, "organism", "get", {"ruleId": "r2"})
    assert error == {"code": "NOT_FOUND", "errors": ["no rule 'r2'; known rules: r1, r3, r4, r2.1"]}


@pytest.mark.parametrize("type_", ["mutate", "get"])
async def test_an_unknown_rule_is_not_found_and_lists_the_known_ones(
    system: str, nc: Client, type_: str
) -> None:
    payload = {"ruleId": "r9", "mutationType": "structure"} if type_ == "mutate" else {"ruleId": "r9"}
    assert await failed(nc, system, "organism", type_, payload) == {
        "code": "NOT_FOUND",
        "errors": ["no rule 'r9'; known rules: r1, r2, r3, r4"],
    }


async def test_a_bad_mutation_type_names_the_allowed_ones(system: str, nc: Client) -> None:
    error = await failed(nc, system, "organism", "mutate", {"ruleId": "r1", "mutationType": "grow"})
    assert error == {
        "code": "VALIDATION",
        "errors": [
            "invalid request body: mutationType must be one of "
            "'parameter', 'structure', 'delete', 'duplicate'; got 'grow'"
        ],
    }


async def test_a_rules_condition_runs_in_the_interpreter(system: str, nc: Client) -> None:
    rule = await ok(nc, system, "organism", "get", {"ruleId": "r1"})
    for energy, fires in [(10, True), (50, False)]:
        context = {"energy": energy, **rule["parameters"]}
        assert (
            await ok(nc, system, "interpreter", "eval", {"code": rule["condition"], "context": context})
            is fires
        )
