"""A pool of instances of one WebAssembly module, each on a worker thread of its own.

WASM calls are CPU-bound and block, so they never run on the event loop: a call takes an idle
instance, runs on that instance's thread, and gives the instance back. The module is compiled
once; each worker instantiates it. Reload compiles the file again and swaps versions without
losing a call: idle instances are replaced at once, busy ones when their call finishes, so a
call in flight finishes on the version it started on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from corral.adapters.wasm.messages import ComputeReply, ComputeRequest
from corral.adapters.wasm.program import WasmEngine, WasmInstance, WasmProgram
from corral.component import Component
from corral.errors import OverloadedError, UnavailableError

__all__ = ["InstancePool"]

log = logging.getLogger("corral.adapters.wasm")

T = TypeVar("T")
_Job = tuple[Callable[[], Any], "concurrent.futures.Future[Any]"]
# threading.stack_size() is process-wide: set it only around starting our own workers.
_STACK_SIZE_LOCK = threading.Lock()


class _Worker:
    """One thread running jobs in order. Its stack is sized for the sandbox's wasm stack limit."""

    def __init__(self, name: str, stack_bytes: int) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        with _STACK_SIZE_LOCK:
            previous = threading.stack_size(stack_bytes)
            try:
                self._thread.start()
            finally:
                threading.stack_size(previous)

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((fn, future))
        return asyncio.wrap_future(future)

    def stop(self) -> None:
        self._jobs.put(None)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)


@dataclass(eq=False)
class _Slot:
    index: int
    worker: _Worker
    instance: WasmInstance


class InstancePool(Component):
    """`sandbox.pool_size` instances of the current version of one module. Owns the engine.

    Use `async with InstancePool(program):`, then `await pool.compute(request)`.
    """

    def __init__(self, program: WasmProgram) -> None:
        self.program = program
        self.engine: WasmEngine = program.engine
        self._slots: list[_Slot] = []
        self._idle: asyncio.Queue[_Slot] = asyncio.Queue()
        self._waiting = 0
        self._reload_lock = asyncio.Lock()
        self._replacing: set[asyncio.Task[None]] = set()  # strong references: the loop keeps weak ones
        self._stopping = False

    @property
    def name(self) -> str:
        return self.program.name

    @property
    def busy(self) -> int:
        """Instances running a call (or being replaced) right now."""
        return len(self._slots) - self._idle.qsize()

    @property
    def waiting(self) -> int:
        """Calls waiting for an idle instance."""
        return self._waiting

    async def start(self) -> None:
        """Start the workers and instantiate the module once per worker."""
        sandbox = self.program.sandbox
        try:
            for index in range(sandbox.pool_size):
                worker = _Worker(f"wasm-{self.name}-{index}", sandbox.thread_stack_bytes)
                try:
                    instance = await worker.submit(self.program.instantiate)
                except BaseException:
                    worker.stop()
                    raise
                self._slots.append(_Slot(index, worker, instance))
                self._idle.put_nowait(self._slots[-1])
        except BaseException:
            await self.stop()
            raise

    async def compute(self, request: ComputeRequest) -> ComputeReply:
        """Run `request` on an idle instance, waiting for one if all are busy."""
        slot = await self._acquire()
        call = slot.worker.submit(partial(slot.instance.compute, request))
        call.add_done_callback(lambda _: self._after_call(slot))
        # Shielded: if the caller gives up, the call still runs to its end (its budget bounds
        # that) and only then is the instance given back.
        return await asyncio.shield(call)

    async def reload(self) -> WasmProgram:
        """Compile the file again and switch to it; the old version keeps serving if it fails."""
        async with self._reload_lock:
            current = self.program
            program = await asyncio.to_thread(
                WasmProgram.load, current.name, current.path, self.engine, current.version + 1
            )
            await asyncio.to_thread(program.instantiate)  # a version that cannot start never serves
            self.program = program
            idle = [self._idle.get_nowait() for _ in range(self._idle.qsize())]
            await asyncio.gather(*(self._replace(slot) for slot in idle))
            for slot in idle:
                self._idle.put_nowait(slot)
        log.info(
            "reloaded wasm module %s from %s (version %d)",
            program.name,
            program.path,
            program.version,
            extra={"sha256": program.sha256},
        )
        return program

    async def stop(self) -> None:
        """Stop the workers once their current call ends, and the engine's ticker. Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        for slot in self._slots:
            slot.worker.stop()
        for slot in self._slots:
            await asyncio.to_thread(slot.worker.join, 2 * self.program.sandbox.timeout_ms / 1000 + 1)
        await asyncio.to_thread(self.engine.close)

    # --- slots -----------------------------------------------------------------------------------
    async def _acquire(self) -> _Slot:
        if self._stopping:
            raise UnavailableError(
                f"wasm module {self.name} is shutting down; retry to reach another instance"
            )
        limit = self.program.sandbox.max_waiting
        if self._idle.empty() and self._waiting >= limit:
            raise OverloadedError(
                f"wasm module {self.name}: all {len(self._slots)} instances are busy and {self._waiting} "
                f"calls are waiting (max_waiting = {limit}); back off and retry, or raise pool_size"
            )
        self._waiting += 1
        try:
            return await self._idle.get()
        finally:
            self._waiting -= 1

    def _after_call(self, slot: _Slot) -> None:
        """Give the slot back, first replacing its instance if it is stale or damaged."""
        if slot.instance.program is self.program and not slot.instance.needs_replacing:
            self._idle.put_nowait(slot)
            return
        replaced = asyncio.ensure_future(self._replace(slot))
        self._replacing.add(replaced)
        replaced.add_done_callback(self._replacing.discard)
        replaced.add_done_callback(lambda _: self._idle.put_nowait(slot))

    async def _replace(self, slot: _Slot) -> None:
        """A new instance of the current version for `slot`, made on its own thread."""
        program = self.program
        try:
            slot.instance = await slot.worker.submit(program.instantiate)
        except Exception as exc:  # keep the old instance: it still serves
            log.error("could not instantiate %s version %d: %s", program.name, program.version, exc)
