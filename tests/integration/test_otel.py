"""Optional OpenTelemetry export: a span per request in the runtime's request wrapper, the caller's
traceparent its parent. Each test runs its services in a child process, because a process has
one global TracerProvider and the other tests must keep running without one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID, CLIENT_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"

# The application configures OpenTelemetry itself (an in-memory exporter); corral's spans go to it.
IN_MEMORY = """
import asyncio, json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

from corral.bus import BusSettings
from corral.orchestrator.service import OrchestratorService
from corral.runtime import ServiceSettings
from corral.sdk import Client, Module
from corral.tracing import current_traceparent

module = Module("spanned")

@module.handler("echo")
async def echo(payload: dict) -> dict:
    with trace.get_tracer("app").start_as_current_span("inner work"):
        return {"traceparent": current_traceparent()}

@module.handler("fail")
async def fail(payload: dict) -> None:
    raise RuntimeError("boom")

async def main(url, prefix, traceparent):
    bus = BusSettings(servers=[url])
    settings = ServiceSettings(prefix=prefix, bus=bus, metrics_port=-1)
    async with OrchestratorService(settings) as orchestrator, module.service(settings) as mod:
        await orchestrator.nc.flush()
        await mod.nc.flush()
        async with await Client.connect(bus, prefix=prefix) as client:
            reply = await client.send("spanned", "echo", {}, traceparent=traceparent)
            try:
                await client.send("spanned", "fail", {}, traceparent=traceparent)
            except Exception as exc:
                failed = type(exc).__name__
    spans = [
        {
            "name": s.name,
            "trace_id": f"{s.context.trace_id:032x}",
            "span_id": f"{s.context.span_id:016x}",
            "parent": f"{s.parent.span_id:016x}" if s.parent else None,
            "kind": s.kind.name,
            "status": s.status.status_code.name,
            "attributes": dict(s.attributes),
        }
        for s in exporter.get_finished_spans()
    ]
    print(json.dumps({"reply": reply, "failed": failed, "spans": spans}))

asyncio.run(main(*sys.argv[1:]))
"""

# Nothing configured in code: CORRAL_OTEL=console makes the provider and prints the spans.
CONSOLE = """
import asyncio, sys
import nats
from corral.bus import BusSettings
from corral.runtime import Service, ServiceSettings

async def main(url, prefix, traceparent):
    service = Service("otelsvc", settings=ServiceSettings(prefix=prefix, bus=BusSettings(servers=[url])))

    @service.endpoint("ping")
    async def ping(_: None, ctx) -> str:
        return "pong"

    async with service:
        nc = await nats.connect(url)
        await nc.request(f"{prefix}.otelsvc.ping", b"", timeout=5, headers={"traceparent": traceparent})
        await nc.close()

asyncio.run(main(*sys.argv[1:]))
"""


def run(script: str, nats_url: str, prefix: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CORRAL_"))}
    done = subprocess.run(
        [sys.executable, "-c", script, nats_url, prefix, TRACEPARENT],
        env={**environ, **env}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


def test_a_span_per_request_parented_by_the_callers_traceparent(nats_url: str, prefix: str) -> None:
    out = json.loads(run(IN_MEMORY, nats_url, prefix).stdout.splitlines()[-1])
    spans: list[dict[str, Any]] = out["spans"]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
    assert sorted(by_name) == ["inner work", "orchestrator send", "spanned echo", "spanned fail"]
    assert {span["trace_id"] for span in spans} == {TRACE_ID}  # one trace, client to module

    sent_ok, sent_failed = by_name["orchestrator send"]
    echo, fail, inner = by_name["spanned echo"][0], by_name["spanned fail"][0], by_name["inner work"][0]
    for span in (sent_ok, sent_failed, echo, fail):
        assert span["kind"] == "SERVER"
    assert sent_ok["parent"] == sent_failed["parent"] == CLIENT_SPAN
    # The orchestrator forwards the traceparent it got; a module span's parent is the caller's
    # span, or the orchestrator's once the orchestrator forwards its own.
    assert echo["parent"] in (CLIENT_SPAN, sent_ok["span_id"])
    assert sent_ok["attributes"] == {
        "messaging.system": "nats",
        "messaging.destination.name": f"{prefix}.send.spanned",
        "corral.service": "orchestrator",
        "corral.instance": sent_ok["attributes"]["corral.instance"],
        "corral.outcome": "ok",
    }
    assert echo["attributes"]["messaging.destination.name"] == f"{prefix}.mod.spanned.echo"
    assert (echo["status"], echo["attributes"]["corral.outcome"]) == ("UNSET", "ok")

    # The handler's own spans are children of the request's, and the traceparent current in the
    # handler (what a call it makes would carry) is the request span's.
    assert inner["parent"] == echo["span_id"]
    assert out["reply"] == {"traceparent": f"00-{TRACE_ID}-{echo['span_id']}-01"}

    assert out["failed"] == "ModuleError"
    assert (fail["status"], fail["attributes"]["corral.outcome"]) == ("ERROR", "MODULE_ERROR")
    assert (sent_failed["status"], sent_failed["attributes"]["corral.outcome"]) == ("ERROR", "MODULE_ERROR")


def test_corral_otel_console_exports_without_any_code(nats_url: str, prefix: str) -> None:
    done = run(CONSOLE, nats_url, prefix, CORRAL_OTEL="console")
    span = json.loads(done.stdout)  # the console exporter prints each span as a JSON document
    assert span["name"] == "otelsvc ping"
    assert span["context"]["trace_id"] == f"0x{TRACE_ID}"
    assert span["parent_id"] == f"0x{CLIENT_SPAN}"
    assert span["resource"]["attributes"]["service.name"] == "corral-otelsvc"
    assert span["attributes"]["corral.outcome"] == "ok"


def test_off_unless_configured_and_then_not_even_imported(nats_url: str, prefix: str) -> None:
    check = """
import sys
from corral.runtime.otel import request_tracer
assert request_tracer("svc", "i", "1", env={}) is None
off = {"CORRAL_OTEL": "0", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}
assert request_tracer("svc", "i", "1", env=off) is None
assert request_tracer("svc", "i", "1", env={"CORRAL_OTEL": "1", "OTEL_SDK_DISABLED": "true"}) is None
assert not [m for m in sys.modules if m.startswith("opentelemetry")], "imported while off"
assert request_tracer("svc", "i", "1", env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}) is not None
print("ok")
"""
    assert run(check, nats_url, prefix).stdout.strip() == "ok"
