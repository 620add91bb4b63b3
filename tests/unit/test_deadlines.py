"""corral.runtime.deadlines: many timeouts on one loop timer, never early, cancellable."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from corral.runtime.deadlines import Deadlines


async def until(done: Callable[[], bool], timeout: float = 2.0) -> None:
    """Wait for `done()`: a starved loop can wake the test before a re-armed timer has run."""
    async with asyncio.timeout(timeout):
        while not done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_deadlines_fire_once_in_order_never_early_and_cancelled_ones_never() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(resolution=0.01)
    fired: list[tuple[str, float]] = []
    start = loop.time()

    def note(name: str, due: float) -> None:
        fired.append((name, loop.time() - start - due))

    deadlines.add(0.05, lambda: note("b", 0.05))
    deadlines.add(0.02, lambda: note("a", 0.02))  # earlier than the armed bucket: re-arms
    cancelled = deadlines.add(0.03, lambda: note("never", 0.03))
    deadlines.add(0.05, lambda: note("c", 0.05))  # same bucket as "b"
    deadlines.cancel(cancelled)
    deadlines.cancel(cancelled)  # twice: still a no-op
    assert len(deadlines) == 3
    await asyncio.sleep(0.12)
    await until(lambda: len(fired) >= 3)
    assert [name for name, _ in fired] == ["a", "b", "c"]
    assert all(late >= 0 for _, late in fired)  # rounded up: never before the deadline
    assert len(deadlines) == 0


async def test_a_failing_callback_does_not_stop_the_others() -> None:
    deadlines = Deadlines(resolution=0.005)
    fired: list[int] = []

    def boom() -> None:
        raise RuntimeError("boom")

    deadlines.add(0.01, boom)
    deadlines.add(0.01, lambda: fired.append(1))
    deadlines.add(0.03, lambda: fired.append(2))
    await asyncio.sleep(0.08)
    await until(lambda: len(fired) >= 2)
    assert fired == [1, 2]
