"""The WASM adapter against the session's real nats-server, spoken to the way users do.

Modules are served in-process with `serve_module` (each with a sandbox of its own) and called
with plain JSON requests; the last tests run `python -m corral.adapters.wasm` as a process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from corral.adapters.wasm import WasmModuleService, WasmModuleSpec, WasmSandbox, serve_module
from corral.discovery import discover
from corral.protocol import MSGPACK_CONTENT_TYPE
from corral.runtime import ServiceSettings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "wasm"
Serve = Callable[..., AbstractAsyncContextManager[WasmModuleService]]


@pytest.fixture
def serve(settings: ServiceSettings) -> Serve:
    """`async with serve("physics", timeout_ms=100):` - an example (or any file) served on NATS."""

    def make(module: str | Path, name: str | None = None, **limits: Any) -> AbstractAsyncContextManager[Any]:
        path = EXAMPLES / f"{module}.wat" if isinstance(module, str) else module
        spec = WasmModuleSpec(name or path.stem, path, WasmSandbox(**limits))
        return serve_module(spec, settings)

    return make


@pytest.fixture
async def physics(serve: Serve) -> AsyncIterator[WasmModuleService]:
    async with serve("physics") as service:
        yield service


async def request(nc: Client, subject: str, data: bytes, timeout: float) -> Msg:
    """nc.request, retrying "no responders" for a moment: nats-server sometimes answers a request
    sent right after another connection subscribed and flushed with no responders (a plain
    nats-py loop shows it in about 1 of 100 tries); a module that never subscribed still fails."""
    deadline = time.monotonic() + 2.0
    while True:
        try:
            return await nc.request(subject, data, timeout=timeout)
        except nats.errors.NoRespondersError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.01)


async def compute(nc: Client, prefix: str, module: str, body: Any, timeout: float = 5.0) -> dict[str, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    msg = await request(nc, f"{prefix}.mod.{module}.compute", data, timeout)
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


def ok(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply["success"] is True, reply
    assert reply["type"] == "compute:success"
    payload: dict[str, Any] = reply["payload"]
    return payload


def error(reply: dict[str, Any]) -> tuple[str, list[str]]:
    assert reply["success"] is False, reply
    return reply["payload"]["code"], reply["payload"]["errors"]


# --- registration and calls ----------------------------------------------------------------------


async def test_each_module_registers_under_its_own_name(
    physics: WasmModuleService, nc: Client, prefix: str
) -> None:
    (info,) = await discover(nc, prefix, name="physics")
    assert (info.name, info.role) == ("physics", "module")
    assert info.metadata["instance"] == physics.instance
    endpoints = {(e.name, e.subject) for e in info.endpoints}
    assert endpoints == {
        ("compute", f"{prefix}.mod.physics.compute"),
        ("reload", f"{prefix}.modctl.physics.reload"),
    }


async def test_step_and_integrate_over_the_bus(physics: WasmModuleService, nc: Client, prefix: str) -> None:
    step = await compute(nc, prefix, "physics", {"function": "step", "args": [1.0, 2.0]})
    assert ok(step) == {"returns": [-1.0]}
    integrate = await compute(
        nc,
        prefix,
        "physics",
        {
            "function": "integrate",
            "arrays": [{"type": "f64", "data": [1, 2, 3]}],
            "result": {"type": "f64", "length": 3},
        },
    )
    assert ok(integrate) == {"returns": [4.0], "result": [0.0, 1.5, 4.0]}


async def test_msgpack_requests_get_msgpack_replies(
    physics: WasmModuleService, nc: Client, prefix: str
) -> None:
    body = msgspec.msgpack.encode({"function": "fall", "args": [100.0, 0.0, 0.5]})
    await compute(nc, prefix, "physics", {"function": "step", "args": [1.0, 0.5]})  # answering
    msg = await nc.request(
        f"{prefix}.mod.physics.compute", body, timeout=5, headers={"Content-Type": MSGPACK_CONTENT_TYPE}
    )
    reply = msgspec.msgpack.decode(msg.data)
    assert reply["payload"] == {"returns": [100.0 - 9.81 * 0.5 * 0.5, -9.81 * 0.5]}


@pytest.mark.parametrize(
    ("type_", "data", "function"),
    [
        ("i32", [-(2**31), 0, 2**31 - 1], "reverse_4"),
        ("i64", [-(2**63), 1, 2**63 - 1], "reverse_8"),
        ("f32", [0.5, -1.25, 1e20], "reverse_4"),
        ("f64", [0.1, -2e-300, 1e300], "reverse_8"),
        ("u8", [0, 128, 255], "reverse_1"),
        ("u16", [0, 65535], "reverse_2"),
        ("utf8", "¡hola, mundo!", "upper"),
    ],
)
async def test_typed_arrays_round_trip_through_the_bus(
    serve: Serve, nc: Client, prefix: str, type_: str, data: list[float] | str, function: str
) -> None:
    async with serve("buffers"):
        reply = await compute(
            nc,
            prefix,
            "buffers",
            {"function": function, "arrays": [{"type": type_, "data": data}], "result": {"type": type_}},
        )
        live = await compute(nc, prefix, "buffers", {"function": "live_allocations"})
    expected = data.upper() if isinstance(data, str) else list(reversed(data))
    assert ok(reply)["result"] == (pytest.approx(expected) if type_ == "f32" else expected)
    assert ok(live) == {"returns": [0]}


# --- the sandbox ---------------------------------------------------------------------------------


async def test_an_infinite_loop_times_out_and_the_module_keeps_serving(
    serve: Serve, nc: Client, prefix: str
) -> None:
    async with serve("hostile", timeout_ms=100, pool_size=1):
        # The request may wait 10 s; the budget is 100 ms: a TIMEOUT reply proves the loop was cut.
        spin = await compute(nc, prefix, "hostile", {"function": "spin"}, timeout=10)
        after = await compute(nc, prefix, "hostile", {"function": "divide", "args": [42, 6]})
    assert error(spin) == (
        "TIMEOUT",
        [
            "hostile.spin ran past its CPU budget of 100 ms (timeout_ms) and was stopped; the module keeps "
            "serving. If the work is legitimate, raise timeout_ms in the module's sandbox"
        ],
    )
    assert ok(after) == {"returns": [7]}


async def test_a_memory_bomb_is_a_clear_error(serve: Serve, nc: Client, prefix: str) -> None:
    async with serve("hostile", memory_mb=3, pool_size=1):
        bomb = await compute(nc, prefix, "hostile", {"function": "bomb"})
        pages = await compute(nc, prefix, "hostile", {"function": "pages"})
    code, (message,) = error(bomb)
    assert code == "MODULE_ERROR"
    assert "3.0 MiB of its 3 MiB cap (memory_mb)" in message
    assert "memory.grow refused at the cap" in message
    assert ok(pages) == {"returns": [1]}  # the exhausted instance was replaced


async def test_a_trap_mid_call_frees_the_arrays(serve: Serve, nc: Client, prefix: str) -> None:
    async with serve("hostile", pool_size=1):
        for _ in range(5):
            crash = await compute(
                nc, prefix, "hostile", {"function": "crash", "arrays": [{"type": "f64", "data": [1.0] * 64}]}
            )
            assert error(crash) == (
                "MODULE_ERROR",
                ["hostile.crash trapped: wasm trap: wasm `unreachable` instruction executed"],
            )
        live = await compute(nc, prefix, "hostile", {"function": "live_allocations"})
    assert ok(live) == {"returns": [0]}


# --- bad requests --------------------------------------------------------------------------------

PHYSICS_EXPORTS = (
    "alloc(i32) -> i32, dealloc(i32, i32) -> (), fall(f64, f64, f64) -> (f64, f64), "
    "integrate(i32, i32) -> f64, live_allocations() -> i32, step(f64, f64) -> f64"
)


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ({"function": "jump", "args": []}, "NOT_FOUND",
         f"physics has no export 'jump'; its functions are: {PHYSICS_EXPORTS}"),
        ({"function": "step", "args": [1.0]}, "VALIDATION",
         "physics.step(f64, f64) -> f64 takes 2 parameters, but the request passes 1: 1 arg - at `$.args`"),
        ({"function": "step", "args": [1.0, "fast"]}, "VALIDATION",
         "invalid request body: Expected `int | float`, got `str` - at `$.args[1]`"),
        ({"function": "integrate", "arrays": [{"type": "float64", "data": [1]}]}, "VALIDATION",
         "invalid request body: unknown element type 'float64': use one of i8, u8, i16, u16, i32, u32, "
         "i64, u64, f32, f64, utf8 - at `$.arrays[0]`"),
        ({"function": "integrate", "arrays": [{"type": "u8", "data": [1, -1]}]}, "VALIDATION",
         "element 1 is -1, outside the u8 range 0..255 - at `$.arrays[0].data[1]`"),
        ({"function": "integrate", "arrays": [{"type": "utf8", "data": [1]}]}, "VALIDATION",
         "invalid request body: a utf8 array takes a string as data - at `$.arrays[0]`"),
        ({"args": [1]}, "VALIDATION", "invalid request body: Object missing required field `function`"),
        (b"{not json", "VALIDATION",
         "malformed request body: not valid JSON: JSON is malformed: object keys must be strings (byte 1)"),
    ],
)  # fmt: skip
async def test_bad_requests_get_clear_errors(
    physics: WasmModuleService, nc: Client, prefix: str, body: Any, code: str, message: str
) -> None:
    reply = await compute(nc, prefix, "physics", body)
    assert error(reply) == (code, [message])
    assert reply["type"] == "compute:error"


async def test_an_argument_of_the_wrong_wasm_type_names_it(serve: Serve, nc: Client, prefix: str) -> None:
    async with serve("hostile"):
        reply = await compute(nc, prefix, "hostile", {"function": "divide", "args": [7, 2.5]})
    assert error(reply) == (
        "VALIDATION",
        ["argument 1 of hostile.divide is an i32: got 2.5, not an integer - at `$.args[1]`"],
    )


# --- reload --------------------------------------------------------------------------------------


def versioned(version: int) -> str:
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


async def reload(nc: Client, prefix: str, module: str) -> dict[str, Any]:
    msg = await request(nc, f"{prefix}.modctl.{module}.reload", b"", 10)
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


async def test_reload_loads_the_new_file_and_refuses_a_broken_one(
    serve: Serve, nc: Client, prefix: str, tmp_path: Path
) -> None:
    path = tmp_path / "clock.wat"
    path.write_text(versioned(1))
    async with serve(path):
        path.write_text(versioned(2))
        reply = await reload(nc, prefix, "clock")
        assert reply["type"] == "reload:success"
        assert reply["payload"]["version"] == 2
        assert reply["payload"]["file"] == str(path)
        assert reply["payload"]["exports"] == ["slow_version(i64) -> i32", "version() -> i32"]
        assert ok(await compute(nc, prefix, "clock", {"function": "version"})) == {"returns": [2]}

        path.write_text("(module (func")
        code, (message,) = error(await reload(nc, prefix, "clock"))
        assert code == "MODULE_ERROR"
        assert message.startswith(f"cannot compile wasm module clock from {path}: ")
        assert ok(await compute(nc, prefix, "clock", {"function": "version"})) == {"returns": [2]}


async def test_reload_under_load_loses_no_call(serve: Serve, nc: Client, prefix: str, tmp_path: Path) -> None:
    path = tmp_path / "clock.wat"
    path.write_text(versioned(1))
    async with serve(path, pool_size=2):
        stop = asyncio.Event()
        replies: list[dict[str, Any]] = []

        async def caller() -> None:
            while not stop.is_set():
                body = {"function": "slow_version", "args": [200_000]}
                replies.append(await compute(nc, prefix, "clock", body))

        callers = [asyncio.create_task(caller()) for _ in range(16)]
        for version in range(2, 6):
            await asyncio.sleep(0.05)
            path.write_text(versioned(version))
            assert (await reload(nc, prefix, "clock"))["payload"]["version"] == version
        final = await compute(nc, prefix, "clock", {"function": "version"})
        stop.set()
        await asyncio.gather(*callers)
    failures = [r for r in replies if not r["success"]]
    assert failures == []
    assert {r["payload"]["returns"][0] for r in replies} >= {1, 5}
    assert ok(final) == {"returns": [5]}


# --- the adapter process -------------------------------------------------------------------------


def adapter(nats_url: str, prefix: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NATS_URL": nats_url, "CORRAL_PREFIX": prefix, "CORRAL_METRICS_PORT": "-1"}
    return subprocess.Popen(
        [sys.executable, "-m", "corral.adapters.wasm", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def test_the_adapter_process_hosts_several_modules_and_drains_on_sigterm(
    nats_url: str, prefix: str, nc: Client
) -> None:
    process = adapter(
        nats_url, prefix,
        "--module", f"physics={EXAMPLES / 'physics.wat'}",
        "--module", f"hostile={EXAMPLES / 'hostile.wat'}",
        "--sandbox", 'hostile={"timeout_ms": 50}',
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        names: set[str] = set()
        while names != {"physics", "hostile"} and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[1].decode()
            names = {info.name for info in await discover(nc, prefix, wait=0.2)}
        assert names == {"physics", "hostile"}
        assert ok(await compute(nc, prefix, "physics", {"function": "step", "args": [2.0, 0.25]})) == {
            "returns": [1.5]
        }
        assert error(await compute(nc, prefix, "hostile", {"function": "spin"}))[0] == "TIMEOUT"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_a_bad_module_file_stops_the_adapter_before_it_connects(prefix: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.wat"
    broken.write_text("(module (func (export")
    # An unreachable NATS URL: a clean failure must come from the file, not from connecting.
    process = adapter("nats://127.0.0.1:1", prefix, "--module", f"broken={broken}")
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 2
    assert stderr.decode().startswith(f"wasm adapter: cannot compile wasm module broken from {broken}: ")
