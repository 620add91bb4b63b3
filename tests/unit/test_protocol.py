"""The wire protocol, subject names and error mapping: pure functions, no NATS."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from corral import errors
from corral.errors import error_from_payload
from corral.protocol import (
    JSON,
    MSGPACK,
    PRIORITY_NAMES,
    Codec,
    Envelope,
    ErrorCode,
    ErrorPayload,
    Heartbeat,
    Priority,
    Response,
    codec_for,
    describe_decode_error,
    error_response,
    parse_priority,
    success_response,
)
from corral.subjects import DEFAULT_PREFIX, Subjects, validate_token

CODECS = [pytest.param(JSON, id="json"), pytest.param(MSGPACK, id="msgpack")]


# --- Envelope --------------------------------------------------------------------------------------


def test_envelope_defaults() -> None:
    before = time.time()
    envelope = JSON.decode(b'{"type": "eval"}', Envelope)
    after = time.time()
    assert envelope.type == "eval"
    assert envelope.payload_bytes == b""
    assert envelope.id is None
    assert envelope.timeout is None
    assert envelope.priority is Priority.NORMAL
    assert envelope.timestamp is not None
    assert before <= envelope.timestamp <= after


def test_envelope_keeps_a_given_timestamp_and_fills_a_null_one() -> None:
    assert JSON.decode(b'{"type": "eval", "timestamp": 1700000000.5}', Envelope).timestamp == 1700000000.5
    assert JSON.decode(b'{"type": "eval", "timestamp": 12}', Envelope).timestamp == 12.0
    before = time.time()
    filled = JSON.decode(b'{"type": "eval", "timestamp": null}', Envelope).timestamp
    assert filled is not None
    assert filled >= before


def test_envelope_payload_stays_the_raw_bytes_sent() -> None:
    body = b'{"type": "eval", "payload": {"code" : "(+ 1 2)",  "context": {}} , "id": "r-1", "timeout": 2.5}'
    envelope = JSON.decode(body, Envelope)
    assert envelope.payload_bytes == b'{"code" : "(+ 1 2)",  "context": {}}'
    assert envelope.id == "r-1"
    assert envelope.timeout == 2.5


@pytest.mark.parametrize(
    ("priority", "expected"),
    [
        ('"critical"', Priority.CRITICAL),
        ('"HIGH"', Priority.HIGH),
        ('" Low "', Priority.LOW),
        ('"background"', Priority.BACKGROUND),
        ('"normal"', Priority.NORMAL),
        ('"0"', Priority.CRITICAL),
        ('"4"', Priority.BACKGROUND),
        ("1", Priority.HIGH),
        ("3", Priority.LOW),
    ],
)
def test_envelope_priority_names_and_digits(priority: str, expected: Priority) -> None:
    envelope = JSON.decode(f'{{"type": "eval", "priority": {priority}}}'.encode(), Envelope)
    assert envelope.priority is expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[]", "Expected `object`, got `array`"),
        (b"{}", "Object missing required field `type`"),
        (b'{"type": 1}', "Expected `str`, got `int` - at `$.type`"),
        (b'{"type": ""}', "Expected `str` of length >= 1 - at `$.type`"),
        (b'{"type": "' + b"x" * 129 + b'"}', "Expected `str` of length <= 128 - at `$.type`"),
        (b'{"type": "a.b"}', "Expected `str` matching regex '^[A-Za-z0-9_\\\\-]+$' - at `$.type`"),
        (b'{"type": "eval", "id": 5}', "Expected `str | null`, got `int` - at `$.id`"),
        (b'{"type": "eval", "timeout": 0}', "Expected `float` > 0.0 - at `$.timeout`"),
        (b'{"type": "eval", "timeout": 3600.5}', "Expected `float` <= 3600.0 - at `$.timeout`"),
        (b'{"type": "eval", "priority": 1.5}', "Expected `int | str`, got `float` - at `$.priority`"),
        (
            b'{"type": "eval", "priority": "urgent"}',
            "unknown priority 'urgent': use 0-4 or one of critical, high, normal, low, background"
            " - at `$.priority`",
        ),
        (
            b'{"type": "eval", "priority": 5}',
            "priority 5 is out of range: use 0 (critical) to 4 (background) - at `$.priority`",
        ),
    ],
)
def test_envelope_errors_name_the_path(body: bytes, message: str) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        JSON.decode(body, Envelope)
    assert str(caught.value) == message
    assert describe_decode_error(caught.value, JSON, "envelope") == f"invalid envelope: {message}"


def test_malformed_bodies_are_described_with_the_codec_name() -> None:
    with pytest.raises(msgspec.DecodeError) as caught:
        JSON.decode(b'{"type": ', Envelope)
    assert not isinstance(caught.value, msgspec.ValidationError)
    assert (
        describe_decode_error(caught.value, JSON) == f"malformed request body: not valid JSON: {caught.value}"
    )
    with pytest.raises(msgspec.DecodeError) as caught:
        MSGPACK.decode(b"\xc1", Envelope)
    assert describe_decode_error(caught.value, MSGPACK, "envelope") == (
        f"malformed envelope: not valid MSGPACK: {caught.value}"
    )


# --- Response --------------------------------------------------------------------------------------


def test_success_response_shape() -> None:
    before = time.time()
    response = success_response("eval", {"value": 3})
    assert response.type == "eval:success"
    assert response.payload == {"value": 3}
    assert response.success is True
    assert before <= response.timestamp <= time.time()
    decoded = msgspec.json.decode(JSON.encode(response))
    assert decoded == {
        "type": "eval:success",
        "payload": {"value": 3},
        "success": True,
        "timestamp": response.timestamp,
    }
    assert list(decoded) == ["type", "payload", "success", "timestamp"]


def test_error_response_shape() -> None:
    response = error_response("eval", ErrorCode.NOT_FOUND, "first problem", "second problem")
    assert response.type == "eval:error"
    assert response.success is False
    assert response.payload == ErrorPayload(
        code=ErrorCode.NOT_FOUND, errors=["first problem", "second problem"]
    )
    assert msgspec.json.decode(JSON.encode(response)) == {
        "type": "eval:error",
        "payload": {"code": "NOT_FOUND", "errors": ["first problem", "second problem"]},
        "success": False,
        "timestamp": response.timestamp,
    }
    assert error_response("send", ErrorCode.TIMEOUT).payload.errors == []


def test_error_codes_are_their_names() -> None:
    assert [code.value for code in ErrorCode] == [
        "VALIDATION", "NOT_FOUND", "TIMEOUT", "CIRCUIT_OPEN",
        "OVERLOADED", "UNAVAILABLE", "MODULE_ERROR", "CONFLICT",
    ]  # fmt: skip


# --- codecs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (None, JSON),
        ({}, JSON),
        ({"Content-Type": "application/json"}, JSON),
        ({"Content-Type": "text/plain"}, JSON),
        ({"traceparent": "00-x"}, JSON),
        ({"Content-Type": "application/msgpack"}, MSGPACK),
        ({"Content-Type": "application/msgpack", "traceparent": "00-x"}, MSGPACK),
    ],
)
def test_codec_for_reads_the_content_type(headers: dict[str, str] | None, expected: Codec) -> None:
    assert codec_for(headers) is expected


def test_codec_headers() -> None:
    assert JSON.headers is None
    assert MSGPACK.headers == {"Content-Type": "application/msgpack"}
    assert (JSON.name, MSGPACK.name) == ("json", "msgpack")


@pytest.mark.parametrize("codec", CODECS)
def test_response_round_trip(codec: Codec) -> None:
    response = success_response("eval", {"list": [1, 2.5, "x", None, True], "nested": {"a": {}}})
    assert codec.decode(codec.encode(response), Response) == response
    failure = error_response("eval", ErrorCode.VALIDATION, "bad - at `$.code`")
    decoded = codec.decode(codec.encode(failure), Response)
    assert decoded.type == "eval:error"
    assert decoded.payload == {"code": "VALIDATION", "errors": ["bad - at `$.code`"]}
    assert codec.decode(codec.encode(failure.payload), ErrorPayload) == failure.payload


@pytest.mark.parametrize("codec", CODECS)
def test_envelope_round_trip(codec: Codec) -> None:
    payload = codec.encode({"code": "(+ 1 2)", "context": {"x": [1, 2]}})
    envelope = Envelope(
        type="eval", payload=msgspec.Raw(payload), timestamp=123.25, id="abc", priority="high", timeout=1.5
    )
    assert envelope.priority is Priority.HIGH  # __post_init__ runs on construction too
    decoded = codec.decode(codec.encode(envelope), Envelope)
    assert bytes(decoded.payload) == payload
    assert codec.decode(bytes(decoded.payload)) == {"code": "(+ 1 2)", "context": {"x": [1, 2]}}
    assert (decoded.type, decoded.timestamp, decoded.id, decoded.priority, decoded.timeout) == (
        "eval", 123.25, "abc", Priority.HIGH, 1.5,
    )  # fmt: skip


@pytest.mark.parametrize("codec", CODECS)
def test_heartbeat_round_trip(codec: Codec) -> None:
    beat = Heartbeat(
        service="state", instance="host-1234abcd", role="service", version="0.1.0", pid=42, host="host",
        started=1.0, timestamp=2.0, cpu_percent=12.5, rss_bytes=1 << 30, threads=4, open_fds=-1,
        in_flight=3, handled=99, ready=False, metrics_url="http://127.0.0.1:9100",
    )  # fmt: skip
    assert codec.decode(codec.encode(beat), Heartbeat) == beat


@pytest.mark.parametrize("codec", CODECS)
def test_decode_as_any_and_errors_with_paths(codec: Codec) -> None:
    assert codec.decode(codec.encode({"a": [1, "b"]})) == {"a": [1, "b"]}
    with pytest.raises(msgspec.ValidationError, match=r"Expected `int`, got `str` - at `\$\.pid`"):
        codec.decode(codec.encode({"pid": "x"}), Heartbeat)


def test_json_and_msgpack_bytes_differ() -> None:
    value = {"type": "eval"}
    assert JSON.encode(value) == b'{"type":"eval"}'
    assert MSGPACK.encode(value) == b"\x81\xa4type\xa4eval"
    with pytest.raises(msgspec.DecodeError):
        JSON.decode(MSGPACK.encode(value))


# --- priorities ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, Priority.CRITICAL), (1, Priority.HIGH), (2, Priority.NORMAL),
        (3, Priority.LOW), (4, Priority.BACKGROUND),
        ("0", Priority.CRITICAL), (" 4 ", Priority.BACKGROUND),
        ("critical", Priority.CRITICAL), ("High", Priority.HIGH), ("NORMAL", Priority.NORMAL),
        ("low", Priority.LOW), ("  background\n", Priority.BACKGROUND),
        (Priority.LOW, Priority.LOW),
    ],
)  # fmt: skip
def test_parse_priority(value: int | str, expected: Priority) -> None:
    assert parse_priority(value) is expected


NAMES_HINT = "use 0-4 or one of critical, high, normal, low, background"
RANGE_HINT = "use 0 (critical) to 4 (background)"


@pytest.mark.parametrize(
    ("value", "field", "message"),
    [
        ("urgent", "priority", f"unknown priority 'urgent': {NAMES_HINT} - at `$.priority`"),
        ("", "priority", f"unknown priority '': {NAMES_HINT} - at `$.priority`"),
        ("-1", "priority", f"unknown priority '-1': {NAMES_HINT} - at `$.priority`"),
        (5, "priority", f"priority 5 is out of range: {RANGE_HINT} - at `$.priority`"),
        (-1, "priority", f"priority -1 is out of range: {RANGE_HINT} - at `$.priority`"),
        ("9", "task.priority", f"priority 9 is out of range: {RANGE_HINT} - at `$.task.priority`"),
    ],
)  # fmt: skip
def test_parse_priority_errors(value: int | str, field: str, message: str) -> None:
    with pytest.raises(ValueError, match="priority") as caught:
        parse_priority(value, field)
    assert str(caught.value) == message


def test_parse_priority_accepts_other_decimal_digits() -> None:
    # str.isdigit() and int() agree on these: fullwidth and Arabic-Indic digits.
    assert parse_priority("\uff13") is Priority.LOW
    assert parse_priority("\u0663") is Priority.LOW


def test_parse_priority_superscript_digit_is_an_unknown_priority() -> None:
    with pytest.raises(ValueError, match="priority") as caught:
        parse_priority("\u00b2")
    assert str(caught.value) == f"unknown priority '\u00b2': {NAMES_HINT} - at `$.priority`"


def test_priority_names_table() -> None:
    assert dict(PRIORITY_NAMES) == {
        "critical": Priority.CRITICAL, "high": Priority.HIGH, "normal": Priority.NORMAL,
        "low": Priority.LOW, "background": Priority.BACKGROUND,
    }  # fmt: skip
    assert [int(p) for p in Priority] == [0, 1, 2, 3, 4]


# --- subjects --------------------------------------------------------------------------------------


def test_subjects_for_a_custom_prefix() -> None:
    s = Subjects("acme")
    assert s.send("x") == "acme.send.x"
    assert s.send_all == "acme.send.>"
    assert s.module("interpreter", "eval") == "acme.mod.interpreter.eval"
    assert s.modctl("interpreter", "stop") == "acme.modctl.interpreter.stop"
    assert s.service("orchestrator", "status") == "acme.orchestrator.status"
    assert s.heartbeat("state", "host-1") == "acme.hb.state.host-1"
    assert s.heartbeats_all == "acme.hb.>"
    assert s.event("orchestrator", "module", "started") == "acme.evt.orchestrator.module.started"
    assert s.events_all == "acme.evt.>"
    assert s.task_event("t1", "done") == "acme.task.t1.done"
    assert s.task_queue(1, "gpu") == "acme.tasks.1.gpu"
    assert s.queue_group("interpreter") == "acme.interpreter"
    assert (s.events_stream, s.tasks_stream, s.dlq_stream) == ("ACME_EVENTS", "ACME_TASKS", "ACME_DLQ")
    assert [s.modules_bucket, s.breakers_bucket, s.config_bucket, s.leases_bucket, s.tasks_bucket] == [
        "acme_modules", "acme_breakers", "acme_config", "acme_leases", "acme_tasks",
    ]  # fmt: skip
    assert [s.workflows_bucket, s.results_bucket, s.state_bucket, s.snapshots_bucket] == [
        "acme_workflows", "acme_results", "acme_state", "acme_snapshots",
    ]  # fmt: skip


def test_subjects_for_a_dotted_mixed_case_prefix() -> None:
    s = Subjects("Acme.prod")
    assert s.send("x") == "Acme.prod.send.x"
    assert s.events_stream == "ACME_PROD_EVENTS"
    assert s.state_bucket == "acme_prod_state"


def test_default_prefix() -> None:
    assert DEFAULT_PREFIX == "corral"
    assert Subjects().send("interpreter") == "corral.send.interpreter"
    assert Subjects().events_stream == "CORRAL_EVENTS"


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        ("", "subject prefix is empty: it must be one subject token such as 'interpreter'"),
        ("acme.", "subject prefix is empty: it must be one subject token such as 'interpreter'"),
        ("acme..prod", "subject prefix is empty: it must be one subject token such as 'interpreter'"),
        ("ac me", "subject prefix 'ac me' contains ' ': use only letters, digits, '_' and '-'"),
        ("acme.*", "subject prefix '*' contains '*': use only letters, digits, '_' and '-'"),
        ("acme>", "subject prefix 'acme>' contains '>': use only letters, digits, '_' and '-'"),
    ],
)
def test_an_invalid_prefix_is_refused(prefix: str, message: str) -> None:
    with pytest.raises(ValueError, match="subject prefix") as caught:
        Subjects(prefix)
    assert str(caught.value) == message


@pytest.mark.parametrize("value", ["interpreter", "a", "A-b_9", "0"])
def test_validate_token_accepts(value: str) -> None:
    assert validate_token(value, "module name") == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "module name is empty: it must be one subject token such as 'interpreter'"),
        ("a.b", "module name 'a.b' contains '.': use only letters, digits, '_' and '-'"),
        ("inter preter", "module name 'inter preter' contains ' ': use only letters, digits, '_' and '-'"),
        ("a*", "module name 'a*' contains '*': use only letters, digits, '_' and '-'"),
        ("a>", "module name 'a>' contains '>': use only letters, digits, '_' and '-'"),
        ("ab\t", "module name 'ab\\t' contains '\\t': use only letters, digits, '_' and '-'"),
        ("modulé", "module name 'modulé' contains 'é': use only letters, digits, '_' and '-'"),
    ],
)
def test_validate_token_errors(value: str, message: str) -> None:
    with pytest.raises(ValueError, match="module name") as caught:
        validate_token(value, "module name")
    assert str(caught.value) == message


# --- errors ----------------------------------------------------------------------------------------

ERROR_CLASSES = [
    (ErrorCode.VALIDATION, errors.ValidationError),
    (ErrorCode.NOT_FOUND, errors.NotFoundError),
    (ErrorCode.TIMEOUT, errors.CallTimeoutError),
    (ErrorCode.CIRCUIT_OPEN, errors.CircuitOpenError),
    (ErrorCode.OVERLOADED, errors.OverloadedError),
    (ErrorCode.UNAVAILABLE, errors.UnavailableError),
    (ErrorCode.MODULE_ERROR, errors.ModuleError),
    (ErrorCode.CONFLICT, errors.ConflictError),
]


def test_every_code_has_a_class() -> None:
    assert {code for code, _ in ERROR_CLASSES} == set(ErrorCode)


@pytest.mark.parametrize(("code", "cls"), ERROR_CLASSES)
@pytest.mark.parametrize("as_struct", [True, False], ids=["struct", "dict"])
def test_error_from_payload_maps_every_code(
    code: ErrorCode, cls: type[errors.CorralError], as_struct: bool
) -> None:
    payload: ErrorPayload | dict[str, object] = (
        ErrorPayload(code=code, errors=["first", "second"])
        if as_struct
        else {"code": code.value, "errors": ["first", "second"]}
    )
    error = error_from_payload(payload)
    assert type(error) is cls
    assert error.code is code
    assert error.errors == ["first", "second"]
    assert str(error) == "first; second"
    assert isinstance(error, errors.CorralError)


@pytest.mark.parametrize(
    "payload",
    [{"code": "WAT", "errors": ["x"]}, {"code": None, "errors": ["x"]}, {"errors": ["x"]}],
)
def test_an_unknown_code_is_a_module_error(payload: dict[str, object]) -> None:
    error = error_from_payload(payload)
    assert type(error) is errors.ModuleError
    assert error.errors == ["x"]


def test_missing_errors_fall_back_to_the_class_description() -> None:
    error = error_from_payload({"code": "NOT_FOUND"})
    assert type(error) is errors.NotFoundError
    assert error.errors == ["No such module, message type or record."]
    assert errors.CircuitOpenError().errors == ["The module's circuit breaker is open."]
    assert error_from_payload({"code": "TIMEOUT", "errors": [1, None]}).errors == ["1", "None"]


def test_a_string_errors_field_is_one_message() -> None:
    error = error_from_payload({"code": "VALIDATION", "errors": "bad input"})
    assert error.errors == ["bad input"]


def test_call_timeout_error_is_an_asyncio_timeout() -> None:
    error = error_from_payload({"code": "TIMEOUT", "errors": ["no reply from x.y within 1s"]})
    assert isinstance(error, asyncio.TimeoutError)
    assert isinstance(error, TimeoutError)
    with pytest.raises(asyncio.TimeoutError, match=r"^no reply from x\.y within 1s$"):
        raise error


def test_config_error_is_not_a_corral_error() -> None:
    assert not issubclass(errors.ConfigError, errors.CorralError)
