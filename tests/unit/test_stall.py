"""corral.runtime.stall: a heartbeat held up by a blocked event loop is reported while the loop
is blocked, with the line it is stuck at, then once more when it runs again; a loop that keeps
running is never reported."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import pytest

from corral.runtime.stall import StallWatch

INTERVAL = 0.05  # the fake heartbeat's


def block_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # what a handler doing CPU-bound or blocking work looks like


@contextlib.asynccontextmanager
async def heartbeating(watch: StallWatch) -> AsyncIterator[None]:
    """A heartbeat loop as the runtime's: tell the watch when the next beat is due, sleep."""

    async def beats() -> None:
        while True:
            watch.beat(time.monotonic() + INTERVAL)
            await asyncio.sleep(INTERVAL)

    task = asyncio.create_task(beats())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        watch.stop()


def warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "corral.runtime" and r.levelno >= logging.WARNING]


async def test_a_blocked_loop_is_reported_with_its_stack_then_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stalls: list[float] = []
    watch = StallWatch("module demo", 0.1, on_stall=stalls.append)
    with caplog.at_level(logging.WARNING, logger="corral.runtime"):
        async with heartbeating(watch):
            await asyncio.sleep(0.1)
            block_the_loop(0.6)
            await asyncio.sleep(0.2)  # the loop runs again: the late beat comes
    blocked, resumed = warnings(caplog)  # one warning per stall, however long it lasts
    text = blocked.getMessage()
    assert text.startswith("module demo: the event loop is blocked (at least ")
    assert "await asyncio.to_thread(...)" in text
    assert "in block_the_loop\n    time.sleep(seconds)" in text  # the line it is stuck at
    assert "test_a_blocked_loop_is_reported" in text  # and what called it
    assert blocked.blocked_seconds >= 0.1  # type: ignore[attr-defined]
    assert resumed.getMessage().startswith(
        "module demo: the event loop ran again; it had been blocked for at least "
    )
    assert watch.stalls == 1
    (late,) = stalls
    assert 0.3 < late < 5  # the beat was due within INTERVAL of the block's start


async def test_a_loop_that_keeps_running_is_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    watch = StallWatch("module busy", 0.5)
    with caplog.at_level(logging.WARNING, logger="corral.runtime"):
        async with heartbeating(watch):
            deadline = time.monotonic() + 0.6
            while time.monotonic() < deadline:  # busy, but yielding every few milliseconds
                block_the_loop(0.005)
                await asyncio.sleep(0)
    assert warnings(caplog) == []
    assert watch.stalls == 0


async def test_two_stalls_are_two_reports() -> None:
    watch = StallWatch("module twice", 0.05)
    async with heartbeating(watch):
        for _ in range(2):
            await asyncio.sleep(0.1)
            block_the_loop(0.5)
        await asyncio.sleep(0.2)
    assert watch.stalls == 2


async def test_without_beats_nothing_is_watched() -> None:
    watch = StallWatch("module quiet", 0.05)
    block_the_loop(0.2)  # no heartbeat loop (turned off): no thread, no report
    watch.stop()
    assert watch.stalls == 0
