"""Bulkhead: a bounded number of calls in flight, a bounded priority queue, timeouts and
cancellation that never leak a slot or a queue place."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from corral.errors import CallTimeoutError, OverloadedError
from corral.orchestrator.bulkhead import Bulkhead
from corral.policy import BulkheadConfig


def bulkhead(max_concurrent: int = 1, max_queue: int = 10) -> Bulkhead:
    return Bulkhead("m", BulkheadConfig(max_concurrent=max_concurrent, max_queue=max_queue))


async def settle(rounds: int = 5) -> None:
    """Let every runnable task run until it blocks."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool], rounds: int = 50) -> None:
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


class Holder:
    """A task that takes a slot and keeps it until told to leave."""

    def __init__(self, bh: Bulkhead, name: str, priority: int = 2, timeout: float = 5.0) -> None:
        self.name = name
        self.entered = asyncio.Event()
        self.leave = asyncio.Event()
        self.ran = False
        self.task = asyncio.create_task(self._run(bh, priority, timeout), name=name)

    async def _run(self, bh: Bulkhead, priority: int, timeout: float) -> None:
        async with bh.slot(priority, timeout):
            self.ran = True
            self.entered.set()
            await self.leave.wait()

    async def release(self) -> None:
        self.leave.set()
        await self.task


async def test_fast_path_counts_in_flight() -> None:
    bh = bulkhead(max_concurrent=2)
    async with bh.slot(2, 1.0):
        assert bh.in_flight == 1
        async with bh.slot(2, 1.0):
            assert (bh.in_flight, bh.queued) == (2, 0)
        assert bh.in_flight == 1
    assert (bh.in_flight, bh.queued) == (0, 0)


async def test_body_exception_frees_the_slot() -> None:
    bh = bulkhead()
    with pytest.raises(KeyError):
        async with bh.slot(2, 1.0):
            raise KeyError("handler failed")
    assert bh.in_flight == 0


@pytest.mark.parametrize("max_concurrent", [1, 2])
async def test_priorities_served_in_order_fifo_within_a_level(max_concurrent: int) -> None:
    bh = bulkhead(max_concurrent=max_concurrent)
    entered: list[str] = []
    holders = [Holder(bh, f"holder{i}") for i in range(max_concurrent)]
    await settle()
    assert bh.in_flight == max_concurrent

    waiters: dict[str, Holder] = {}
    for name, priority in [("4", 4), ("0a", 0), ("2", 2), ("0b", 0), ("1", 1)]:
        waiters[name] = Holder(bh, name, priority)
        await settle()  # queued in this order
    assert bh.queued == 5
    for w in waiters.values():
        w.entered.clear()

    inside = list(holders)
    while inside:
        leaving = inside.pop(0)
        await leaving.release()
        await settle()
        for name, w in waiters.items():
            if w.entered.is_set() and name not in entered:
                entered.append(name)
                inside.append(w)
        assert bh.in_flight == len(inside)
    assert entered == ["0a", "0b", "1", "2", "4"]
    assert (bh.in_flight, bh.queued) == (0, 0)


async def test_full_queue_raises_overloaded_at_once() -> None:
    bh = bulkhead(max_concurrent=1, max_queue=2)
    holder = Holder(bh, "holder")
    waiters = [Holder(bh, f"w{i}") for i in range(2)]
    await settle()
    assert (bh.in_flight, bh.queued) == (1, 2)
    with pytest.raises(OverloadedError) as info:
        async with bh.slot(0, 5.0):
            pytest.fail("admitted past a full queue")
    assert str(info.value) == (
        "module 'm' has 1 calls in flight and 2 queued (max_concurrent 1, max_queue 2); back off"
    )
    assert info.value.code.value == "OVERLOADED"
    assert (bh.in_flight, bh.queued) == (1, 2)
    await holder.release()
    for w in waiters:
        await w.release()
    assert (bh.in_flight, bh.queued) == (0, 0)


async def test_no_queue_means_overloaded_when_busy() -> None:
    bh = bulkhead(max_concurrent=1, max_queue=0)
    holder = Holder(bh, "holder")
    await settle()
    with pytest.raises(OverloadedError, match="max_queue 0"):
        async with bh.slot(0, 5.0):
            pass
    await holder.release()
    async with bh.slot(0, 5.0):
        assert bh.in_flight == 1


async def test_timeout_while_waiting_frees_the_queue_place() -> None:
    bh = bulkhead(max_concurrent=1, max_queue=1)
    holder = Holder(bh, "holder")
    await settle()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(CallTimeoutError) as info:
        async with bh.slot(0, 0.05):
            pytest.fail("admitted while the slot was held")
    assert loop.time() - started >= 0.05
    assert str(info.value) == "module 'm': no free call slot within 0.05s (1 in flight, max_concurrent 1)"
    assert isinstance(info.value, asyncio.TimeoutError)
    assert (bh.in_flight, bh.queued) == (1, 0)
    late = Holder(bh, "late")  # the freed place can be taken (max_queue 1)
    await settle()
    assert bh.queued == 1
    await holder.release()  # the dead entry is skipped: the slot goes to `late`
    await late.entered.wait()
    assert bh.in_flight == 1
    await late.release()
    assert (bh.in_flight, bh.queued) == (0, 0)


async def test_cancelled_waiter_frees_its_place() -> None:
    bh = bulkhead(max_concurrent=1, max_queue=1)
    holder = Holder(bh, "holder")
    waiter = Holder(bh, "waiter")
    await settle()
    assert bh.queued == 1
    waiter.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter.task
    assert (bh.in_flight, bh.queued) == (1, 0)
    again = Holder(bh, "again")  # the place is free again
    await settle()
    assert bh.queued == 1
    await holder.release()
    await again.entered.wait()
    await again.release()
    assert not waiter.ran
    assert (bh.in_flight, bh.queued) == (0, 0)


async def test_cancelled_waiters_leave_the_slot_unused() -> None:
    bh = bulkhead(max_concurrent=1)
    holder = Holder(bh, "holder")
    waiters = [Holder(bh, f"w{i}", priority=i % 5) for i in range(4)]
    await settle()
    for w in waiters:
        w.task.cancel()
    await asyncio.gather(*(w.task for w in waiters), return_exceptions=True)
    await holder.release()
    assert (bh.in_flight, bh.queued) == (0, 0)
    async with bh.slot(0, 1.0):  # fast path again
        assert bh.in_flight == 1


async def test_waiter_cancelled_as_it_is_handed_the_slot() -> None:
    bh = bulkhead(max_concurrent=1)
    async with bh.slot(0, 1.0):
        waiter = Holder(bh, "waiter")
        await settle()
        assert bh.queued == 1
    # The slot was just handed to `waiter` (in_flight unchanged); it has not run yet.
    assert (bh.in_flight, bh.queued) == (1, 0)
    waiter.task.cancel()
    await settle()
    assert waiter.task.cancelled()  # the cancellation was not swallowed ...
    assert not waiter.ran  # ... so the cancelled caller did not go on to make its call
    assert (bh.in_flight, bh.queued) == (0, 0)


async def test_waiter_cancelled_as_it_is_handed_the_slot_passes_it_on() -> None:
    bh = bulkhead(max_concurrent=1)
    async with bh.slot(0, 1.0):
        first = Holder(bh, "first", priority=0)
        second = Holder(bh, "second", priority=1)
        await settle()
        assert bh.queued == 2
    first.task.cancel()
    await settle()
    assert second.entered.is_set()
    assert first.task.cancelled()
    assert not first.ran
    assert (bh.in_flight, bh.queued) == (1, 0)
    await second.release()
    assert (bh.in_flight, bh.queued) == (0, 0)


async def test_cancellation_wins_over_a_deadline_that_fires_with_it() -> None:
    bh = bulkhead(max_concurrent=1)
    holder = Holder(bh, "holder")
    await settle()
    waiter = Holder(bh, "waiter", timeout=0.01)
    await settle()
    (_, _, queued_future), *_ = bh._waiters
    # Cancel the caller in the very step the deadline takes it out of the queue.
    queued_future.add_done_callback(lambda _: waiter.task.cancel())
    await asyncio.sleep(0.02)
    assert waiter.task.cancelled()  # a CancelledError, not CallTimeoutError: cancellation wins
    assert (bh.in_flight, bh.queued) == (1, 0)
    await holder.release()
    assert (bh.in_flight, bh.queued) == (0, 0)


async def test_slot_handed_over_before_the_deadline_fires_is_kept() -> None:
    bh = bulkhead(max_concurrent=1)
    async with bh.slot(0, 1.0):
        waiter = Holder(bh, "waiter", timeout=0.0)  # its deadline fires on the next loop pass
        await asyncio.sleep(0)  # the waiter queues; then we leave and hand it the slot
    await waiter.entered.wait()
    assert (bh.in_flight, bh.queued) == (1, 0)
    await waiter.release()
    assert (bh.in_flight, bh.queued) == (0, 0)


async def test_zero_timeout_times_out_at_once_when_busy() -> None:
    bh = bulkhead(max_concurrent=1)
    holder = Holder(bh, "holder")
    await settle()
    with pytest.raises(CallTimeoutError, match="within 0s"):
        async with bh.slot(0, 0.0):
            pass
    assert bh.queued == 0
    await holder.release()
    assert bh.in_flight == 0


@pytest.mark.parametrize("seed", range(5))
async def test_storm_never_exceeds_max_concurrent_and_leaks_nothing(seed: int) -> None:
    rng = random.Random(seed)
    max_concurrent = rng.choice([1, 3, 8])
    bh = bulkhead(max_concurrent=max_concurrent, max_queue=rng.choice([20, 60, 200]))
    inside = 0
    peak = 0
    outcomes: dict[str, int] = {"ok": 0, "timeout": 0, "overloaded": 0, "cancelled": 0}

    async def call(priority: int, timeout: float, duration: float) -> None:
        nonlocal inside, peak
        try:
            async with bh.slot(priority, timeout):
                inside += 1
                peak = max(peak, inside)
                assert inside <= bh.in_flight <= max_concurrent
                try:
                    await asyncio.sleep(duration)
                finally:
                    inside -= 1
        except CallTimeoutError:
            outcomes["timeout"] += 1
        except OverloadedError:
            outcomes["overloaded"] += 1
        else:
            outcomes["ok"] += 1

    tasks: list[asyncio.Task[None]] = []
    for _ in range(200):
        timeout = rng.choice([0.0005, 0.002, 0.01, 1.0, 1.0, 1.0])
        tasks.append(asyncio.create_task(call(rng.randrange(5), timeout, rng.choice([0, 0, 0.0005, 0.002]))))
        if rng.random() < 0.3:
            await asyncio.sleep(rng.choice([0, 0.0005]))
        if rng.random() < 0.1:
            rng.choice(tasks).cancel()
        assert bh.in_flight <= max_concurrent
        assert bh.queued <= bh.config.max_queue
    results = await asyncio.gather(*tasks, return_exceptions=True)
    outcomes["cancelled"] = sum(isinstance(r, asyncio.CancelledError) for r in results)
    assert [r for r in results if r is not None and not isinstance(r, asyncio.CancelledError)] == []
    assert peak <= max_concurrent
    assert (bh.in_flight, bh.queued, inside) == (0, 0, 0)
    assert sum(outcomes.values()) == 200
    assert outcomes["ok"] > 0
    async with bh.slot(0, 1.0):  # and it still works
        assert bh.in_flight == 1
