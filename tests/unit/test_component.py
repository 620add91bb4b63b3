"""cancel_and_wait: ends a task even when one cancellation is swallowed, and keeps its errors."""

from __future__ import annotations

import asyncio

import pytest

from corral.component import cancel_and_wait


async def test_a_task_that_swallows_one_cancellation_is_cancelled_again_and_ends() -> None:
    swallowed = 0

    async def loop() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # what asyncio.wait_for can do on Python 3.11 (gh-86296)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task), 5)
    assert task.cancelled()
    assert swallowed == 1


async def test_what_the_task_raised_reaches_the_caller() -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(broken())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="boom"):
        await cancel_and_wait(task)


async def test_a_finished_task_is_left_as_it_is() -> None:
    async def done() -> int:
        return 1

    task = asyncio.create_task(done())
    await task
    await cancel_and_wait(task)
    assert task.result() == 1
