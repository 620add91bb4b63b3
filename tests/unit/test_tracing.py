"""W3C traceparent: parsing (invalid ones are ignored, as the spec says), new traces, children,
and the current request's trace continuing into the calls it makes."""

from __future__ import annotations

import asyncio

import pytest

from corral.tracing import (
    TraceContext,
    child_traceparent,
    current_traceparent,
    new_traceparent,
    outgoing_traceparent,
    parse_traceparent,
    trace_id_of,
    traceparent_var,
)

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_parse_a_valid_traceparent() -> None:
    assert parse_traceparent(VALID) == TraceContext(
        "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01"
    )
    assert trace_id_of(VALID) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert parse_traceparent(VALID.upper()) == parse_traceparent(VALID)  # hex is case-insensitive
    assert parse_traceparent(f" {VALID} ") == parse_traceparent(VALID)


def test_a_later_version_may_append_fields() -> None:
    assert parse_traceparent(VALID.replace("00-", "01-", 1) + "-what-comes-next") is not None


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "00-x",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # trace id one short
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # version 00 has 4 fields
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero span id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is invalid
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",  # not hex
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",  # no dash before more fields
    ],
)
def test_invalid_traceparents_are_ignored(value: str | None) -> None:
    assert parse_traceparent(value) is None
    assert trace_id_of(value) is None


def test_new_traceparents_are_valid_sampled_and_distinct() -> None:
    made = {new_traceparent() for _ in range(100)}
    assert len({trace_id_of(t) for t in made}) == 100
    for value in made:
        parsed = parse_traceparent(value)
        assert parsed is not None
        assert parsed.flags == "01"
    assert parse_traceparent(new_traceparent(sampled=False)) is not None
    assert new_traceparent(sampled=False).endswith("-00")


def test_a_child_keeps_the_trace_and_flags_with_a_new_span() -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    child = parse_traceparent(child_traceparent(parent))
    assert child is not None
    assert child.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert child.flags == "00"
    assert child.span_id != "00f067aa0ba902b7"


def test_a_child_of_nothing_or_garbage_starts_a_new_trace() -> None:
    for parent in (None, "garbage"):
        child = parse_traceparent(child_traceparent(parent))
        assert child is not None
        assert child.flags == "01"


async def test_outgoing_continues_the_current_request_and_tasks_do_not_share_it() -> None:
    assert current_traceparent() is None
    assert parse_traceparent(outgoing_traceparent()) is not None  # outside a request: a new trace

    async def serve(traceparent: str) -> tuple[str | None, str | None]:
        traceparent_var.set(traceparent)  # what the runtime does for every request
        await asyncio.sleep(0)
        return current_traceparent(), trace_id_of(outgoing_traceparent())

    other = new_traceparent()
    results = await asyncio.gather(serve(VALID), serve(other))
    assert results == [(VALID, trace_id_of(VALID)), (other, trace_id_of(other))]
    assert current_traceparent() is None  # each task had its own
