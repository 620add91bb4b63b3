"""Bad input, sent the way the NATS CLI sends it: raw requests with hand-written bodies.

Every bad request must get a Response with `success: false`, a `<type>:error` type and an
ErrorPayload whose `code` and `errors` name the problem, and the system must keep serving:
after each bad request a good one is sent and must work.

Services run in-process (orchestrator, the example interpreter and a test module) on the
session's nats-server, under this test's own prefix.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import nats.errors
import pytest
from nats.aio.client import Client

from corral.orchestrator.service import OrchestratorService
from corral.runtime import ServiceSettings
from corral.sdk import Module

REPO = Path(__file__).resolve().parents[2]
INTERPRETER_DIR = REPO / "examples" / "modules" / "interpreter"
MSGPACK_HEADERS = {"Content-Type": "application/msgpack"}
MAX_REQUEST_BYTES = 1024 * 1024  # ServiceSettings' default (CORRAL_MAX_REQUEST_BYTES)


def load_interpreter() -> ModuleType:
    """The example interpreter's `__main__.py`, imported under a name of its own.

    It must sit in sys.modules: msgspec resolves the (postponed) annotations of EvalRequest
    through the module it was defined in.
    """
    name = "corral_example_interpreter"
    if name in sys.modules:
        return sys.modules[name]
    if str(INTERPRETER_DIR) not in sys.path:
        sys.path.insert(0, str(INTERPRETER_DIR))  # for its `from lisp import ...`
    spec = importlib.util.spec_from_file_location(name, INTERPRETER_DIR / "__main__.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


interpreter = load_interpreter()


class Square(msgspec.Struct, forbid_unknown_fields=True):
    n: int


class Nap(msgspec.Struct):
    seconds: float


def make_testmod() -> Module:
    """A module with a well-behaved handler, one that raises and one that takes its time."""
    module = Module("testmod", version="2.0.0")

    @module.handler("square")
    async def square(req: Square) -> int:
        return req.n * req.n

    @module.handler("boom")
    async def boom(payload: Any) -> None:
        raise RuntimeError(f"boom: the handler failed on {payload!r}")

    @module.handler("slow")
    async def slow(req: Nap) -> float:
        await asyncio.sleep(req.seconds)
        return req.seconds

    return module


@pytest.fixture
async def system(settings: ServiceSettings) -> AsyncIterator[str]:
    """Orchestrator, interpreter and testmod under the test's prefix; yields the prefix."""
    orchestrator = OrchestratorService(settings, call_timeout=5.0)
    interp = interpreter.module.service(settings)
    testmod = make_testmod().service(settings)
    async with orchestrator, interp, testmod:
        for service in (orchestrator, interp, testmod):
            await service.nc.flush()  # every subscription is known to the server before we send
        yield settings.prefix


async def request(
    nc: Client,
    subject: str,
    body: bytes | dict[str, Any],
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Send like `nats req`; return the decoded JSON reply and its headers."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    msg = await nc.request(subject, data, timeout=timeout, headers=headers)
    reply: dict[str, Any] = json.loads(msg.data)
    return reply, dict(msg.headers or {})


def assert_error(reply: dict[str, Any], type_: str, code: str) -> list[str]:
    """Check the Response shape of a failure; return its error messages."""
    assert set(reply) == {"type", "payload", "success", "timestamp"}, reply
    assert reply["success"] is False, reply
    assert reply["type"] == f"{type_}:error", reply
    assert reply["type"].endswith(":error")
    assert isinstance(reply["timestamp"], float)
    assert reply["payload"]["code"] == code, reply
    errors: list[str] = reply["payload"]["errors"]
    assert errors, reply
    assert all(isinstance(e, str) and e for e in errors), reply
    return errors


async def assert_serving(nc: Client, prefix: str) -> None:
    """A good request still works: the system survived whatever came before."""
    reply, _ = await request(
        nc, f"{prefix}.send.interpreter", {"type": "eval", "payload": {"code": "(* 6 7)"}}
    )
    assert reply["success"] is True, reply
    assert reply["type"] == "eval:success"
    assert reply["payload"] == 42


# --- the Envelope ----------------------------------------------------------------------------------

# (body, the whole error message or, where msgspec words it, (our prefix, msgspec's part with the path))
ENVELOPE_CASES = [
    pytest.param(
        b'{"type": "eval", "payload": ', ("malformed envelope: not valid JSON: ", ""), id="malformed-json"
    ),
    pytest.param(b"not json at all", ("malformed envelope: not valid JSON: ", ""), id="not-json"),
    pytest.param(b"", ("malformed envelope: not valid JSON: ", ""), id="empty-body"),
    pytest.param(b"[1, 2]", ("invalid envelope: ", "Expected `object`, got `array`"), id="array"),
    pytest.param(b'"eval"', ("invalid envelope: ", "Expected `object`, got `str`"), id="string"),
    pytest.param(
        b'{"payload": {"code": "1"}}',
        ("invalid envelope: ", "missing required field `type`"),
        id="missing-type",
    ),
    pytest.param(
        b'{"type": 42}', ("invalid envelope: ", "Expected `str`, got `int` - at `$.type`"), id="type-int"
    ),
    pytest.param(
        b'{"type": null}', ("invalid envelope: ", "Expected `str`, got `null` - at `$.type`"), id="type-null"
    ),
    pytest.param(
        b'{"type": ""}',
        ("invalid envelope: ", "Expected `str` of length >= 1 - at `$.type`"),
        id="type-empty",
    ),
    pytest.param(b'{"type": "ev al"}', ("invalid envelope: ", "- at `$.type`"), id="type-with-space"),
    pytest.param(b'{"type": "a.b"}', ("invalid envelope: ", "- at `$.type`"), id="type-with-dot"),
    pytest.param(
        b'{"type": "eval", "priority": "urgent"}',
        "invalid envelope: unknown priority 'urgent': use 0-4 or one of "
        "critical, high, normal, low, background - at `$.priority`",
        id="priority-name",
    ),
    pytest.param(
        b'{"type": "eval", "priority": 9}',
        "invalid envelope: priority 9 is out of range: use 0 (critical) to 4 (background) - at `$.priority`",
        id="priority-range",
    ),
    pytest.param(
        b'{"type": "eval", "priority": -1}',
        "invalid envelope: priority -1 is out of range: use 0 (critical) to 4 (background) - at `$.priority`",
        id="priority-negative",
    ),
    pytest.param(
        b'{"type": "eval", "priority": true}',
        ("invalid envelope: ", "Expected `int | str`, got `bool` - at `$.priority`"),
        id="priority-bool",
    ),
    pytest.param(
        b'{"type": "eval", "timeout": -1}',
        ("invalid envelope: ", "Expected `float` > 0.0 - at `$.timeout`"),
        id="timeout-negative",
    ),
    pytest.param(
        b'{"type": "eval", "timeout": 0}',
        ("invalid envelope: ", "Expected `float` > 0.0 - at `$.timeout`"),
        id="timeout-zero",
    ),
    pytest.param(
        b'{"type": "eval", "timeout": 3601}',
        ("invalid envelope: ", "Expected `float` <= 3600.0 - at `$.timeout`"),
        id="timeout-too-long",
    ),
    pytest.param(
        b'{"type": "eval", "timeout": "soon"}',
        ("invalid envelope: ", "Expected `float | null`, got `str` - at `$.timeout`"),
        id="timeout-string",
    ),
    pytest.param(
        b'{"type": "eval", "timestamp": "now"}',
        ("invalid envelope: ", "Expected `float | null`, got `str` - at `$.timestamp`"),
        id="timestamp-string",
    ),
]


@pytest.mark.parametrize(("body", "expected"), ENVELOPE_CASES)
async def test_a_bad_envelope_is_a_validation_error(
    system: str, nc: Client, body: bytes, expected: str | tuple[str, str]
) -> None:
    reply, headers = await request(nc, f"{system}.send.interpreter", body)
    # The envelope could not be read, so the reply cannot name a message type: it is `send`.
    [error] = assert_error(reply, "send", "VALIDATION")
    if isinstance(expected, str):
        assert error == expected
    else:
        prefix, detail = expected
        assert error.startswith(prefix), error
        assert detail in error, error
    assert headers["Corral-Error-Code"] == "VALIDATION"
    assert headers["Nats-Service-Error-Code"] == "400"
    assert headers["Nats-Service-Error"] == error
    await assert_serving(nc, system)


async def test_priority_names_and_digits_are_accepted(system: str, nc: Client) -> None:
    for priority in ("high", "LOW", "background", "0", 4, 2):
        reply, _ = await request(
            nc,
            f"{system}.send.interpreter",
            {"type": "eval", "payload": {"code": "(+ 1 1)"}, "priority": priority},
        )
        assert reply["success"] is True, (priority, reply)
        assert reply["payload"] == 2


# --- subjects --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tail", ["a.b", "interpreter.eval", "a.b.c.d"])
async def test_extra_subject_tokens_are_a_validation_error(system: str, nc: Client, tail: str) -> None:
    subject = f"{system}.send.{tail}"
    reply, _ = await request(nc, subject, {"type": "eval", "payload": {"code": "1"}})
    assert assert_error(reply, "send", "VALIDATION") == [
        f"subject {subject!r} is not {system}.send.<module>: name exactly one module"
    ]
    await assert_serving(nc, system)


@pytest.mark.parametrize("tail", ["", ".interpreter", "a..b"])
async def test_an_empty_subject_token_never_reaches_the_orchestrator(
    system: str, nc: Client, tail: str
) -> None:
    # nats-py publishes `<prefix>.send.` (and `..`) as it is; nats-server matches no subscription
    # for a subject with an empty token - not even `<prefix>.send.>` - so the request comes back
    # at once as "no responders" (status 503), never as a corral Response. The orchestrator's own
    # "name exactly one module" check for an empty module name is therefore unreachable over NATS.
    with pytest.raises(nats.errors.NoRespondersError):
        await nc.request(f"{system}.send.{tail}", b'{"type": "eval"}', timeout=2)
    await assert_serving(nc, system)


@pytest.mark.parametrize("subject_tail", ["send. ", "send.inter preter", "send.a\tb"])
async def test_whitespace_in_a_subject_is_refused_by_the_client(
    system: str, nc: Client, subject_tail: str
) -> None:
    # nats-py refuses to publish a subject with whitespace before anything is sent.
    with pytest.raises(nats.errors.BadSubjectError, match="invalid subject"):
        await nc.request(f"{system}.{subject_tail}", b'{"type": "eval"}', timeout=2)
    await assert_serving(nc, system)


# --- modules and message types ---------------------------------------------------------------------


async def test_an_unknown_module_is_not_found_and_names_the_running_ones(system: str, nc: Client) -> None:
    reply, headers = await request(nc, f"{system}.send.nope", {"type": "eval", "payload": {"code": "1"}})
    assert assert_error(reply, "eval", "NOT_FOUND") == [
        "no module named 'nope' is running; running modules: interpreter, testmod"
    ]
    assert headers["Nats-Service-Error-Code"] == "404"
    await assert_serving(nc, system)


async def test_an_unknown_module_with_none_running(settings: ServiceSettings, nc: Client) -> None:
    async with OrchestratorService(settings) as orchestrator:
        await orchestrator.nc.flush()
        reply, _ = await request(nc, f"{settings.prefix}.send.nope", {"type": "eval"})
        assert assert_error(reply, "eval", "NOT_FOUND") == [
            "no module named 'nope' is running, and no modules are running at all"
        ]


@pytest.mark.parametrize(("module", "handled"), [("interpreter", "eval"), ("testmod", "boom, slow, square")])
async def test_an_unknown_message_type_is_not_found_and_lists_the_types(
    system: str, nc: Client, module: str, handled: str
) -> None:
    reply, _ = await request(nc, f"{system}.send.{module}", {"type": "compile", "payload": {}})
    assert assert_error(reply, "compile", "NOT_FOUND") == [
        f"module {module!r} has no message type 'compile'; it handles: {handled}"
    ]
    await assert_serving(nc, system)


# --- payloads --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "type_", "payload", "expected"),
    [
        ("interpreter", "eval", {"code": 1}, "invalid request body: Expected `str`, got `int` - at `$.code`"),
        ("interpreter", "eval", {}, "invalid request body: Object missing required field `code`"),
        ("interpreter", "eval", {"cod": "1"}, "invalid request body: Object contains unknown field `cod`"),
        ("interpreter", "eval", [1], "invalid request body: Expected `object`, got `array`"),
        (
            "interpreter", "eval", {"code": "1", "max_steps": 0},
            "invalid request body: Expected `int` >= 1 - at `$.max_steps`",
        ),
        ("testmod", "square", {"n": "7"}, "invalid request body: Expected `int`, got `str` - at `$.n`"),
        ("testmod", "square", {"n": 1.5}, "invalid request body: Expected `int`, got `float` - at `$.n`"),
    ],
)  # fmt: skip
async def test_a_payload_of_the_wrong_shape_is_a_validation_error_with_the_path(
    system: str, nc: Client, module: str, type_: str, payload: object, expected: str
) -> None:
    reply, headers = await request(nc, f"{system}.send.{module}", {"type": type_, "payload": payload})
    assert assert_error(reply, type_, "VALIDATION") == [expected]
    assert headers["Corral-Error-Code"] == "VALIDATION"
    await assert_serving(nc, system)
    ok, _ = await request(nc, f"{system}.send.testmod", {"type": "square", "payload": {"n": 12}})
    assert ok["payload"] == 144


async def test_a_lisp_error_is_the_callers_validation_error(system: str, nc: Client) -> None:
    reply, _ = await request(nc, f"{system}.send.interpreter", {"type": "eval", "payload": {"code": "(+ 1"}})
    assert assert_error(reply, "eval", "VALIDATION") == ["lisp: unclosed '(' opened at line 1, column 1"]
    await assert_serving(nc, system)


async def test_a_1mb_request_is_refused_by_the_orchestrator_with_the_limit(system: str, nc: Client) -> None:
    body = json.dumps({"type": "eval", "payload": {"code": "x" * MAX_REQUEST_BYTES}}).encode()
    assert len(body) > MAX_REQUEST_BYTES  # and under the session server's 8 MiB max_payload
    reply, _ = await request(nc, f"{system}.send.interpreter", body)
    assert assert_error(reply, "send", "VALIDATION") == [
        f"request body is {len(body)} bytes, over the limit of {MAX_REQUEST_BYTES} bytes "
        f"for {system}.send.interpreter (CORRAL_MAX_REQUEST_BYTES)"
    ]
    await assert_serving(nc, system)


async def test_a_1mb_request_is_refused_by_the_module_itself(system: str, nc: Client) -> None:
    body = json.dumps({"code": "x" * MAX_REQUEST_BYTES}).encode()
    reply, _ = await request(nc, f"{system}.mod.interpreter.eval", body)
    assert assert_error(reply, "eval", "VALIDATION") == [
        f"request body is {len(body)} bytes, over the limit of {MAX_REQUEST_BYTES} bytes "
        f"for {system}.mod.interpreter.eval (CORRAL_MAX_REQUEST_BYTES)"
    ]
    await assert_serving(nc, system)


async def test_a_request_at_the_limit_is_accepted(system: str, nc: Client) -> None:
    # Exactly max_request_bytes passes the orchestrator's check; the module then judges the payload.
    head = b'{"type": "eval", "payload": {"code": "'
    tail = b'"}}'
    body = head + b"x" * (MAX_REQUEST_BYTES - len(head) - len(tail)) + tail
    assert len(body) == MAX_REQUEST_BYTES
    reply, _ = await request(nc, f"{system}.send.interpreter", body)
    # 1 MiB of code is over the interpreter's own 64 KiB limit on `code`: its VALIDATION, not ours.
    assert assert_error(reply, "eval", "VALIDATION") == [
        "invalid request body: Expected `str` of length <= 65536 - at `$.code`"
    ]


# --- handlers that fail or take too long ----------------------------------------------------------


async def test_a_handler_that_raises_is_a_module_error_and_the_module_keeps_serving(
    system: str, nc: Client
) -> None:
    for attempt in range(3):
        reply, headers = await request(
            nc, f"{system}.send.testmod", {"type": "boom", "payload": {"try": attempt}}
        )
        assert assert_error(reply, "boom", "MODULE_ERROR") == [
            f"RuntimeError: boom: the handler failed on {{'try': {attempt}}}"
        ]
        assert headers["Nats-Service-Error-Code"] == "500"
        ok, _ = await request(nc, f"{system}.send.testmod", {"type": "square", "payload": {"n": attempt}})
        assert ok["success"] is True
        assert ok["payload"] == attempt * attempt
    await assert_serving(nc, system)


@pytest.mark.parametrize(
    ("envelope_timeout", "header", "expected"),
    [
        pytest.param(0.3, None, "0.3", id="envelope"),
        pytest.param(None, "0.3", "0.3", id="header"),
        pytest.param(0.3, "2", "0.3", id="envelope-smaller"),
        pytest.param(2.0, "0.25", "0.25", id="header-smaller"),
    ],
)
async def test_a_module_that_does_not_answer_in_time_is_a_timeout(
    system: str, nc: Client, envelope_timeout: float | None, header: str | None, expected: str
) -> None:
    envelope: dict[str, Any] = {"type": "slow", "payload": {"seconds": 2.0}}
    if envelope_timeout is not None:
        envelope["timeout"] = envelope_timeout
    headers = {"Corral-Timeout": header} if header is not None else None
    started = time.monotonic()
    reply, response_headers = await request(nc, f"{system}.send.testmod", envelope, headers=headers)
    elapsed = time.monotonic() - started
    assert assert_error(reply, "slow", "TIMEOUT") == [
        f"module 'testmod' did not answer 'slow' within {expected}s"
    ]
    assert response_headers["Nats-Service-Error-Code"] == "504"
    # The orchestrator answered at the deadline, long before the module would have (2 s).
    assert float(expected) <= elapsed < 1.5
    # The module is still busy with the slow call, and serves others meanwhile.
    ok, _ = await request(nc, f"{system}.send.testmod", {"type": "square", "payload": {"n": 3}})
    assert ok["payload"] == 9
    await assert_serving(nc, system)


async def test_a_slow_call_within_its_timeout_succeeds(system: str, nc: Client) -> None:
    reply, _ = await request(
        nc, f"{system}.send.testmod", {"type": "slow", "payload": {"seconds": 0.1}, "timeout": 2},
        headers={"Corral-Timeout": "3"},
    )  # fmt: skip
    assert reply["success"] is True
    assert reply["payload"] == 0.1


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("soon", "header Corral-Timeout must be a number of seconds, got 'soon'"),
        ("", "header Corral-Timeout must be a number of seconds, got ''"),
        ("1s", "header Corral-Timeout must be a number of seconds, got '1s'"),
        ("0", "header Corral-Timeout must be a positive number of seconds, got '0'"),
        ("-2.5", "header Corral-Timeout must be a positive number of seconds, got '-2.5'"),
    ],
)
async def test_an_invalid_timeout_header_is_a_validation_error(
    system: str, nc: Client, header: str, expected: str
) -> None:
    reply, _ = await request(
        nc,
        f"{system}.send.interpreter",
        {"type": "eval", "payload": {"code": "1"}},
        headers={"Corral-Timeout": header},
    )
    assert assert_error(reply, "eval", "VALIDATION") == [expected]
    await assert_serving(nc, system)


async def test_a_nan_timeout_header_is_a_validation_error(system: str, nc: Client) -> None:
    reply, _ = await request(
        nc,
        f"{system}.send.interpreter",
        {"type": "eval", "payload": {"code": "1"}},
        headers={"Corral-Timeout": "nan"},
    )
    assert reply["success"] is False, reply
    assert reply["payload"]["code"] == "VALIDATION"


# --- msgpack ---------------------------------------------------------------------------------------


async def msgpack_request(nc: Client, subject: str, body: Any) -> tuple[dict[str, Any], dict[str, str]]:
    data = body if isinstance(body, bytes) else msgspec.msgpack.encode(body)
    msg = await nc.request(subject, data, timeout=5, headers=MSGPACK_HEADERS)
    reply: dict[str, Any] = msgspec.msgpack.decode(msg.data)
    return reply, dict(msg.headers or {})


async def test_msgpack_in_msgpack_out_on_success(system: str, nc: Client) -> None:
    reply, headers = await msgpack_request(
        nc, f"{system}.send.interpreter", {"type": "eval", "payload": {"code": '(list 1 2.5 "x")'}}
    )
    assert reply["type"] == "eval:success"
    assert reply["success"] is True
    assert reply["payload"] == [1, 2.5, "x"]
    assert isinstance(reply["timestamp"], float)
    assert headers["Content-Type"] == "application/msgpack"


async def test_msgpack_validation_error_is_msgpack(system: str, nc: Client) -> None:
    reply, headers = await msgpack_request(
        nc, f"{system}.send.interpreter", {"type": "eval", "payload": {"code": 7}}
    )
    assert assert_error(reply, "eval", "VALIDATION") == [
        "invalid request body: Expected `str`, got `int` - at `$.code`"
    ]
    assert headers["Content-Type"] == "application/msgpack"
    assert headers["Corral-Error-Code"] == "VALIDATION"
    await assert_serving(nc, system)


async def test_malformed_msgpack_envelope_is_a_msgpack_validation_error(system: str, nc: Client) -> None:
    # 0xc1 is the one byte msgpack never uses.
    reply, headers = await msgpack_request(nc, f"{system}.send.interpreter", b"\xc1")
    [error] = assert_error(reply, "send", "VALIDATION")
    assert error.startswith("malformed envelope: not valid MSGPACK: "), error
    assert headers["Content-Type"] == "application/msgpack"
    reply, _ = await msgpack_request(nc, f"{system}.send.interpreter", {"type": 1})
    assert assert_error(reply, "send", "VALIDATION") == [
        "invalid envelope: Expected `str`, got `int` - at `$.type`"
    ]
    await assert_serving(nc, system)


async def test_msgpack_json_body_is_malformed_msgpack(system: str, nc: Client) -> None:
    # A JSON body labelled msgpack is read as msgpack: `{` is the positive fixint 123, not an object.
    reply, _ = await msgpack_request(nc, f"{system}.send.interpreter", b'{"type": "eval"}')
    assert assert_error(reply, "send", "VALIDATION") == ["invalid envelope: Expected `object`, got `int`"]
    await assert_serving(nc, system)


async def test_msgpack_not_found_is_msgpack(system: str, nc: Client) -> None:
    reply, _ = await msgpack_request(nc, f"{system}.send.testmod", {"type": "nothing"})
    assert assert_error(reply, "nothing", "NOT_FOUND") == [
        "module 'testmod' has no message type 'nothing'; it handles: boom, slow, square"
    ]


# --- direct subjects -------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"{", b"{'n': 1}", b"\xff\xfe"])
async def test_malformed_json_on_a_module_subject_is_a_validation_error(
    system: str, nc: Client, body: bytes
) -> None:
    reply, headers = await request(nc, f"{system}.mod.testmod.square", body)
    [error] = assert_error(reply, "square", "VALIDATION")
    assert error.startswith("malformed request body: not valid JSON: "), error
    assert headers["Nats-Service-Error-Code"] == "400"
    ok, _ = await request(nc, f"{system}.mod.testmod.square", {"n": 5})
    assert ok == {"type": "square:success", "payload": 25, "success": True, "timestamp": ok["timestamp"]}


async def test_a_module_subject_with_a_wrong_shape_names_the_path(system: str, nc: Client) -> None:
    reply, _ = await request(nc, f"{system}.mod.interpreter.eval", {"code": ["(+ 1 2)"]})
    assert assert_error(reply, "eval", "VALIDATION") == [
        "invalid request body: Expected `str`, got `array` - at `$.code`"
    ]
    ok, _ = await request(nc, f"{system}.mod.interpreter.eval", {"code": "(+ 1 2)"})
    assert ok["payload"] == 3


@pytest.mark.parametrize("verb", ["status", "modules"])
@pytest.mark.parametrize("body", [b"", b"{}"])
async def test_typed_service_endpoints_accept_an_empty_body(
    system: str, settings: ServiceSettings, nc: Client, verb: str, body: bytes
) -> None:
    reply, _ = await request(nc, f"{system}.orchestrator.{verb}", body)
    assert reply["success"] is True, reply
    assert reply["type"] == f"{verb}:success"
    if verb == "status":
        assert reply["payload"]["service"] == "orchestrator"
        assert reply["payload"]["instance"] == settings.instance
    else:
        assert {m["name"] for m in reply["payload"]} == {"interpreter", "testmod"}
