"""Structured JSON log lines carrying service, instance and the current trace id."""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import msgspec

from corral.tracing import trace_id_of, traceparent_var

__all__ = ["configure_logging", "current_trace_id", "trace_id_from_traceparent", "trace_id_var"]

# A trace id set without a traceparent (older callers); the current traceparent's wins.
trace_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("corral_trace_id", default=None)

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged as a field.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_encoder = msgspec.json.Encoder()


def current_trace_id() -> str | None:
    """The trace id of the request being served (read from its traceparent when asked, so a
    request that logs nothing pays nothing for it)."""
    return trace_id_of(traceparent_var.get()) or trace_id_var.get()


trace_id_from_traceparent = trace_id_of


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str, instance: str) -> None:
        super().__init__()
        self.service = service
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "service": self.service,
            "instance": self.instance,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if trace_id := current_trace_id():
            line["trace_id"] = trace_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return _encoder.encode(line).decode(errors="replace")


def configure_logging(service: str, instance: str, level: str = "INFO") -> None:
    """Send JSON lines to stderr; safe to call more than once (the last call wins)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service, instance))
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing.formatter, JsonFormatter):
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.Formatter.converter = time.gmtime
