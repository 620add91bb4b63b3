"""`corral state ...`: each verb's output and exit status, run in-process against a real service."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from corral.bus import BusSettings
from corral.cli import state as state_cli
from corral.runtime import ServiceSettings
from corral.sdk.state import StateClient
from corral.state.service import StateService
from corral.state.settings import StateSettings

STATE = StateSettings(events=False)


@pytest.fixture
async def service(settings: ServiceSettings) -> AsyncIterator[StateService]:
    async with StateService(settings, STATE) as running:
        yield running


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="corral")
    state_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["state", *argv])


class Cli:
    def __init__(self, nats_url: str, prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.bus = BusSettings(servers=[nats_url], connect_attempts=2)
        self.prefix = prefix
        self.capsys = capsys

    async def __call__(self, *argv: str) -> tuple[int, str, str]:
        code = await state_cli.run(parse(list(argv)), self.bus, self.prefix)
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err


@pytest.fixture
def cli(nats_url: str, prefix: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(nats_url, prefix, capsys)


async def test_set_get_keys_delete(service: StateService, cli: Cli) -> None:
    assert await cli("set", "app.version", '"1.0.0"') == (0, "1\n", "")
    assert (await cli("set", "app.config", '{"debug": true}'))[0] == 0
    assert await cli("get", "app.version") == (0, '"1.0.0"\n', "")
    assert json.loads((await cli("get", "app.config"))[1]) == {"debug": True}
    code, out, _ = await cli("get", "app.version", "--full")
    assert code == 0
    assert json.loads(out)["revision"] == 1
    assert await cli("keys", "app.*") == (0, "app.config\napp.version\n", "")
    assert await cli("delete", "app.version") == (0, "deleted\n", "")
    assert await cli("delete", "app.version") == (0, "no value to delete\n", "")


async def test_set_takes_json_or_a_string(service: StateService, cli: Cli) -> None:
    code, _, err = await cli("set", "app.version", "1.0.0")
    assert code == 2
    assert "value is not JSON" in err
    assert """'"1.0.0"' or pass --string""" in err
    assert (await cli("set", "app.version", "1.0.0", "--string"))[0] == 0
    assert await cli("get", "app.version") == (0, '"1.0.0"\n', "")


async def test_errors_print_their_code_and_exit_1(service: StateService, cli: Cli) -> None:
    code, out, err = await cli("get", "missing.key")
    assert (code, out) == (1, "")
    assert "NOT_FOUND: key 'missing.key' has no value" in err
    code, _, err = await cli("set", "bad key", "1")
    assert code == 1
    assert "VALIDATION: key 'bad key' contains ' '" in err
    await cli("set", "k", "1")
    code, _, err = await cli("set", "k", "2", "--expect-revision", "7")
    assert code == 1
    assert "CONFLICT: key 'k' was expected at revision 7" in err


async def test_history_and_restore(service: StateService, cli: Cli) -> None:
    for value in ("1", "2", "3"):
        await cli("set", "k", value)
    code, out, _ = await cli("history", "k")
    assert code == 0
    assert [line.split("│")[4].strip() for line in out.splitlines() if "│ set" in line] == ["1", "2", "3"]
    assert await cli("restore", "k", "1") == (0, "4\n", "")
    assert await cli("get", "k") == (0, "1\n", "")


async def test_snapshots(service: StateService, cli: Cli) -> None:
    await cli("set", "a", "1")
    code, out, _ = await cli("snapshot", "create", "--meta", "reason=test")
    snapshot_id = out.strip()
    assert code == 0
    assert snapshot_id
    code, out, _ = await cli("snapshot", "list")
    assert code == 0
    assert snapshot_id in out
    assert '{"reason": "test"}' in out
    await cli("set", "a", "2")
    await cli("set", "b", "3")
    code, out, _ = await cli("snapshot", "restore", snapshot_id)
    assert code == 0
    assert out.splitlines() == [
        f"restored {snapshot_id}: 1 rewritten, 0 recreated, 1 deleted, 0 unchanged",
        "  rewritten a",
        "  deleted b",
    ]
    assert await cli("snapshot", "delete", snapshot_id) == (0, f"deleted {snapshot_id}\n", "")
    code, _, err = await cli("snapshot", "restore", snapshot_id)
    assert code == 1
    assert f"NOT_FOUND: no snapshot '{snapshot_id}'" in err
    code, _, err = await cli("snapshot", "create", "--meta", "novalue")
    assert code == 2
    assert "--meta 'novalue' is not KEY=VALUE" in err


async def test_watch_prints_changes_as_json_lines(
    service: StateService, cli: Cli, nc: Client, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    state = StateClient(nc, prefix=prefix, settings=STATE)
    await state.set("w.a", 0)
    watching = asyncio.create_task(cli("watch", "w.*", "--current", "--count", "3"))
    printed = ""
    async with asyncio.timeout(10):  # the current value printed: the watch is in place
        while '"initial"' not in printed:
            await asyncio.sleep(0.02)
            printed += capsys.readouterr().out
    await state.set("w.a", 1)
    await state.delete("w.a")
    code, out, _ = await asyncio.wait_for(watching, 10)
    lines = [json.loads(line) for line in (printed + out).splitlines()]
    assert code == 0
    assert [(c["key"], c["old_value"], c["new_value"], c["operation"]) for c in lines] == [
        ("w.a", None, 0, "initial"),
        ("w.a", 0, 1, "set"),
        ("w.a", 1, None, "delete"),
    ]
