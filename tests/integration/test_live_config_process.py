"""Live configuration of the example compiler run as a real process: applied without a restart,
kept across kill -9 and a new process, checked against the recorded schema while it is down."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from corral.bus import request
from corral.discovery import module_statuses
from corral.orchestrator.service import OrchestratorService
from corral.runtime import ServiceSettings

pytestmark = pytest.mark.chaos

COMPILER = Path(__file__).resolve().parents[2] / "examples" / "modules" / "compiler"
NESTED_4 = "IF TRUE THEN " * 3 + "x := 1"  # four levels: three IFs and the assignment


class Compiler:
    def __init__(self, nats_url: str, prefix: str, log: Path) -> None:
        self.env = {
            **os.environ, "NATS_URL": nats_url, "CORRAL_PREFIX": prefix, "CORRAL_INSTANCE": "cp1",
            "CORRAL_METRICS_PORT": "-1",
        }  # fmt: skip
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, nc: Client, prefix: str) -> None:
        with self.log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, str(COMPILER), "--no-wait", env=self.env, stdout=out, stderr=out
            )
        for _ in range(300):
            if await module_statuses(nc, prefix, "compiler", wait=0.1):
                return
        raise AssertionError(f"the compiler did not start:\n{self.log.read_text()}")

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()


@pytest.fixture
async def compiler(nats_url: str, prefix: str, tmp_path: Path) -> AsyncIterator[Compiler]:
    process = Compiler(nats_url, prefix, tmp_path / "compiler.log")
    try:
        yield process
    finally:
        if process.process is not None and process.process.returncode is None:
            await process.kill()


async def call(nc: Client, subject: str, body: Any) -> dict[str, Any]:
    reply: dict[str, Any] = json.loads(
        (await request(nc, subject, json.dumps(body).encode(), timeout=15)).data
    )
    return reply


async def test_the_example_compiler_takes_live_config_and_keeps_it_across_processes(
    settings: ServiceSettings, nc: Client, prefix: str, compiler: Compiler
) -> None:
    def config(verb: str, body: dict[str, Any]) -> Any:
        return call(nc, f"{prefix}.orchestrator.config.{verb}", body)

    async def compile_nested() -> dict[str, Any]:
        return await call(nc, f"{prefix}.mod.compiler.compile", {"source": NESTED_4})

    async with OrchestratorService(settings, initial_config={}):
        await compiler.start(nc, prefix)
        assert (await compile_nested())["success"] is True

        change = await config("set", {"module": "compiler", "values": {"max_depth": 3}})
        assert change["payload"]["applied_to"] == ["cp1"], change
        refused = await compile_nested()  # no restart: the running process uses it at once
        assert refused["payload"]["code"] == "VALIDATION"
        assert "nesting deeper than 3 levels" in refused["payload"]["errors"][0]

        too_deep = await config("set", {"module": "compiler", "values": {"max_depth": 65}})
        assert too_deep["payload"]["code"] == "VALIDATION"
        assert "Expected `int` <= 64 - at `$.max_depth`" in too_deep["payload"]["errors"][0]

        await compiler.kill()  # a new process starts with the live config, not the default
        await compiler.start(nc, prefix)
        assert "nesting deeper than 3" in (await compile_nested())["payload"]["errors"][0]

        await compiler.kill()  # while it is down, its recorded schema still checks changes
        too_deep = await config("set", {"module": "compiler", "values": {"max_depth": 65}})
        assert too_deep["payload"]["errors"] == ["65 is greater than the maximum of 64 - at `$.max_depth`"]
        stored = await config("set", {"module": "compiler", "values": {"max_depth": 10}})
        assert (stored["payload"]["version"], stored["payload"]["applied_to"]) == (2, [])
        await compiler.start(nc, prefix)
        assert (await compile_nested())["success"] is True
        statuses = await module_statuses(nc, prefix, "compiler", wait=0.3)
        assert [s.config_version for s in statuses] == [2]
