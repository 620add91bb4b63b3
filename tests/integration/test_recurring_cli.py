"""`corral recurring list | add | remove` as a user runs them, against a scheduler in this process."""

from __future__ import annotations

import asyncio
import os
import sys

import msgspec

from corral.config import RecurringConfig
from corral.runtime import ServiceSettings
from corral.scheduler.service import SchedulerService
from tests.integration.scheduler_helpers import FAST


async def corral(nats_url: str, prefix: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "NATS_URL": nats_url, "CORRAL_PREFIX": prefix, "COLUMNS": "200"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "corral.cli.main", "recurring", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_add_list_and_remove_from_the_shell(
    settings: ServiceSettings, nats_url: str, prefix: str
) -> None:
    nightly = msgspec.convert({"type": "echo", "cron": "30 2 * * *", "enabled": False}, RecurringConfig)
    async with SchedulerService(settings, FAST, recurring={"nightly": nightly}):
        code, out, err = await corral(
            nats_url, prefix, "add", "cleanup", "echo", "--every", "5m", "--payload", '{"days": 7}',
            "--priority", "low", "--max-cpu", "90",
        )  # fmt: skip
        assert code == 0, err
        assert out.startswith("added cleanup; next tick ")

        code, out, err = await corral(nats_url, prefix, "list")
        assert code == 0, err
        rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 5}
        assert set(rows) >= {"cleanup", "nightly"}
        assert "every 300s" in rows["cleanup"]
        assert "api" in rows["cleanup"]
        assert "cron 30 2 * * *" in rows["nightly"]
        assert "disabled" in rows["nightly"]

        code, out, err = await corral(nats_url, prefix, "add", "bad", "echo", "--cron", "61 * * * *")
        assert code == 1
        assert "VALIDATION" in err
        assert "- at `$.cron`" in err

        code, out, err = await corral(nats_url, prefix, "add", "x", "echo", "--every", "5", "--payload", "{")
        assert code == 2
        assert "--payload is not valid JSON" in err

        code, out, err = await corral(nats_url, prefix, "remove", "nightly")
        assert code == 1
        assert "CONFLICT" in err

        code, out, err = await corral(nats_url, prefix, "remove", "cleanup")
        assert (code, out.strip()) == (0, "removed cleanup"), err
        code, out, err = await corral(nats_url, prefix, "remove", "cleanup")
        assert code == 1
        assert "NOT_FOUND" in err
