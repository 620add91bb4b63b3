"""The WebAssembly adapter: WASM modules as corral modules, on wasmtime, in a sandbox.

One adapter process (`python -m corral.adapters.wasm`) hosts one or more modules. Each one
registers with the NATS Services API under its own name and answers
`<prefix>.mod.<module>.compute`; `<prefix>.modctl.<module>.reload` loads a new version of its
file without a restart. `.wasm` binaries and `.wat` text both load.

Calling convention (the ABI)
============================

A `compute` request names an exported function and what to pass it:

    {"function": "step", "args": [1.0, 0.5]}
    {"function": "integrate", "arrays": [{"type": "f64", "data": [1, 2, 3]}],
     "result": {"type": "f64", "length": 3}}

and is answered `{"returns": [...], "result": ...}`: `returns` holds the export's results,
`result` the buffer read back when the request has a `result`.

Scalars. `args` are the export's i32, i64, f32 and f64 parameters. Integers may be given
signed or unsigned (i32 takes -2**31..2**32-1) and reach the guest as two's complement;
integer results come back signed. Floats accept integers. Other parameter types (v128,
references) cannot be passed.

Arrays. Each entry of `arrays` is `{"type": T, "data": [...]}` with T one of i8, u8, i16, u16,
i32, u32, i64, u64, f32, f64 (little-endian, as WebAssembly memory is), or
`{"type": "utf8", "data": "text"}` for a string. The host allocates a buffer for each in guest
memory with the module's allocator, copies the data in, and passes it as two i32 parameters,
`(ptr, len)`, where `len` counts elements (bytes for utf8). An empty array is not allocated: it
is passed as `(align, 0)`, a pointer that must not be dereferenced, like Rust's dangling.

Parameter order: the input pairs in the order of `arrays`, then the output pair (if any), then
the scalar `args`:

    f(ptr0, len0, ptr1, len1, ..., [out_ptr, out_len], arg0, arg1, ...)

Results. `result = {"type": T, "length": n, "at": ..., "index": i}` says what to read back:

* `"out"`: the host allocates `length` elements and passes them as the output pair; it reads
  all `length` of them after the call.
* `"in_place"`: input array `index` (default 0) after the call; `length` defaults to its own.
* `"return"`: the export returns `(ptr: i32, len: i32)`, or only `ptr: i32` when `length` is
  given. The guest allocates that buffer with its own allocator; the host reads it and then
  frees it with the module's free.
* `"auto"` (the default): "out" when the export takes exactly one pair more than the inputs,
  else "return" when it returns (i32, i32), else "in_place" when there are arrays, else
  "return" when it returns one i32.

Every buffer the host allocated for a call is freed before the reply, also when the call
traps or runs out of budget; an allocation that fails (the allocator returns 0) is an error
naming the size and the memory cap.

Allocator exports. Looked for in this order, and called with as many of the arguments as
their signatures take:

* wasm-pack / wasm-bindgen: `__wbindgen_malloc(size, align) -> ptr`,
  `__wbindgen_free(ptr, size, align)`
* Emscripten: `malloc(size) -> ptr`, `free(ptr)`
* plain (Rust `#[no_mangle]` and friends): `alloc(size) -> ptr`, `dealloc(ptr, size)`

and the memory must be exported as `memory`. A module without them can still be called with
scalars. `examples/wasm/physics.wat` shows a complete allocator in WebAssembly text.

Sandbox
=======

`[modules.<name>.sandbox]` in corral.toml (see sandbox.py): a CPU budget per call (an epoch
deadline, `timeout_ms`, always; `fuel` optionally) after which the call stops with TIMEOUT and
the module keeps serving; a memory cap per instance (`memory_mb`: `memory.grow` past it fails);
a wasm stack limit; no WASI unless `[...sandbox.wasi]` is given, and then only the directories
and environment variables it names. `pool_size` instances serve calls in parallel, each on a
thread of its own.

Python modules that host WASM themselves use `WasmBridge` (bridge.py) for the same ABI.
"""

from corral.adapters.wasm.abi import ELEMENT_TYPES, Signature
from corral.adapters.wasm.bridge import ALLOCATORS, Allocation, CallResult, WasmBridge
from corral.adapters.wasm.errors import GuestBudgetExceeded, GuestOutOfMemory, GuestTrap
from corral.adapters.wasm.host import WasmModuleService, open_pool, serve_module
from corral.adapters.wasm.messages import ComputeReply, ComputeRequest, ReloadReply, ResultSpec, TypedArray
from corral.adapters.wasm.pool import InstancePool
from corral.adapters.wasm.program import WasmEngine, WasmInstance, WasmLoadError, WasmProgram
from corral.adapters.wasm.sandbox import WasiSandbox, WasmModuleSpec, WasmSandbox, load_sandbox

__all__ = [
    "ALLOCATORS",
    "ELEMENT_TYPES",
    "Allocation",
    "CallResult",
    "ComputeReply",
    "ComputeRequest",
    "GuestBudgetExceeded",
    "GuestOutOfMemory",
    "GuestTrap",
    "InstancePool",
    "ReloadReply",
    "ResultSpec",
    "Signature",
    "TypedArray",
    "WasiSandbox",
    "WasmBridge",
    "WasmEngine",
    "WasmInstance",
    "WasmLoadError",
    "WasmModuleService",
    "WasmModuleSpec",
    "WasmProgram",
    "WasmSandbox",
    "load_sandbox",
    "open_pool",
    "serve_module",
]
