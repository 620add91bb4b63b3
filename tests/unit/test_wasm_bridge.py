"""The array/string ABI, the sandbox and module loading, on real wasmtime instances (no NATS).

Guests are the example modules in examples/wasm/ (physics, buffers, hostile) plus a few small
ones written here. Every array test also checks the guest's own count of live allocations, so a
leak in the bridge shows up as a number, not as a hunch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import wasmtime

from corral.adapters.wasm import (
    GuestBudgetExceeded,
    GuestOutOfMemory,
    GuestTrap,
    ResultSpec,
    TypedArray,
    WasiSandbox,
    WasmBridge,
    WasmEngine,
    WasmInstance,
    WasmLoadError,
    WasmProgram,
    WasmSandbox,
)
from corral.adapters.wasm.messages import ComputeRequest
from corral.errors import CallTimeoutError, ModuleError, NotFoundError, ValidationError
from corral.protocol import ErrorCode

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "wasm"
Load = Callable[..., WasmInstance]


@pytest.fixture
def load(tmp_path: Path) -> Iterator[Load]:
    """`load("physics")` or `load(wat_text)`: an instance with the given sandbox."""
    engines: list[WasmEngine] = []

    def make(source: str, sandbox: WasmSandbox | None = None, name: str | None = None) -> WasmInstance:
        if source in ("physics", "buffers", "hostile"):
            path, name = EXAMPLES / f"{source}.wat", name or source
        else:
            path = tmp_path / f"{name or 'guest'}.wat"
            path.write_text(source)
        engines.append(WasmEngine(sandbox or WasmSandbox()))
        return WasmProgram.load(name or "guest", path, engines[-1]).instantiate()

    yield make
    for engine in engines:
        engine.close()


def live(instance: WasmInstance) -> int:
    """The guest allocator's own count of blocks not freed."""
    instance.arm()
    (count,) = instance.bridge.call("live_allocations")
    assert isinstance(count, int)
    return count


def compute(instance: WasmInstance, **fields: object) -> tuple[list[int | float], object]:
    request = ComputeRequest(**fields)  # type: ignore[arg-type]
    reply = instance.compute(request)
    return reply.returns, reply.result


# --- physics -----------------------------------------------------------------------------------


def test_step_and_fall_return_their_results(load: Load) -> None:
    physics = load("physics")
    assert compute(physics, function="step", args=[1.0, 2.0]) == ([-1.0], None)
    assert compute(physics, function="step", args=[10, 0.1]) == ([9.0], None)
    x, v, dt = 100.0, 0.0, 0.1
    guest = [x, v]
    for _ in range(10):  # the ball of examples/demo.py, step by step
        v = v - 9.81 * dt
        x = x + v * dt
        guest, _ = compute(physics, function="fall", args=[*guest, dt])
    assert guest == [x, v]


def trapezoid(samples: list[float]) -> list[float]:
    out, acc = [0.0] * len(samples), 0.0
    for i in range(1, len(samples)):
        acc += (samples[i - 1] + samples[i]) / 2
        out[i] = acc
    return out


@pytest.mark.parametrize("samples", [[1.0, 2.0, 3.0], [], [5.0], [0.5 * i * i for i in range(1000)]])
def test_integrate_is_the_running_trapezoid(load: Load, samples: list[float]) -> None:
    physics = load("physics")
    returns, result = compute(
        physics,
        function="integrate",
        arrays=[TypedArray("f64", samples)],
        result=ResultSpec(type="f64", length=len(samples)),
    )
    assert result == pytest.approx(trapezoid(samples))
    assert returns == [trapezoid(samples)[-1] if samples else 0.0]
    assert live(physics) == 0
    assert physics.bridge.live == {}


# --- typed arrays and strings ------------------------------------------------------------------

ROUND_TRIPS = [
    ("i8", [-128, -1, 0, 127], "reverse_1"),
    ("u8", [0, 1, 200, 255], "reverse_1"),
    ("i16", [-32768, 7, 32767], "reverse_2"),
    ("u16", [0, 65535, 3], "reverse_2"),
    ("i32", [-(2**31), -5, 2**31 - 1], "reverse_4"),
    ("u32", [0, 2**32 - 1, 17], "reverse_4"),
    ("f32", [1.5, -2.25, 1e30], "reverse_4"),
    ("i64", [-(2**63), 3, 2**63 - 1], "reverse_8"),
    ("u64", [0, 2**64 - 1, 12345678901234], "reverse_8"),
    ("f64", [0.1, -1e300, 2.5], "reverse_8"),
]


@pytest.mark.parametrize(("type_", "data", "function"), ROUND_TRIPS)
def test_every_element_type_round_trips_through_guest_memory(
    load: Load, type_: str, data: list[int | float], function: str
) -> None:
    buffers = load("buffers")
    _, result = compute(
        buffers, function=function, arrays=[TypedArray(type_, data)], result=ResultSpec(type=type_)
    )
    expected = list(reversed(data))
    assert result == (pytest.approx(expected, rel=1e-7) if type_ == "f32" else expected)
    assert live(buffers) == 0


@pytest.mark.parametrize(
    ("function", "type_", "data", "total"),
    [
        ("sum_u8", "u8", [255, 255, 3], 513),
        ("sum_i32", "i32", [-(2**31), -1, 10], -(2**31) + 9),
        ("sum_i64", "i64", [2**62, 2**62 - 1, -5], 2**63 - 6),
        ("sum_f32", "f32", [1.5, 2.25, -0.5], 3.25),
        ("sum_f64", "f64", [0.5, 1e-3, 100], 100.501),
    ],
)
def test_the_guest_reads_the_values_the_host_wrote(
    load: Load, function: str, type_: str, data: list[int | float], total: int | float
) -> None:
    buffers = load("buffers")
    returns, _ = compute(buffers, function=function, arrays=[TypedArray(type_, data)])
    assert returns == [pytest.approx(total)]


def test_strings_go_in_and_out_as_utf8(load: Load) -> None:
    buffers = load("buffers")
    upper = compute(
        buffers, function="upper", arrays=[TypedArray("utf8", "naïve café")], result=ResultSpec(type="utf8")
    )
    assert upper == ([], "NAïVE CAFé")
    # greet returns (ptr, len) of a string it allocated; the host reads it and frees it.
    greet = compute(
        buffers, function="greet", arrays=[TypedArray("utf8", "Ada ☃")], result=ResultSpec(type="utf8")
    )
    assert greet == ([], "hello, Ada ☃!")
    assert compute(
        buffers, function="greet", arrays=[TypedArray("utf8", "")], result=ResultSpec(type="utf8")
    ) == (
        [],
        "hello, !",
    )
    assert live(buffers) == 0


def test_an_output_buffer_comes_after_the_inputs_and_before_the_args(load: Load) -> None:
    buffers = load("buffers")
    returns, result = compute(
        buffers,
        function="scale",
        arrays=[TypedArray("f64", [1, 2, 3])],
        args=[2.5],
        result=ResultSpec(type="f64", length=2),
    )
    assert (returns, result) == ([2], [2.5, 5.0])
    assert live(buffers) == 0


def test_in_place_results_can_be_reinterpreted_and_bounded(load: Load) -> None:
    buffers = load("buffers")
    _, result = compute(
        buffers, function="reverse_1", arrays=[TypedArray("u8", [1, 0, 0, 0])], result=ResultSpec(type="u32")
    )
    assert result == [1 << 24]
    with pytest.raises(ValidationError) as caught:
        compute(
            buffers,
            function="reverse_1",
            arrays=[TypedArray("u8", [1, 2])],
            result=ResultSpec(type="u8", length=3, at="in_place"),
        )
    assert caught.value.errors == [
        "the result of buffers.reverse_1 cannot be 3 u8 elements: array 0 holds 2 bytes "
        "- at `$.result.length`"
    ]
    assert live(buffers) == 0


def test_integer_results_come_back_signed(load: Load) -> None:
    hostile = load("hostile")
    assert compute(hostile, function="divide", args=[-7, 2]) == ([-3], None)
    assert compute(hostile, function="divide", args=[2**32 - 8, 2]) == ([-4], None)  # -8 spelt unsigned


# --- the allocator conventions -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("buffers", "__wbindgen_malloc/__wbindgen_free"),
        ("hostile", "malloc/free"),
        ("physics", "alloc/dealloc"),
    ],
)
def test_each_allocator_convention_allocates_and_really_frees(load: Load, module: str, names: str) -> None:
    instance = load(module)
    bridge = instance.bridge
    assert bridge.allocator == names
    first = bridge.allocate(TypedArray("f64", [1.0, 2.0]))
    second = bridge.allocate(TypedArray("utf8", "hi"))
    assert (first.length, first.size, first.align) == (2, 16, 8)
    assert (second.length, second.size, second.align) == (2, 2, 1)
    assert bridge.read_buffer(first.ptr, 2, "f64") == [1.0, 2.0]
    assert set(bridge.live) == {first.ptr, second.ptr}
    assert live(instance) == 2
    bridge.free(first.ptr)
    assert live(instance) == 1
    bridge.close()  # frees the rest
    assert live(instance) == 0
    assert bridge.live == {}
    bridge.close()  # twice is fine


def test_freeing_what_the_bridge_does_not_own_is_refused(load: Load) -> None:
    bridge = load("physics").bridge
    with pytest.raises(ValueError, match=r"^1024 is not a live allocation of this bridge \(live: \[\]\)$"):
        bridge.free(1024)


def test_a_bridge_on_an_instance_of_your_own(load: Load) -> None:
    """What a Python SDK module does when it hosts WASM itself."""
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    module = wasmtime.Module.from_file(engine, str(EXAMPLES / "physics.wat"))
    instance = wasmtime.Instance(store, module, [])
    with WasmBridge(store, instance, name="physics") as bridge:
        out = bridge.call_with_arrays(
            "integrate", [TypedArray("f64", [1.0, 2.0, 3.0])], result=ResultSpec(type="f64")
        )
        assert out.result == [0.0, 1.5, 4.0]
        assert out.returns == [4.0]
        kept = bridge.allocate(TypedArray("i32", [1, 2, 3]))
        assert bridge.call("live_allocations") == [1]
    assert kept.ptr not in bridge.live
    assert bridge.call("live_allocations") == [0]


def test_a_module_without_an_allocator_takes_scalars_but_not_arrays(load: Load) -> None:
    bare = load(
        '(module (memory (export "memory") 1) (func (export "f") (param i32 i32) (result i32) local.get 1))'
    )
    assert compute(bare, function="f", args=[1, 2]) == ([2], None)
    with pytest.raises(ModuleError) as caught:
        compute(bare, function="f", arrays=[TypedArray("u8", [1])])
    assert caught.value.errors == [
        "guest exports no allocator, which arrays and strings need: export one of "
        "__wbindgen_malloc/__wbindgen_free, malloc/free, alloc/dealloc"
    ]


def test_an_allocator_with_the_wrong_signature_is_named(load: Load) -> None:
    odd = load(
        '(module (memory (export "memory") 1)'
        ' (func (export "malloc") (param f64) (result i32) i32.const 8) (func (export "free") (param i32))'
        ' (func (export "f") (param i32 i32)))'
    )
    with pytest.raises(
        ModuleError, match=r"^guest.malloc\(f64\) -> i32 is not \(size\[, align\]: i32\) -> ptr: i32$"
    ):
        compute(odd, function="f", arrays=[TypedArray("u8", [1])])


def test_an_allocator_returning_a_wild_pointer_is_caught(load: Load) -> None:
    wild = load(
        '(module (memory (export "memory") 1)'
        ' (func (export "alloc") (param i32) (result i32) i32.const 65530)'
        ' (func (export "dealloc") (param i32 i32))'
        ' (func (export "f") (param i32 i32)))'
    )
    with pytest.raises(ModuleError) as caught:
        compute(wild, function="f", arrays=[TypedArray("f64", [1.0])])
    assert caught.value.errors == [
        "guest: the allocator (alloc/dealloc) returned a buffer that at [65530, 65538) lies outside guest "
        "memory of 65536 bytes"
    ]
    assert wild.needs_replacing


# --- bad requests ------------------------------------------------------------------------------


def test_an_unknown_function_lists_the_exports(load: Load) -> None:
    physics = load("physics")
    with pytest.raises(NotFoundError) as caught:
        compute(physics, function="stepp", args=[1.0])
    assert caught.value.code == ErrorCode.NOT_FOUND
    assert caught.value.errors == [
        "physics has no export 'stepp'; its functions are: alloc(i32) -> i32, dealloc(i32, i32) -> (), "
        "fall(f64, f64, f64) -> (f64, f64), integrate(i32, i32) -> f64, live_allocations() -> i32, "
        "step(f64, f64) -> f64"
    ]
    with pytest.raises(
        NotFoundError, match=r"^physics export 'memory' is a memory, not a function; its functions"
    ):
        compute(physics, function="memory")


def test_wrong_arguments_are_validation_errors_with_paths(load: Load) -> None:
    physics = load("physics")
    with pytest.raises(ValidationError) as caught:
        compute(physics, function="step", args=[1.0])
    assert caught.value.errors == [
        "physics.step(f64, f64) -> f64 takes 2 parameters, but the request passes 1: 1 arg - at `$.args`"
    ]
    hostile = load("hostile")
    with pytest.raises(ValidationError) as caught:
        compute(hostile, function="divide", args=[1, 0.5])
    assert caught.value.errors == [
        "argument 1 of hostile.divide is an i32: got 0.5, not an integer - at `$.args[1]`"
    ]
    with pytest.raises(
        ValidationError,
        match=r"element 0 is 300, outside the u8 range 0\.\.255 - at `\$.arrays\[0\].data\[0\]`",
    ):
        compute(physics, function="integrate", arrays=[TypedArray("u8", [300])])
    assert live(physics) == 0


# --- the sandbox -------------------------------------------------------------------------------


def test_an_infinite_loop_stops_at_the_cpu_budget_and_the_instance_serves_on(load: Load) -> None:
    hostile = load("hostile", WasmSandbox(timeout_ms=50))
    with pytest.raises(GuestBudgetExceeded) as caught:
        compute(hostile, function="spin")
    assert isinstance(caught.value, CallTimeoutError)
    assert caught.value.code == ErrorCode.TIMEOUT
    assert caught.value.errors == [
        "hostile.spin ran past its CPU budget of 50 ms (timeout_ms) and was stopped; the module keeps "
        "serving. If the work is legitimate, raise timeout_ms in the module's sandbox"
    ]
    assert compute(hostile, function="divide", args=[9, 3]) == ([3], None)
    assert not hostile.needs_replacing


def test_a_timeout_with_arrays_in_guest_memory_frees_them(load: Load) -> None:
    hostile = load("hostile", WasmSandbox(timeout_ms=50))
    with pytest.raises(GuestBudgetExceeded):
        compute(hostile, function="spin_on", arrays=[TypedArray("f64", [1.0] * 100)])
    assert live(hostile) == 0
    assert hostile.bridge.live == {}


def test_fuel_is_a_deterministic_budget(load: Load) -> None:
    hostile = load("hostile", WasmSandbox(fuel=10_000, timeout_ms=60_000))
    with pytest.raises(
        GuestBudgetExceeded, match=r"^hostile.spin used up its fuel budget of 10000 units \(fuel\)"
    ):
        compute(hostile, function="spin")
    assert compute(hostile, function="divide", args=[9, 3]) == ([3], None)  # refuelled per call


def test_a_trap_mid_call_frees_the_allocations(load: Load) -> None:
    hostile = load("hostile")
    for _ in range(3):
        with pytest.raises(GuestTrap) as caught:
            compute(hostile, function="crash", arrays=[TypedArray("u8", list(range(200)))])
        assert caught.value.code == ErrorCode.MODULE_ERROR
        assert caught.value.errors == [
            "hostile.crash trapped: wasm trap: wasm `unreachable` instruction executed"
        ]
        assert live(hostile) == 0
    assert hostile.bridge.live == {}
    assert not hostile.needs_replacing  # frees worked: the instance is fine


def test_a_memory_bomb_hits_the_cap_with_a_clear_error(load: Load) -> None:
    hostile = load("hostile", WasmSandbox(memory_mb=2))
    with pytest.raises(GuestTrap) as caught:
        compute(hostile, function="bomb")
    assert caught.value.errors == [
        "hostile.bomb trapped: wasm trap: wasm `unreachable` instruction executed; its linear memory is "
        "2.0 MiB of its 2 MiB cap (memory_mb), so a memory.grow refused at the cap is the likely cause: "
        "raise memory_mb or send less data"
    ]
    assert hostile.bridge.memory_size() == 2 * 1024 * 1024  # grown up to the cap, not past it
    assert hostile.needs_replacing  # memory never shrinks: the pool starts this one afresh


def test_an_array_larger_than_the_cap_is_refused_by_the_allocator(load: Load) -> None:
    physics = load("physics", WasmSandbox(memory_mb=1))
    with pytest.raises(GuestOutOfMemory) as caught:
        compute(physics, function="integrate", arrays=[TypedArray("f64", [0.0] * 200_000)])
    assert caught.value.errors == [
        "physics could not allocate 1600000 bytes for $.arrays[0]: its linear memory is 0.1 MiB of its "
        "1 MiB cap (memory_mb); send less data or raise memory_mb"
    ]
    assert live(physics) == 0


def test_unbounded_recursion_hits_the_stack_limit(load: Load) -> None:
    hostile = load("hostile", WasmSandbox(max_stack_bytes=64 * 1024))
    with pytest.raises(GuestTrap) as caught:
        compute(hostile, function="recurse", args=[0])
    assert caught.value.errors == [
        "hostile.recurse overflowed its stack of 65536 bytes (max_stack_bytes): unbounded recursion?"
    ]
    assert compute(hostile, function="divide", args=[4, 2]) == ([2], None)


def test_a_division_by_zero_is_a_module_error_without_a_memory_hint(load: Load) -> None:
    hostile = load("hostile")
    with pytest.raises(GuestTrap) as caught:
        compute(hostile, function="divide", args=[1, 0])
    assert caught.value.errors == ["hostile.divide trapped: wasm trap: integer divide by zero"]


def test_recycle_on_trap_asks_for_a_fresh_instance(load: Load) -> None:
    hostile = load("hostile", WasmSandbox(recycle_on_trap=True))
    with pytest.raises(GuestTrap):
        compute(hostile, function="divide", args=[1, 0])
    assert hostile.needs_replacing


# --- WASI ----------------------------------------------------------------------------------------

WASI_GUEST = """(module
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $env_sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; (errno, number of variables, bytes of "NAME=value\\0" strings)
  (func (export "env_sizes") (result i32 i32 i32)
    (call $env_sizes (i32.const 0) (i32.const 4)) (i32.load (i32.const 0)) (i32.load (i32.const 4)))
  ;; (errno, length of the preopened directory's guest path) for file descriptor fd
  (func (export "preopen") (param $fd i32) (result i32 i32)
    (call $prestat (local.get $fd) (i32.const 16)) (i32.load (i32.const 20))))
"""
EBADF = 8


def test_wasi_is_off_unless_configured(load: Load) -> None:
    with pytest.raises(WasmLoadError) as caught:
        load(WASI_GUEST, name="reader")
    assert caught.value.errors == [
        "wasm module reader imports WASI (wasi_snapshot_preview1.environ_sizes_get) but WASI is off for it: "
        "add [modules.reader.sandbox.wasi] naming the dirs and env it may see"
    ]


def test_wasi_shows_only_the_named_env_and_dirs(load: Load, tmp_path: Path) -> None:
    assert len(os.environ) > 1  # the host has plenty the guest must not see
    (tmp_path / "data").mkdir()
    sandbox = WasmSandbox(wasi=WasiSandbox(env={"MODE": "fast"}, dirs={"/data": str(tmp_path / "data")}))
    reader = load(WASI_GUEST, sandbox, name="reader")
    assert compute(reader, function="env_sizes") == ([0, 1, len("MODE=fast\0")], None)
    assert compute(reader, function="preopen", args=[3]) == ([0, len("/data")], None)
    assert compute(reader, function="preopen", args=[4])[0][0] == EBADF  # nothing else

    bare = load(WASI_GUEST, WasmSandbox(wasi=WasiSandbox()), name="bare")
    assert compute(bare, function="env_sizes") == ([0, 0, 0], None)
    assert compute(bare, function="preopen", args=[3])[0][0] == EBADF


def test_imports_other_than_wasi_are_refused(load: Load) -> None:
    with pytest.raises(WasmLoadError) as caught:
        load('(module (import "env" "now" (func (result f64))))', name="clock")
    assert caught.value.errors == [
        "wasm module clock imports env.now, which the adapter does not provide: a hosted module may import "
        "only WASI (wasi_snapshot_preview1)"
    ]


# --- loading -------------------------------------------------------------------------------------


def test_wasm_binaries_load_like_wat(load: Load, tmp_path: Path) -> None:
    binary = tmp_path / "physics.wasm"
    binary.write_bytes(wasmtime.wat2wasm((EXAMPLES / "physics.wat").read_text()))
    engine = WasmEngine(WasmSandbox())
    try:
        program = WasmProgram.load("physics", binary, engine)
        assert program.describe_exports()[-1] == "step(f64, f64) -> f64"
        assert compute(program.instantiate(), function="step", args=[2.0, 0.5]) == ([1.0], None)
    finally:
        engine.close()


def test_a_file_that_does_not_compile_is_named(load: Load, tmp_path: Path) -> None:
    with pytest.raises(WasmLoadError) as caught:
        load('(module (func (export "f") (result i32) i64.const 1))', name="broken")
    message = caught.value.errors[0]
    assert message.startswith(f"cannot compile wasm module broken from {tmp_path / 'broken.wat'}: ")
    assert "type mismatch" in message
    engine = WasmEngine(WasmSandbox())
    with pytest.raises(
        WasmLoadError, match=r"^cannot read the file of wasm module nope: .*nope.wat: No such file"
    ):
        WasmProgram.load("nope", tmp_path / "nope.wat", engine)
    engine.close()


def test_a_module_needing_more_memory_than_the_cap_does_not_start(load: Load) -> None:
    with pytest.raises(WasmLoadError, match=r"^cannot instantiate wasm module big \(.*big.wat\): "):
        load('(module (memory (export "memory") 40))', WasmSandbox(memory_mb=2), name="big")


def test_nan_and_infinity_results_stay_floats(load: Load) -> None:
    physics = load("physics")
    returns, _ = compute(physics, function="step", args=[math.inf, 1.0])
    assert math.isnan(returns[0])
