"""Optional OpenTelemetry export: one span per request served, the caller's traceparent its parent.

Off, and nothing imported, unless one of these holds (and `CORRAL_OTEL` is not `0`, nor
`OTEL_SDK_DISABLED` `true`):

* `CORRAL_OTEL=1` (or `otlp`): export over OTLP/HTTP to `OTEL_EXPORTER_OTLP_ENDPOINT` (the
  exporter's default, http://localhost:4318, when unset);
* `CORRAL_OTEL=console`: print spans to stdout (to see what would be exported);
* `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set: OTLP there;
* the process has configured an OpenTelemetry SDK TracerProvider itself (e.g. under
  `opentelemetry-instrument`, or a test with an in-memory exporter): spans go to it.

It needs `pip install 'corral[otel]'` (opentelemetry-sdk and the OTLP/HTTP exporter); when asked
for without them, the process says so once in its log and serves without spans.

A span is named `<service> <endpoint>` (kind SERVER) and carries the subject, the instance
and the outcome (`ok` or the error code; an error code sets the span's status to ERROR). While
the handler runs, the span is the current OpenTelemetry span (a handler can add child spans)
and the current traceparent is the span's own, so calls made on the request's behalf are its
children.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = ["RequestSpan", "RequestTracer", "request_tracer"]

log = logging.getLogger("corral.runtime")

_provider: Any = None  # the TracerProvider this process made (once), when it made one


class RequestSpan:
    """The span of one request, as the request wrapper sees it."""

    __slots__ = ("_span", "traceparent")

    def __init__(self, span: Any) -> None:
        self._span = span
        context = span.get_span_context()
        self.traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"

    def outcome(self, code: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        self._span.set_attribute("corral.outcome", code)
        if code != "ok":
            self._span.set_status(Status(StatusCode.ERROR, code))


class RequestTracer:
    def __init__(self, provider: Any, service: str, instance: str, version: str) -> None:
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._tracer = provider.get_tracer("corral", version)
        self._propagator = TraceContextTextMapPropagator()
        self._kind = SpanKind.SERVER
        self.service, self.instance = service, instance

    @contextmanager
    def span(self, endpoint: str, subject: str, headers: Mapping[str, str] | None) -> Iterator[RequestSpan]:
        parent = self._propagator.extract(headers) if headers else None
        with self._tracer.start_as_current_span(
            f"{self.service} {endpoint}",
            context=parent,
            kind=self._kind,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": subject,
                "corral.service": self.service,
                "corral.instance": self.instance,
            },
        ) as span:
            yield RequestSpan(span)


def request_tracer(
    service: str, instance: str, version: str, env: Mapping[str, str] | None = None
) -> RequestTracer | None:
    """The tracer of this process's requests, or None when export is off (the usual case)."""
    env = os.environ if env is None else env
    mode = env.get("CORRAL_OTEL", "").strip().lower()
    if mode in ("0", "false", "off") or env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    endpoint_set = bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    # Only look for a provider the application configured if it imported OpenTelemetry itself:
    # importing it here would cost every process that does not use it.
    provider = _configured_provider() if "opentelemetry.trace" in sys.modules else None
    if provider is None and not mode and not endpoint_set:
        return None
    try:
        provider = provider or _make_provider(service, instance, version, console=mode == "console")
    except ImportError as exc:
        log.warning(
            "OpenTelemetry export is configured but not installed (%s); pip install 'corral[otel]'. "
            "Serving without spans.",
            exc,
        )
        return None
    return RequestTracer(provider, service, instance, version)


def _configured_provider() -> Any:
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        return None
    provider = trace.get_tracer_provider()
    return provider if isinstance(provider, TracerProvider) else None


def _make_provider(service: str, instance: str, version: str, *, console: bool) -> Any:
    global _provider
    if _provider is not None:  # one per process, however many services it runs
        return _provider
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    exporter: SpanExporter
    if console:
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    resource = Resource.create(
        {"service.name": f"corral-{service}", "service.instance.id": instance, "service.version": version}
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # the process's spans, ours and the application's, go here
    _provider = provider
    return provider
