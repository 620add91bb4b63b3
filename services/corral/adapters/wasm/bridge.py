"""WasmBridge: typed arrays and strings in and out of one WebAssembly instance.

The bridge allocates in guest memory through the module's own allocator exports, copies data
in, calls with (ptr, len) pairs, reads the result back and frees what it allocated, also when
the call traps. It tracks live allocations and frees the rest on `close()`. The adapter uses
it for every `compute` request; a Python SDK module can host WASM itself with it:

    store = wasmtime.Store(engine)
    instance = wasmtime.Instance(store, module, [])
    with WasmBridge(store, instance, name="physics") as bridge:
        out = bridge.call_with_arrays(
            "integrate", [TypedArray("f64", [1.0, 2.0, 3.0])], result=ResultSpec(type="f64")
        )
        out.result  # [0.0, 1.5, 4.0]

Errors are corral errors: a bad argument is a ValidationError, a trap a ModuleError (or a
CallTimeoutError when the guest ran past its budget), so a handler can let them propagate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple

import wasmtime

from corral.adapters.wasm.abi import (
    CallPlan,
    Element,
    Signature,
    decode_elements,
    element,
    encode_elements,
    plan_call,
    scalar_param,
)
from corral.adapters.wasm.errors import GuestOutOfMemory, describe_memory, trap_error
from corral.adapters.wasm.messages import ResultSpec, TypedArray
from corral.adapters.wasm.sandbox import WasmSandbox
from corral.errors import ModuleError, NotFoundError, ValidationError

__all__ = ["ALLOCATORS", "Allocation", "CallResult", "WasmBridge"]

log = logging.getLogger("corral.adapters.wasm")

Number = int | float
# (malloc, free) export pairs, in the order they are looked for: wasm-pack, Emscripten, plain.
ALLOCATORS = (("__wbindgen_malloc", "__wbindgen_free"), ("malloc", "free"), ("alloc", "dealloc"))


@dataclass(frozen=True, slots=True)
class Allocation:
    """A buffer the bridge owns in guest memory: `length` elements of `type`, `size` bytes."""

    ptr: int
    length: int
    type: str
    size: int
    align: int


class CallResult(NamedTuple):
    returns: list[Number]  # what the export returned, minus a returned (ptr, len)
    result: list[Number] | str | None  # the buffer read back, when one was asked for


@dataclass(frozen=True, slots=True)
class _Allocator:
    """The module's allocator exports and how many parameters each takes."""

    malloc: wasmtime.Func
    free: wasmtime.Func
    malloc_arity: int  # 1: (size), 2: (size, align)
    free_arity: int  # 1: (ptr), 2: (ptr, size), 3: (ptr, size, align)
    names: str


def _signature(store: wasmtime.Store, func: wasmtime.Func) -> Signature:
    ty = func.type(store)
    return Signature(tuple(str(p) for p in ty.params), tuple(str(r) for r in ty.results))


def _as_list(value: Any) -> list[Number]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _i32(value: int) -> int:
    """Unsigned address -> the signed i32 wasmtime expects."""
    return value - 2**32 if value >= 2**31 else value


class WasmBridge:
    """Host side of the array/string ABI for one instance. Not thread-safe: one caller at a time."""

    def __init__(
        self,
        store: wasmtime.Store,
        instance: wasmtime.Instance,
        *,
        name: str = "wasm",
        sandbox: WasmSandbox | None = None,
        before_cleanup: Callable[[], None] | None = None,
    ) -> None:
        """`before_cleanup` runs before the frees that end a call: give them a budget of their own,
        so a call stopped at (or finishing near) its deadline still gets its buffers freed."""
        self.store = store
        self.name = name
        self.sandbox = sandbox
        self.poisoned = False  # a free failed: the guest allocator may be corrupt, replace the instance
        self._before_cleanup = before_cleanup
        self._exports = instance.exports(store)
        self._live: dict[int, Allocation] = {}
        self._signatures: dict[str, tuple[wasmtime.Func, Signature]] = {}
        memory = self._exports.get("memory")
        self._memory = memory if isinstance(memory, wasmtime.Memory) else None
        self._allocator, self._allocator_problem = self._find_allocator()

    # --- what authors call -----------------------------------------------------------------------
    @property
    def live(self) -> dict[int, Allocation]:
        """Allocations made through this bridge and not freed yet, by pointer."""
        return dict(self._live)

    @property
    def allocator(self) -> str | None:
        """The allocator exports in use ("malloc/free"), or None when the module has none usable."""
        return self._allocator.names if self._allocator else None

    def functions(self) -> dict[str, Signature]:
        """Every exported function with its signature."""
        return {
            name: _signature(self.store, item)
            for name, item in self._exports.items()
            if isinstance(item, wasmtime.Func)
        }

    def allocate(self, array: TypedArray, *, where: str = "array") -> Allocation:
        """Allocate guest memory for `array` and copy it in. Free it with `free(ptr)` or `close()`."""
        kind = element(array.type, f"{where}.type")
        data = encode_elements(kind, array.data, where)
        memory = self._memory_or_raise()
        allocation = self._reserve(kind, len(data) // kind.size, what=where)
        if data:
            memory.write(self.store, data, allocation.ptr)  # in bounds: _reserve checked
        return allocation

    def read_buffer(self, ptr: int, length: int, type: str) -> list[Number] | str:
        """Read `length` elements of `type` at `ptr` (bytes for utf8); bounds-checked."""
        kind = element(type, "type")
        return decode_elements(kind, self._read(ptr, length * kind.size), f"{self.name} buffer at {ptr}")

    def free(self, ptr: int) -> None:
        """Free an allocation of this bridge through the module's free export."""
        allocation = self._live.pop(ptr, None)
        if allocation is None:
            raise ValueError(f"{ptr} is not a live allocation of this bridge (live: {sorted(self._live)})")
        if allocation.size:
            try:
                self._free(allocation)
            except Exception:
                self.poisoned = True  # the guest allocator may be corrupt: replace the instance
                raise

    def call(self, function: str, *args: Number) -> list[Number]:
        """Call an export with scalar arguments; returns its results as a list."""
        return self.call_with_arrays(function, (), args).returns

    def call_with_arrays(
        self,
        function: str,
        arrays: Sequence[TypedArray],
        args: Sequence[Number] = (),
        result: ResultSpec | None = None,
    ) -> CallResult:
        """Copy `arrays` in, call `function(ptr0, len0, ..., [out_ptr, out_len], *args)`, read back.

        Everything allocated for the call is freed before returning, also when the call fails.
        """
        func, sig = self.lookup(function)
        site = f"{self.name}.{function}"
        plan = plan_call(
            site, sig, len(arrays), len(args), result.at if result else None,
            result.length if result else None, result.index if result else 0,
        )  # fmt: skip
        scalars = [
            scalar_param(
                sig.params[plan.pointer_params + i], value, f"argument {i} of {site}", f"$.args[{i}]"
            )
            for i, value in enumerate(args)
        ]
        before = set(self._live)
        try:
            value = self._run(func, site, plan, arrays, scalars, result)
        except BaseException:
            self._release(self._since(before), after_failure=True)
            raise
        self._release(self._since(before), after_failure=False)
        return value

    def _since(self, before: set[int]) -> list[Allocation]:
        return [a for ptr, a in self._live.items() if ptr not in before]

    def lookup(self, function: str) -> tuple[wasmtime.Func, Signature]:
        """The export `function` and its signature; NotFoundError listing the exports otherwise."""
        found = self._signatures.get(function)
        if found is None:
            item = self._exports.get(function)
            if not isinstance(item, wasmtime.Func):
                raise NotFoundError(self._not_a_function(function, item))
            found = (item, _signature(self.store, item))
            self._signatures[function] = found
        return found

    def close(self) -> None:
        """Free every live allocation; safe to call twice."""
        self._release(list(self._live.values()), after_failure=False)

    def __enter__(self) -> WasmBridge:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- one call ----------------------------------------------------------------------------------
    def _run(
        self,
        func: wasmtime.Func,
        site: str,
        plan: CallPlan,
        arrays: Sequence[TypedArray],
        scalars: list[Number],
        spec: ResultSpec | None,
    ) -> CallResult:
        owned: list[Allocation] = []  # inputs, then the output buffer
        params: list[Number] = []
        for i, array in enumerate(arrays):
            owned.append(self.allocate(array, where=f"$.arrays[{i}]"))
            params += [_i32(owned[-1].ptr), owned[-1].length]
        if plan.at == "out" and spec is not None:
            kind = element(spec.type, "$.result.type")
            owned.append(self._reserve(kind, spec.length or 0, what=f"the output buffer of {site}"))
            params += [_i32(owned[-1].ptr), owned[-1].length]
        source = self._result_source(site, plan.at, spec, owned) if spec else None
        returns = self.enter(func, site, *params, *scalars)
        if spec is None or plan.at is None:
            return CallResult(returns, None)
        if source is None:  # "return": the guest allocated the buffer; the host frees it after reading
            ptr = int(returns[0]) & 0xFFFFFFFF
            length = int(returns[1]) & 0xFFFFFFFF if len(returns) == 2 else spec.length or 0
            source, returns = self._adopt(ptr, length, element(spec.type, "$.result.type")), []
        return CallResult(returns, self.read_buffer(source.ptr, source.length, spec.type))

    def _result_source(
        self, site: str, at: str | None, spec: ResultSpec, owned: list[Allocation]
    ) -> Allocation | None:
        """The host buffer to read the result from ("out", "in_place"), checked before the call."""
        if at == "out":
            return owned[-1]
        if at != "in_place":
            return None
        array = owned[spec.index]
        kind = element(spec.type, "$.result.type")
        length = array.size // kind.size if spec.length is None else spec.length
        if length * kind.size > array.size:
            raise ValidationError(
                f"the result of {site} cannot be {length} {kind.name} elements: array {spec.index} "
                f"holds {array.size} bytes - at `$.result.length`"
            )
        return Allocation(array.ptr, length, kind.name, array.size, array.align)

    def enter(self, func: wasmtime.Func, site: str, *params: Number) -> list[Number]:
        """Call into the guest; a trap or wasmtime error becomes a corral error naming `site`."""
        try:
            return _as_list(func(self.store, *params))
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise trap_error(exc, site, self.sandbox, self.memory_size()) from exc

    # --- memory and the allocator ---------------------------------------------------------------
    def _reserve(self, kind: Element, length: int, *, what: str) -> Allocation:
        size = length * kind.size
        if size == 0:
            # Nothing to allocate; pass an aligned, never-dereferenced pointer (Rust's dangling).
            return Allocation(kind.size, 0, kind.name, 0, kind.size)
        allocator = self._allocator_or_raise()
        args = (size, kind.size)[: allocator.malloc_arity]
        ptr = int(self.enter(allocator.malloc, f"{self.name}.{allocator.names.split('/')[0]}", *args)[0])
        ptr &= 0xFFFFFFFF
        if ptr == 0:
            raise GuestOutOfMemory(
                f"{self.name} could not allocate {size} bytes for {what}: its "
                f"{describe_memory(self.memory_size(), self.sandbox)}; send less data or raise memory_mb"
            )
        allocation = Allocation(ptr, length, kind.name, size, kind.size)
        self._live[ptr] = allocation
        try:
            self._check_bounds(ptr, size, f"the allocator ({allocator.names}) returned a buffer that")
        except ModuleError:
            self.poisoned = True  # an allocator handing out such pointers cannot be trusted to free
            del self._live[ptr]
            raise
        return allocation

    def _adopt(self, ptr: int, length: int, kind: Element) -> Allocation:
        allocation = Allocation(ptr, length, kind.name, length * kind.size, kind.size)
        if allocation.size:
            self._live[ptr] = allocation
        return allocation

    def _free(self, allocation: Allocation) -> None:
        allocator = self._allocator_or_raise()
        args = (_i32(allocation.ptr), allocation.size, allocation.align)[: allocator.free_arity]
        self.enter(allocator.free, f"{self.name}.{allocator.names.split('/')[1]}", *args)

    def _release(self, allocations: list[Allocation], *, after_failure: bool) -> None:
        """Free `allocations`. After a failed call a failing free only marks the bridge poisoned,
        so the caller sees the original error; otherwise it raises."""
        pending = [a for a in allocations if a.size and self._live.get(a.ptr) is a]
        if not pending:
            return
        if self._before_cleanup is not None:
            self._before_cleanup()
        for allocation in pending:
            try:
                self.free(allocation.ptr)
            except Exception as exc:
                log.warning("%s: freeing %s failed: %s", self.name, allocation, exc)
                if not after_failure:
                    raise ModuleError(
                        f"{self.name}: freeing a {allocation.size}-byte buffer failed: {exc}"
                    ) from exc

    def _read(self, ptr: int, size: int) -> bytes:
        ptr &= 0xFFFFFFFF
        if size == 0:
            return b""
        self._check_bounds(ptr, size, "the buffer")
        return bytes(self._memory_or_raise().read(self.store, ptr, ptr + size))

    def _check_bounds(self, ptr: int, size: int, what: str) -> None:
        end = self.memory_size()
        if ptr + size > end:
            raise ModuleError(
                f"{self.name}: {what} at [{ptr}, {ptr + size}) lies outside guest memory of {end} bytes"
            )

    def memory_size(self) -> int:
        """Bytes of guest linear memory (0 when the module exports none)."""
        return self._memory.data_len(self.store) if self._memory is not None else 0

    def _memory_or_raise(self) -> wasmtime.Memory:
        if self._memory is None:
            raise ModuleError(f"{self.name} exports no memory named 'memory', which arrays and strings need")
        return self._memory

    def _allocator_or_raise(self) -> _Allocator:
        if self._allocator is None:
            raise ModuleError(self._allocator_problem)
        return self._allocator

    def _find_allocator(self) -> tuple[_Allocator | None, str]:
        for malloc_name, free_name in ALLOCATORS:
            malloc, free = self._exports.get(malloc_name), self._exports.get(free_name)
            if isinstance(malloc, wasmtime.Func) and isinstance(free, wasmtime.Func):
                return self._check_allocator(malloc_name, malloc, free_name, free)
        names = ", ".join(f"{m}/{f}" for m, f in ALLOCATORS)
        return None, f"{self.name} exports no allocator, which arrays and strings need: export one of {names}"

    def _check_allocator(
        self, malloc_name: str, malloc: wasmtime.Func, free_name: str, free: wasmtime.Func
    ) -> tuple[_Allocator | None, str]:
        m, f = _signature(self.store, malloc), _signature(self.store, free)
        names = f"{malloc_name}/{free_name}"
        if m.results != ("i32",) or m.params not in (("i32",), ("i32", "i32")):
            return None, f"{self.name}.{malloc_name}{m} is not (size[, align]: i32) -> ptr: i32"
        if f.results or not 1 <= len(f.params) <= 3 or set(f.params) != {"i32"}:
            return None, f"{self.name}.{free_name}{f} is not (ptr[, size[, align]]: i32) -> ()"
        return _Allocator(malloc, free, len(m.params), len(f.params), names), ""

    def _not_a_function(self, function: str, item: object) -> str:
        listing = ", ".join(f"{name}{sig}" for name, sig in sorted(self.functions().items()))
        if item is None:
            return f"{self.name} has no export {function!r}; its functions are: {listing}"
        kind = type(item).__name__.lower()
        return f"{self.name} export {function!r} is a {kind}, not a function; its functions are: {listing}"
