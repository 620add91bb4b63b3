"""W3C trace context (`traceparent`): made at the edge, carried on every hop of a request.

    traceparent: 00-<trace id: 32 hex>-<parent span id: 16 hex>-<flags: 2 hex>

The edge (the CLI, the SDK client) starts a trace with `new_traceparent()`. Every process that
serves a request sets the request's traceparent as the current one (corral.runtime does it
for every endpoint), so its log lines carry the trace id and a call it makes on the request's
behalf continues the trace with `outgoing_traceparent()`: a child (same trace id, a new span
id) of the current one. Grepping one trace id then finds a request in every process it went
through.
"""

from __future__ import annotations

import contextvars
import re
import secrets
from typing import NamedTuple

__all__ = [
    "TraceContext",
    "child_traceparent",
    "current_traceparent",
    "new_traceparent",
    "outgoing_traceparent",
    "parse_traceparent",
    "trace_id_of",
    "traceparent_var",
]

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16

# The traceparent of the request this task serves (None outside a request).
traceparent_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "corral_traceparent", default=None
)


class TraceContext(NamedTuple):
    trace_id: str
    span_id: str
    flags: str

    def header(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def parse_traceparent(value: str | None) -> TraceContext | None:
    """The fields of a valid traceparent; None for a missing or malformed one (which the spec
    says to ignore, as if absent). Versions above 00 may append fields; their first four
    fields read the same."""
    if not value:
        return None
    value = value.strip().lower()
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    if version == "00" and len(value) != 55:
        return None
    if len(value) > 55 and value[55] != "-":
        return None
    return TraceContext(trace_id, span_id, flags)


def trace_id_of(traceparent: str | None) -> str | None:
    parsed = parse_traceparent(traceparent)
    return parsed.trace_id if parsed else None


def new_traceparent(*, sampled: bool = True) -> str:
    """A fresh trace: the edge of a request starts it."""
    return TraceContext(secrets.token_hex(16), secrets.token_hex(8), "01" if sampled else "00").header()


def child_traceparent(parent: str | None) -> str:
    """The traceparent to send on a call made on behalf of `parent`: the same trace and flags
    with a new span id, or a new trace when `parent` is missing or malformed."""
    parsed = parse_traceparent(parent)
    if parsed is None:
        return new_traceparent()
    return TraceContext(parsed.trace_id, secrets.token_hex(8), parsed.flags).header()


def current_traceparent() -> str | None:
    """The traceparent of the request being served here, if any."""
    return traceparent_var.get()


def outgoing_traceparent() -> str:
    """For a call this process makes now: a child of the current request's trace, or a new one."""
    return child_traceparent(traceparent_var.get())
