"""One request followed across processes by its trace id: the edge (the CLI, the SDK client) makes
the traceparent, the orchestrator forwards it, and every process's JSON log lines carry its
trace id. Optional OpenTelemetry export: a span per request, parented by the traceparent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client as NatsClient

from corral.bus import BusSettings
from corral.sdk import Client
from corral.tracing import parse_traceparent, trace_id_of

MODULE_SCRIPT = """
import logging
from corral.runtime import RequestContext
from corral.sdk import Module

module = Module("traced")
log = logging.getLogger("traced")

@module.handler("echo")
async def echo(payload: dict, ctx: RequestContext) -> dict:
    log.info("echoing %s", payload)  # a handler's own log line carries the trace id too
    return {"traceparent": ctx.headers.get("traceparent")}

module.run()
"""


class Process:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(argv, env=env, stdout=out, stderr=out)

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines so far (anything else the process printed is skipped)."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def trace_ids(self) -> set[str]:
        return {line["trace_id"] for line in self.lines() if "trace_id" in line}

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@pytest.fixture
def env(nats_url: str, prefix: str) -> dict[str, str]:
    env = {**os.environ, "NATS_URL": nats_url, "CORRAL_PREFIX": prefix, "CORRAL_LOG_LEVEL": "DEBUG"}
    for name in ("CORRAL_CONFIG", "CORRAL_OTEL", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        env.pop(name, None)
    return env


@pytest.fixture
def system(tmp_path: Path, env: dict[str, str]) -> Iterator[tuple[Process, Process]]:
    """The orchestrator and one module, each its own process, logging JSON at DEBUG."""
    script = tmp_path / "traced.py"
    script.write_text(MODULE_SCRIPT)
    orchestrator = Process([sys.executable, "-m", "corral.orchestrator"], env, tmp_path / "orchestrator.log")
    module = Process([sys.executable, str(script)], env, tmp_path / "module.log")
    try:
        yield orchestrator, module
    finally:
        module.stop()
        orchestrator.stop()


async def wait_ready(nc: NatsClient, prefix: str, timeout: float = 30.0) -> None:
    """Until the module has been told by the orchestrator that it may serve."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(nats.errors.Error):
            msg = await nc.request(f"{prefix}.modctl.traced.status", b"", timeout=1)
            if json.loads(msg.data)["payload"]["ready"]:
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"module traced not ready within {timeout}s")


async def test_one_request_is_found_by_its_trace_id_in_every_process(
    system: tuple[Process, Process], env: dict[str, str], nats_url: str, prefix: str
) -> None:
    orchestrator, module = system
    async with await Client.connect(BusSettings(servers=[nats_url]), prefix=prefix) as client:
        await wait_ready(client.nc, prefix)
        # The SDK client at the edge: no traceparent given, so it makes one.
        reply = await client.send("traced", "echo", {"n": 1}, timeout=5)
    sdk_traceparent = reply["traceparent"]
    sdk_trace = parse_traceparent(sdk_traceparent)
    assert sdk_trace is not None, sdk_traceparent
    assert sdk_trace.flags == "01"

    # The CLI at the edge: it makes one too (a new trace per call).
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "corral.cli.main", "send", "traced", "echo", '{"n": 2}',
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(cli.communicate(), 30)
    assert cli.returncode == 0, stderr.decode()
    cli_trace_id = trace_id_of(json.loads(stdout)["traceparent"])
    assert cli_trace_id is not None, stdout
    assert cli_trace_id != sdk_trace.trace_id

    for trace_id, n in ((sdk_trace.trace_id, 1), (cli_trace_id, 2)):
        in_orchestrator = [line["msg"] for line in orchestrator.lines() if line.get("trace_id") == trace_id]
        served = [m for m in in_orchestrator if m.startswith(f"served {prefix}.send.traced: ok in ")]
        assert len(served) == 1, in_orchestrator

        in_module = [line["msg"] for line in module.lines() if line.get("trace_id") == trace_id]
        assert in_module.count(f"echoing {{'n': {n}}}") == 1, in_module
        served = [m for m in in_module if m.startswith(f"served {prefix}.mod.traced.echo: ok in ")]
        assert len(served) == 1, in_module
    # Log lines outside a request carry no trace id.
    assert {line.get("trace_id") for line in module.lines() if "started" in line["msg"]} == {None}
