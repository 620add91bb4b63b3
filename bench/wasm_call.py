"""What calling a WebAssembly function through corral costs, against calling it in-process.

    python bench/wasm_call.py [--calls N] [--concurrency 1,16,64] [--pool-size N] [--nats-url URL]
                              [--json PATH]

One run starts a nats-server (unless --nats-url is given) and the wasm adapter as a process
(`python -m corral.adapters.wasm --module physics=examples/wasm/physics.wat`), then measures,
for two workloads of examples/wasm/physics.wat:

* step:        `step(x, dt)`, two f64 scalars in, one out: the fixed cost of a call;
* integrate:   `integrate(ptr, len)` over 1000 f64 samples read back in place: the array ABI.

Each workload is timed three ways, in the same run:

* wasmtime:    in this process, straight wasmtime-py (for integrate: alloc, write, call, read,
               dealloc by hand), one call after another: the floor;
* bridge:      in this process, through corral's WasmBridge (argument checks, the array ABI);
* bus:         `<prefix>.mod.physics.compute` over NATS to the adapter process, JSON (and
               msgpack for integrate), with `concurrency` callers each waiting for its reply.

Every reply is checked (the exact result), so a broken path reports errors, not a fast number.
The ratio printed is bus calls/s over wasmtime calls/s.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import wasmtime
from nats.aio.client import Client

from corral.adapters.wasm import ResultSpec, TypedArray, WasmBridge
from corral.natsd import NatsServer

PHYSICS = Path(__file__).resolve().parents[1] / "examples" / "wasm" / "physics.wat"
SAMPLES = [float(i % 17) for i in range(1000)]
READY_TIMEOUT = 30.0
REQUEST_TIMEOUT = 10.0


def trapezoid(samples: list[float]) -> list[float]:
    out, acc = [0.0] * len(samples), 0.0
    for i in range(1, len(samples)):
        acc += (samples[i - 1] + samples[i]) / 2
        out[i] = acc
    return out


EXPECTED_STEP = [1.0 - 1.0 * 0.001]
EXPECTED_INTEGRAL = trapezoid(SAMPLES)


@dataclass
class Result:
    workload: str
    path: str
    concurrency: int
    calls: int
    errors: int
    seconds: float
    calls_per_s: float
    p50_us: float
    p99_us: float


def summarize(
    workload: str, path: str, concurrency: int, latencies: list[float], errors: int, seconds: float
) -> Result:
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return 1e6 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    rate = len(ordered) / seconds if seconds > 0 else 0.0
    return Result(
        workload, path, concurrency, len(ordered), errors, round(seconds, 4), rate, pct(0.5), pct(0.99)
    )


# --- in-process --------------------------------------------------------------------------------


class InProcess:
    """physics.wat instantiated in this process, as the adapter's workers do (fuel off, epoch on)."""

    def __init__(self) -> None:
        config = wasmtime.Config()
        config.epoch_interruption = True
        self.engine = wasmtime.Engine(config)
        self.store = wasmtime.Store(self.engine)
        self.store.set_epoch_deadline(1 << 40)
        module = wasmtime.Module(self.engine, PHYSICS.read_text())
        self.instance = wasmtime.Instance(self.store, module, [])
        exports = self.instance.exports(self.store)
        self.step = _func(exports["step"])
        self.integrate = _func(exports["integrate"])
        self.alloc = _func(exports["alloc"])
        self.dealloc = _func(exports["dealloc"])
        memory = exports["memory"]
        assert isinstance(memory, wasmtime.Memory)
        self.memory = memory
        self.bridge = WasmBridge(self.store, self.instance, name="physics")

    def raw_step(self) -> bool:
        return [self.step(self.store, 1.0, 0.001)] == EXPECTED_STEP

    def raw_integrate(self) -> bool:
        size = 8 * len(SAMPLES)
        ptr = self.alloc(self.store, size)
        self.memory.write(self.store, array.array("d", SAMPLES).tobytes(), ptr)
        self.integrate(self.store, ptr, len(SAMPLES))
        out = array.array("d")
        out.frombytes(self.memory.read(self.store, ptr, ptr + size))
        self.dealloc(self.store, ptr, size)
        return out.tolist() == EXPECTED_INTEGRAL

    def bridge_step(self) -> bool:
        return self.bridge.call("step", 1.0, 0.001) == EXPECTED_STEP

    def bridge_integrate(self) -> bool:
        out = self.bridge.call_with_arrays(
            "integrate", [TypedArray("f64", SAMPLES)], result=ResultSpec(type="f64")
        )
        return out.result == EXPECTED_INTEGRAL


def _func(item: object) -> wasmtime.Func:
    assert isinstance(item, wasmtime.Func)
    return item


def time_in_process(workload: str, path: str, call: Callable[[], bool], calls: int) -> Result:
    for _ in range(min(calls, 200)):  # warm up
        call()
    latencies: list[float] = []
    errors = 0
    clock = time.perf_counter
    started = clock()
    for _ in range(calls):
        before = clock()
        if call():
            latencies.append(clock() - before)
        else:
            errors += 1
    return summarize(workload, path, 1, latencies, errors, clock() - started)


# --- over the bus -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BusCall:
    workload: str
    path: str
    body: bytes
    headers: dict[str, str] | None
    check: Callable[[bytes], bool]


def bus_calls() -> list[BusCall]:
    step = {"function": "step", "args": [1.0, 0.001]}
    integrate = {
        "function": "integrate",
        "arrays": [{"type": "f64", "data": SAMPLES}],
        "result": {"type": "f64", "length": len(SAMPLES)},
    }
    msgpack = {"Content-Type": "application/msgpack"}

    def payload(data: bytes, decode: Callable[[bytes], Any]) -> Any:
        reply = decode(data)
        return reply.get("payload") if isinstance(reply, dict) and reply.get("success") else None

    def step_ok(data: bytes) -> bool:
        found = payload(data, msgspec.json.decode)
        return isinstance(found, dict) and found.get("returns") == EXPECTED_STEP

    def integrate_ok(decode: Callable[[bytes], Any]) -> Callable[[bytes], bool]:
        def check(data: bytes) -> bool:
            found = payload(data, decode)
            return isinstance(found, dict) and found.get("result") == EXPECTED_INTEGRAL

        return check

    return [
        BusCall("step", "bus json", msgspec.json.encode(step), None, step_ok),
        BusCall(
            "integrate", "bus json", msgspec.json.encode(integrate), None, integrate_ok(msgspec.json.decode)
        ),
        BusCall(
            "integrate",
            "bus msgpack",
            msgspec.msgpack.encode(integrate),
            msgpack,
            integrate_ok(msgspec.msgpack.decode),
        ),
    ]


async def drive(nc: Client, subject: str, call: BusCall, concurrency: int, total: int) -> Result:
    latencies: list[float] = []
    errors = 0
    clock = time.perf_counter

    async def worker(count: int) -> None:
        nonlocal errors
        for _ in range(count):
            before = clock()
            try:
                reply = await nc.request(subject, call.body, timeout=REQUEST_TIMEOUT, headers=call.headers)
            except (TimeoutError, nats.errors.Error):
                errors += 1
                continue
            if call.check(reply.data):
                latencies.append(clock() - before)
            else:
                errors += 1

    shares = [total // concurrency + (1 if i < total % concurrency else 0) for i in range(concurrency)]
    started = clock()
    await asyncio.gather(*(worker(n) for n in shares if n))
    return summarize(call.workload, call.path, concurrency, latencies, errors, clock() - started)


async def wait_ready(nc: Client, subject: str, adapter: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    body = msgspec.json.encode({"function": "step", "args": [1.0, 0.001]})
    while time.monotonic() < deadline:
        if adapter.poll() is not None:
            raise RuntimeError(f"the adapter exited with {adapter.returncode}:\n{tail(log)}")
        try:
            reply = await nc.request(subject, body, timeout=0.5)
        except (TimeoutError, nats.errors.Error):
            await asyncio.sleep(0.05)
            continue
        if bus_calls()[0].check(reply.data):
            return
    raise TimeoutError(f"the adapter did not answer within {READY_TIMEOUT:g}s:\n{tail(log)}")


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


async def measure_bus(
    url: str, prefix: str, adapter: subprocess.Popen[bytes], log: Path, levels: list[int], calls: int
) -> list[Result]:
    nc = await nats.connect(url, name="bench-wasm-call", allow_reconnect=False, connect_timeout=5)
    subject = f"{prefix}.mod.physics.compute"
    results = []
    try:
        await wait_ready(nc, subject, adapter, log)
        for call in bus_calls():
            for concurrency in levels:
                await drive(nc, subject, call, concurrency, min(calls, 500))  # warm up
                result = await drive(nc, subject, call, concurrency, calls)
                report_line(result)
                results.append(result)
    finally:
        await nc.close()
    return results


# --- the run -------------------------------------------------------------------------------------


def report_line(r: Result) -> None:
    print(
        f"  {r.workload:<10} {r.path:<12} c={r.concurrency:<3} {r.calls_per_s:>10,.0f} calls/s  "
        f"p50 {r.p50_us:8.1f} us  p99 {r.p99_us:8.1f} us  errors {r.errors}",
        file=sys.stderr,
        flush=True,
    )


def start_adapter(url: str, prefix: str, pool_size: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "NATS_URL": url,
        "CORRAL_PREFIX": prefix,
        "CORRAL_METRICS_PORT": "-1",
        "CORRAL_LOG_LEVEL": "WARNING",
        "CORRAL_MAX_REQUEST_BYTES": str(8 * 1024 * 1024),
    }
    sandbox = json.dumps({"pool_size": pool_size})
    argv = [sys.executable, "-m", "corral.adapters.wasm", "--module", f"physics={PHYSICS}"]
    with log.open("wb") as out:
        return subprocess.Popen([*argv, "--sandbox", f"physics={sandbox}"], env=env, stdout=out, stderr=out)


def run(args: argparse.Namespace) -> dict[str, Any]:
    levels = [int(c) for c in args.concurrency.split(",")]
    print("in-process (this process, one call after another):", file=sys.stderr)
    local = InProcess()
    results = []
    for workload, path, fn in (
        ("step", "wasmtime", local.raw_step),
        ("step", "bridge", local.bridge_step),
        ("integrate", "wasmtime", local.raw_integrate),
        ("integrate", "bridge", local.bridge_integrate),
    ):
        results.append(time_in_process(workload, path, fn, args.calls))
        report_line(results[-1])
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="corral-wasm-bench-") as tmp:
        server = None if args.nats_url else NatsServer(Path(tmp) / "nats")
        if server is not None:
            server.start()
        url = args.nats_url or (server.url if server else "")
        log = Path(tmp) / "adapter.log"
        adapter = start_adapter(url, prefix, args.pool_size, log)
        try:
            print(f"over NATS (adapter process, pool_size {args.pool_size}):", file=sys.stderr)
            results += asyncio.run(measure_bus(url, prefix, adapter, log, levels, args.calls))
        finally:
            adapter.terminate()
            adapter.wait(10)
            if server is not None:
                server.stop()
    return {"machine": machine(), "config": vars(args), "results": [asdict(r) for r in results]}


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "wasmtime": wasmtime.__version__ if hasattr(wasmtime, "__version__") else "?",
    }


def print_ratios(report: dict[str, Any]) -> None:
    results = [Result(**r) for r in report["results"]]
    floor = {r.workload: r.calls_per_s for r in results if r.path == "wasmtime"}
    print("\nworkload   path         conc     calls/s   p50 us   p99 us   vs in-process wasmtime")
    for r in results:
        ratio = r.calls_per_s / floor[r.workload] if floor.get(r.workload) else float("nan")
        print(
            f"{r.workload:<10} {r.path:<12} {r.concurrency:>4} {r.calls_per_s:>11,.0f} {r.p50_us:>8.1f} "
            f"{r.p99_us:>8.1f}   {ratio:8.4f}  (1/{1 / ratio:,.1f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=5000, help="calls per measurement")
    parser.add_argument("--concurrency", default="1,16,64", help="bus callers, comma-separated")
    parser.add_argument("--pool-size", type=int, default=2, help="WASM instances in the adapter")
    parser.add_argument("--nats-url", default=None, help="an existing server (default: start one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    report = run(args)
    print_ratios(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    if any(r["errors"] for r in report["results"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
