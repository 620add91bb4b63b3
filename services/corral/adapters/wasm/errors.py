"""What goes wrong inside a guest, as corral errors that say what, where and what to do.

A runaway call is a CallTimeoutError (TIMEOUT on the wire); any other trap, a failed allocation
or an ABI mismatch is a ModuleError (MODULE_ERROR). Bad requests are corral ValidationErrors,
raised where they are found.
"""

from __future__ import annotations

import wasmtime

from corral.adapters.wasm.sandbox import MIB, WasmSandbox
from corral.errors import CallTimeoutError, ModuleError

__all__ = ["GuestBudgetExceeded", "GuestOutOfMemory", "GuestTrap", "describe_memory", "trap_error"]

# A trap with memory this close to the cap most likely followed a refused memory.grow.
NEAR_CAP = 0.75
# How programs fail when an allocation fails: they abort (unreachable) or use the null pointer.
_ABORTS = (wasmtime.TrapCode.UNREACHABLE, wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS, None)


class GuestTrap(ModuleError):
    """The guest trapped: unreachable, out-of-bounds access, division by zero, stack overflow..."""

    def __init__(self, message: str, trap_code: wasmtime.TrapCode | None = None) -> None:
        super().__init__(message)
        self.trap_code = trap_code


class GuestBudgetExceeded(CallTimeoutError):
    """The guest ran past its CPU budget (epoch deadline or fuel) and was stopped."""


class GuestOutOfMemory(ModuleError):
    """The guest allocator could not allocate a buffer: the memory cap, or the module's own maximum."""


def describe_memory(used: int, sandbox: WasmSandbox | None) -> str:
    if sandbox is None:
        return f"linear memory is {used / MIB:.1f} MiB"
    return f"linear memory is {used / MIB:.1f} MiB of its {sandbox.memory_mb} MiB cap (memory_mb)"


def trap_error(
    exc: wasmtime.Trap | wasmtime.WasmtimeError, site: str, sandbox: WasmSandbox | None, memory_used: int
) -> ModuleError | CallTimeoutError:
    """Turn a wasmtime failure during `site` (`physics.integrate`) into the error the caller gets."""
    if not isinstance(exc, wasmtime.Trap):
        return ModuleError(f"{site} failed: {_reason(str(exc))}")
    code = exc.trap_code
    if code == wasmtime.TrapCode.INTERRUPT:
        budget = f" of {sandbox.timeout_ms} ms (timeout_ms)" if sandbox else ""
        return GuestBudgetExceeded(
            f"{site} ran past its CPU budget{budget} and was stopped; the module keeps serving. "
            "If the work is legitimate, raise timeout_ms in the module's sandbox"
        )
    if code == wasmtime.TrapCode.OUT_OF_FUEL:
        budget = f" of {sandbox.fuel} units (fuel)" if sandbox and sandbox.fuel else ""
        return GuestBudgetExceeded(
            f"{site} used up its fuel budget{budget} and was stopped; the module keeps serving. "
            "If the work is legitimate, raise fuel in the module's sandbox"
        )
    if code == wasmtime.TrapCode.STACK_OVERFLOW:
        limit = f" of {sandbox.max_stack_bytes} bytes (max_stack_bytes)" if sandbox else ""
        return GuestTrap(f"{site} overflowed its stack{limit}: unbounded recursion?", code)
    message = f"{site} trapped{_where(exc)}: {_reason(exc.message)}"
    if code in _ABORTS and sandbox is not None and memory_used >= NEAR_CAP * sandbox.memory_bytes:
        message += (
            f"; its {describe_memory(memory_used, sandbox)}, so a memory.grow refused at the cap "
            "is the likely cause: raise memory_mb or send less data"
        )
    return GuestTrap(message, code)


def _where(trap: wasmtime.Trap) -> str:
    frames = trap.frames
    name = frames[0].func_name if frames else None
    return f" in {name}" if name else ""


def _reason(message: str) -> str:
    """The cause line of a wasmtime message ("wasm trap: integer divide by zero"), not the backtrace."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if "Caused by:" in lines:
        lines = lines[lines.index("Caused by:") + 1 :]
    return "; ".join(lines[:2]) if lines else "no message"
