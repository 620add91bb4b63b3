"""`corral config get|set|history|rollback` against a real orchestrator and SDK module."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator

import msgspec
import pytest

from corral.bus import BusSettings
from corral.cli import config_cmd
from corral.orchestrator.service import OrchestratorService
from corral.runtime import ServiceSettings
from corral.sdk import Module


class Settings(msgspec.Struct):
    max_depth: int = 32
    mode: str = "safe"


@pytest.fixture
async def running(settings: ServiceSettings) -> AsyncIterator[Module]:
    module = Module("compiler")

    @module.on_config
    def configure(config: Settings) -> None:
        if config.mode == "explode":
            raise ValueError("mode 'explode' is not allowed")

    async with OrchestratorService(settings, initial_config={}), module.service(settings):
        yield module


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="corral")
    config_cmd.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["config", *argv])


class Cli:
    def __init__(self, nats_url: str, prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.bus = BusSettings(servers=[nats_url], connect_attempts=2)
        self.prefix = prefix
        self.capsys = capsys

    async def __call__(self, *argv: str) -> tuple[int, str, str]:
        code = await config_cmd.run(parse(list(argv)), self.bus, self.prefix)
        captured = self.capsys.readouterr()
        return code, captured.out, " ".join(captured.err.split())


@pytest.fixture
def cli(nats_url: str, prefix: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(nats_url, prefix, capsys)


async def test_set_get_history_rollback(running: Module, cli: Cli) -> None:
    code, out, _ = await cli("set", "compiler", "max_depth=64", "mode=fast")
    assert code == 0
    assert out.strip() == "compiler: config version 1 applied to 1 instance(s); changed: max_depth, mode"
    assert running.config == Settings(max_depth=64, mode="fast")
    code, out, _ = await cli("get", "compiler")
    assert (code, json.loads(out)) == (0, {"max_depth": 64, "mode": "fast"})
    assert (await cli("set", "compiler", '{"max_depth": 8}'))[0] == 0  # a whole document replaces
    assert running.config == Settings(max_depth=8)
    code, out, _ = await cli("history", "compiler")
    assert code == 0
    assert '{"max_depth": 64, "mode": "fast"}' in out
    assert '{"max_depth": 8}' in out
    code, out, _ = await cli("rollback", "compiler", "1")
    assert code == 0
    assert "config version 3 (rollback to version 1) applied to 1 instance(s)" in out
    assert running.config == Settings(max_depth=64, mode="fast")
    code, out, _ = await cli("get", "compiler", "--full")
    assert json.loads(out)["version"] == 3


async def test_refusals_exit_1_with_the_reason_and_bad_arguments_exit_2(running: Module, cli: Cli) -> None:
    code, _, err = await cli("set", "compiler", "max_depth=deep")
    assert code == 1
    assert "VALIDATION" in err
    assert "Expected `int`, got `str` - at `$.max_depth`" in err
    code, _, err = await cli("set", "compiler", "mode=explode")
    assert (code, "mode 'explode' is not allowed" in err) == (1, True)
    code, _, err = await cli("rollback", "compiler", "5")
    assert (code, "NOT_FOUND" in err) == (1, True)
    code, _, err = await cli("set", "compiler", "max_depth")
    assert (code, err) == (2, "corral config set: 'max_depth' is not key=value (or give one JSON object)")
    assert running.config == Settings()


async def test_the_corral_command_runs_config(running: Module, nats_url: str, prefix: str) -> None:
    argv = [sys.executable, "-m", "corral.cli.main", "--nats-url", nats_url, "--prefix", prefix, "config"]
    # Not subprocess.run: the orchestrator answering it runs on this event loop.
    process = await asyncio.create_subprocess_exec(
        *argv,
        "set",
        "compiler",
        "max_depth=12",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err
    assert b"config version 1 applied to 1 instance(s)" in out
    assert running.config == Settings(max_depth=12)
