"""The instance pool: parallel calls on worker threads, back-pressure, reload without losing calls."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from corral.adapters.wasm import (
    ComputeRequest,
    GuestBudgetExceeded,
    GuestTrap,
    InstancePool,
    WasmLoadError,
    WasmModuleSpec,
    WasmSandbox,
    open_pool,
)
from corral.errors import OverloadedError, UnavailableError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "wasm"
# slow_version's count-down: long enough that a reload (a tiny module: milliseconds) ends first.
SLOW = 400_000_000


def versioned(version: int) -> str:
    """A module answering `version() -> version`; slow_version(n) counts n down first."""
    return f"""(module
  (func (export "version") (result i32) (i32.const {version}))
  (func (export "slow_version") (param $n i64) (result i32)
    (block $done
      (loop $next
        (br_if $done (i64.eqz (local.get $n)))
        (local.set $n (i64.sub (local.get $n) (i64.const 1)))
        (br $next)))
    (i32.const {version})))
"""


@asynccontextmanager
async def pool_of(path: Path, **limits: Any) -> AsyncIterator[InstancePool]:
    pool = await open_pool(WasmModuleSpec(path.stem, path, WasmSandbox(**limits)))
    try:
        yield pool
    finally:
        await pool.stop()


def call(function: str, *args: int | float) -> ComputeRequest:
    return ComputeRequest(function=function, args=list(args))


async def eventually(probe: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not probe():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout}s")
        await asyncio.sleep(0.005)


async def test_calls_run_in_parallel_up_to_the_pool_size() -> None:
    async with pool_of(EXAMPLES / "hostile.wat", pool_size=2, timeout_ms=2000) as pool:
        calls = [asyncio.create_task(pool.compute(call("spin"))) for _ in range(3)]
        await eventually(lambda: pool.busy == 2 and pool.waiting == 1)
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, GuestBudgetExceeded) for r in results), results
        assert (pool.busy, pool.waiting) == (0, 0)
        assert (await pool.compute(call("divide", 8, 2))).returns == [4]


async def test_a_full_queue_is_overloaded_not_unbounded() -> None:
    async with pool_of(EXAMPLES / "hostile.wat", pool_size=1, max_waiting=0, timeout_ms=1000) as pool:
        running = asyncio.create_task(pool.compute(call("spin")))
        await eventually(lambda: pool.busy == 1)
        with pytest.raises(OverloadedError) as caught:
            await pool.compute(call("divide", 1, 1))
        assert caught.value.errors == [
            "wasm module hostile: all 1 instances are busy and 0 calls are waiting (max_waiting = 0); "
            "back off and retry, or raise pool_size"
        ]
        with pytest.raises(GuestBudgetExceeded):
            await running


async def test_a_caller_that_gives_up_does_not_lose_the_instance() -> None:
    async with pool_of(EXAMPLES / "hostile.wat", pool_size=1, timeout_ms=1000) as pool:
        abandoned = asyncio.create_task(pool.compute(call("spin")))
        await eventually(lambda: pool.busy == 1)
        abandoned.cancel()
        # The call runs to its budget on the worker; then the one instance serves again.
        assert (await pool.compute(call("divide", 9, 3))).returns == [3]


async def test_an_instance_that_hit_the_memory_cap_is_replaced() -> None:
    async with pool_of(EXAMPLES / "hostile.wat", pool_size=1, memory_mb=2) as pool:
        with pytest.raises(GuestTrap, match=r"memory\.grow refused at the cap"):
            await pool.compute(call("bomb"))
        assert (await pool.compute(call("pages"))).returns == [1]  # a fresh instance


async def test_a_trap_keeps_the_instance_unless_told_to_recycle() -> None:
    async with pool_of(EXAMPLES / "hostile.wat", pool_size=1) as pool:
        await pool.compute(ComputeRequest(function="malloc", args=[100]))  # leaks a block on purpose
        with pytest.raises(GuestTrap):
            await pool.compute(call("divide", 1, 0))
        assert (await pool.compute(call("live_allocations"))).returns == [1]  # same instance
    async with pool_of(EXAMPLES / "hostile.wat", pool_size=1, recycle_on_trap=True) as pool:
        await pool.compute(ComputeRequest(function="malloc", args=[100]))
        with pytest.raises(GuestTrap):
            await pool.compute(call("divide", 1, 0))
        assert (await pool.compute(call("live_allocations"))).returns == [0]  # a new one


async def test_reload_switches_versions_and_calls_in_flight_finish_on_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "versioned.wat"
    path.write_text(versioned(1))
    async with pool_of(path, pool_size=2, timeout_ms=30_000) as pool:
        in_flight = asyncio.create_task(pool.compute(call("slow_version", SLOW)))
        await eventually(lambda: pool.busy == 1)
        path.write_text(versioned(2))
        program = await pool.reload()
        assert (program.version, pool.program.version) == (2, 2)
        assert not in_flight.done(), "the slow call ended before the reload: raise SLOW"
        assert (await pool.compute(call("version"))).returns == [2]
        assert (await in_flight).returns == [1]  # started on version 1, finished on it
        # Once the old call is done its instance is replaced too: both now answer 2.
        both = await asyncio.gather(pool.compute(call("slow_version", 1000)), pool.compute(call("version")))
        assert [r.returns for r in both] == [[2], [2]]


async def test_a_broken_new_version_is_refused_and_the_old_one_serves_on(tmp_path: Path) -> None:
    path = tmp_path / "versioned.wat"
    path.write_text(versioned(1))
    async with pool_of(path, pool_size=1, memory_mb=1) as pool:
        path.write_text("(module (func (export")
        with pytest.raises(WasmLoadError, match=r"^cannot compile wasm module versioned from "):
            await pool.reload()
        path.write_text('(module (memory 100) (func (export "version") (result i32) (i32.const 3)))')
        with pytest.raises(WasmLoadError, match=r"^cannot instantiate wasm module versioned "):
            await pool.reload()
        assert pool.program.version == 1
        assert (await pool.compute(call("version"))).returns == [1]


async def test_reload_under_load_loses_no_call(tmp_path: Path) -> None:
    path = tmp_path / "versioned.wat"
    path.write_text(versioned(1))
    async with pool_of(path, pool_size=3) as pool:
        stop = asyncio.Event()
        seen: list[list[int]] = []

        async def caller() -> None:
            versions: list[int] = []
            seen.append(versions)
            while not stop.is_set():
                reply = await pool.compute(call("slow_version", 20_000))
                versions.append(int(reply.returns[0]))

        callers = [asyncio.create_task(caller()) for _ in range(8)]
        for version in range(2, 7):
            await asyncio.sleep(0.02)
            path.write_text(versioned(version))
            await pool.reload()
        # Every caller gets an answer from the last version before they stop.
        await eventually(lambda: all(v and v[-1] == 6 for v in seen))
        stop.set()
        await asyncio.gather(*callers)  # any lost or failed call would raise here
        for versions in seen:
            assert versions == sorted(versions), "a caller saw an older version after a newer one"
            assert versions[-1] == 6
        assert len({v for versions in seen for v in versions}) >= 2  # calls ran across reloads


async def test_a_stopped_pool_refuses_calls() -> None:
    pool = await open_pool(WasmModuleSpec("physics", EXAMPLES / "physics.wat"))
    await pool.stop()
    await pool.stop()  # idempotent
    with pytest.raises(UnavailableError, match=r"^wasm module physics is shutting down"):
        await pool.compute(call("step", 1.0, 0.1))


async def test_a_pool_that_cannot_start_leaves_no_thread_behind(tmp_path: Path) -> None:
    path = tmp_path / "big.wat"
    path.write_text("(module (memory 100))")
    with pytest.raises(WasmLoadError, match=r"^cannot instantiate wasm module big"):
        await open_pool(WasmModuleSpec("big", path, WasmSandbox(memory_mb=1, pool_size=2)))
    await eventually(lambda: not [t for t in threading.enumerate() if t.name.startswith("wasm-")])
