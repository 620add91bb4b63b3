"""corral.runtime.stall: a blocked event loop is reported while it is blocked, with the line it
is stuck at, then once more when it runs again; a loop that keeps running is never reported."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from corral.runtime.stall import StallWatch


def block_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # what a handler doing CPU-bound or blocking work looks like


async def test_a_blocked_loop_is_reported_with_its_stack_then_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stalls: list[float] = []
    watch = StallWatch("module demo", 0.1, on_stall=stalls.append)
    watch.start()
    try:
        with caplog.at_level(logging.WARNING, logger="corral.runtime"):
            block_the_loop(0.6)
            await asyncio.sleep(0.1)  # the loop runs again
        warnings = [r for r in caplog.records if r.name == "corral.runtime"]
        blocked, resumed = warnings  # one warning per stall, however long it lasts
        text = blocked.getMessage()
        assert text.startswith("module demo: the event loop is blocked (")
        assert "await asyncio.to_thread(...)" in text
        assert "in block_the_loop\n    time.sleep(seconds)" in text  # the line it is stuck at
        assert "test_a_blocked_loop_is_reported" in text  # and what called it
        assert blocked.blocked_seconds > 0.1  # type: ignore[attr-defined]
        assert resumed.getMessage().startswith(
            "module demo: the event loop ran again after being blocked for "
        )
        assert watch.stalls == 1
        (seconds,) = stalls
        assert 0.4 < seconds < 5
    finally:
        watch.stop()


async def test_a_loop_that_keeps_running_is_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    watch = StallWatch("module busy", 0.5)
    watch.start()
    try:
        with caplog.at_level(logging.WARNING, logger="corral.runtime"):
            deadline = time.monotonic() + 0.6
            while time.monotonic() < deadline:  # busy, but yielding every few milliseconds
                block_the_loop(0.005)
                await asyncio.sleep(0)
    finally:
        watch.stop()
    assert not [r for r in caplog.records if r.name == "corral.runtime"]
    assert watch.stalls == 0


async def test_two_stalls_are_two_reports() -> None:
    watch = StallWatch("module twice", 0.05)
    watch.start()
    try:
        for _ in range(2):
            block_the_loop(0.5)
            await asyncio.sleep(0.1)
    finally:
        watch.stop()
    assert watch.stalls == 2
