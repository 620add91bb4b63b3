"""Get and set throughput of corral state, against Redis on the same machine in the same run.

    python bench/state.py [--ops N] [--concurrency 1,32] [--rounds R] [--keys K] [--nats-url URL]
                          [--redis-url redis://127.0.0.1:6379/0] [--json PATH]

One run starts a nats-server (unless --nats-url is given) and the state service as its own
process (`python -m corral.state`, events on, as `corral up` runs it), then measures from
this process, for each concurrency level, GET and SET on three paths:

* service: `<prefix>.state.get` / `.set` requests through the state service (SDK StateClient);
* direct:  the SDK's direct KV path (`StateClient.direct`): one JetStream round trip per call;
* redis:   GET / SET with redis-py's asyncio client, the same JSON bytes encoded the same way.

`concurrency` workers each run operation after operation until the level's count is done.
Every GET reply is checked against the value written, so a broken path reports errors
instead of a fast number. The paths take turns, cell by cell, for `rounds` rounds, so load
from anything else on the machine falls on all three alike; the summary gives the median
of the rounds, and each ratio (a corral path's operations per second over Redis's, same
operation and concurrency) is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aioredis

from corral.bus import BusSettings, connect
from corral.natsd import NatsServer
from corral.runtime import run_main
from corral.sdk.state import StateClient

Operation = Callable[[int], Awaitable[None]]  # does operation number n, raises on a wrong result

READY_TIMEOUT = 30.0
DEFAULT_OPS = 4000
DEFAULT_KEYS = 1000
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def value_of(n: int) -> dict[str, Any]:
    return {"n": n, "name": f"item-{n}", "tags": ["a", "b"], "ok": True}


@dataclass
class Result:
    round: int
    path: str
    op: str
    concurrency: int
    ops: int
    errors: int
    seconds: float
    ops_per_second: float
    p50_ms: float
    p99_ms: float


def percentile(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def drive(operation: Operation, concurrency: int, total: int) -> tuple[list[float], int, float]:
    """Run `total` operations with `concurrency` workers; (latencies, errors, seconds)."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))
    clock = time.perf_counter

    async def worker() -> None:
        nonlocal errors
        for n in counter:
            started = clock()
            try:
                await operation(n)
            except Exception:
                errors += 1
                continue
            latencies.append(clock() - started)

    started = clock()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, clock() - started


async def measure(
    round_: int, path: str, op: str, operation: Operation, concurrency: int, total: int
) -> Result:
    await drive(operation, concurrency, min(total, 500))  # warm up connections and caches
    latencies, errors, seconds = await drive(operation, concurrency, total)
    ordered = sorted(latencies)
    return Result(
        round=round_,
        path=path,
        op=op,
        concurrency=concurrency,
        ops=len(ordered),
        errors=errors,
        seconds=round(seconds, 4),
        ops_per_second=round(len(ordered) / seconds, 1) if seconds else 0.0,
        p50_ms=round(1000 * percentile(ordered, 0.5), 3),
        p99_ms=round(1000 * percentile(ordered, 0.99), 3),
    )


# --- the three paths ------------------------------------------------------------------------------


def corral_operations(state: StateClient, keys: int, direct: bool) -> dict[str, Operation]:
    target = state.direct if direct else state

    async def set_(n: int) -> None:
        await target.set(f"bench.k{n % keys}", value_of(n % keys))

    async def get(n: int) -> None:
        entry = await target.get(f"bench.k{n % keys}")
        if entry.value != value_of(n % keys):
            raise ValueError(f"wrong value for bench.k{n % keys}: {entry.value!r}")

    return {"set": set_, "get": get}


def redis_operations(client: aioredis.Redis, keys: int, namespace: str) -> dict[str, Operation]:
    async def set_(n: int) -> None:
        await client.set(f"{namespace}:bench.k{n % keys}", _encode(value_of(n % keys)))

    async def get(n: int) -> None:
        data = await client.get(f"{namespace}:bench.k{n % keys}")
        if data is None or _decode(data) != value_of(n % keys):
            raise ValueError(f"wrong value for bench.k{n % keys}")

    return {"set": set_, "get": get}


# --- processes ----------------------------------------------------------------------------------


def start_state_service(url: str, prefix: str, log_file: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "NATS_URL": url,
        "CORRAL_PREFIX": prefix,
        "CORRAL_METRICS_PORT": "-1",
        "CORRAL_LOG_LEVEL": "WARNING",
    }
    with log_file.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "corral.state"], env=env, stdout=log, stderr=subprocess.STDOUT
        )


async def wait_ready(state: StateClient, process: subprocess.Popen[bytes], log_file: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = await asyncio.to_thread(log_file.read_text)
            raise RuntimeError(f"the state service exited with {process.returncode}:\n{log}")
        try:
            await state.keys("bench.*")
            return
        except Exception:
            await asyncio.sleep(0.1)
    raise TimeoutError(f"the state service did not answer within {READY_TIMEOUT:g}s")


# --- the run ------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> list[Result]:
    levels = [int(level) for level in args.concurrency.split(",")]
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="corral-bench-state-"))
    server = None
    if args.nats_url:
        url = args.nats_url
    else:
        server = NatsServer(workdir / "nats")
        server.start()
        url = server.url
    service = start_state_service(url, prefix, workdir / "state.log")
    nc = await connect(BusSettings(servers=[url], name="bench-state"))
    redis_client = aioredis.Redis.from_url(args.redis_url)
    try:
        state = StateClient(nc, prefix=prefix)
        await wait_ready(state, service, workdir / "state.log")
        await redis_client.ping()
        paths = {
            "service": corral_operations(state, args.keys, direct=False),
            "direct": corral_operations(state, args.keys, direct=True),
            "redis": redis_operations(redis_client, args.keys, prefix),
        }
        results = []
        for round_ in range(1, args.rounds + 1):
            for concurrency in levels:
                for op in ("set", "get"):  # set first: get checks what set wrote
                    for path, operations in paths.items():
                        result = await measure(round_, path, op, operations[op], concurrency, args.ops)
                        results.append(result)
                        print(_row(result), flush=True)
        return results
    finally:
        await redis_client.delete(*[f"{prefix}:bench.k{n}" for n in range(args.keys)])
        await redis_client.aclose()
        await nc.close()
        service.terminate()
        service.wait(10)
        if server is not None:
            server.stop()


def _row(r: Result) -> str:
    return (
        f"round {r.round}  {r.path:<8} {r.op:<4} c={r.concurrency:<4} {r.ops_per_second:>10,.0f} ops/s  "
        f"p50 {r.p50_ms:7.3f} ms  p99 {r.p99_ms:7.3f} ms  errors {r.errors}"
    )


def median_rates(results: Sequence[Result]) -> dict[tuple[str, str, int], float]:
    """(path, op, concurrency) -> the median of its rounds' operations per second."""
    cells: dict[tuple[str, str, int], list[float]] = {}
    for r in results:
        cells.setdefault((r.path, r.op, r.concurrency), []).append(r.ops_per_second)
    return {cell: statistics.median(rates) for cell, rates in cells.items()}


def ratios(results: Sequence[Result]) -> list[dict[str, Any]]:
    """Each corral path against Redis: the median, lowest and highest of the per-round ratios."""
    redis_rate = {(r.round, r.op, r.concurrency): r.ops_per_second for r in results if r.path == "redis"}
    cells: dict[tuple[str, str, int], list[float]] = {}
    for r in results:
        base = redis_rate.get((r.round, r.op, r.concurrency))
        if r.path != "redis" and base:
            cells.setdefault((r.path, r.op, r.concurrency), []).append(r.ops_per_second / base)
    return [
        {
            "path": path,
            "op": op,
            "concurrency": c,
            "vs_redis": round(statistics.median(values), 3),
            "lowest": round(min(values), 3),
            "highest": round(max(values), 3),
        }
        for (path, op, c), values in cells.items()
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--ops", type=int, default=DEFAULT_OPS, help="operations per measurement")
    parser.add_argument("--concurrency", default="1,32", help="comma-separated levels (default 1,32)")
    parser.add_argument("--keys", type=int, default=DEFAULT_KEYS, help="distinct keys (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every measurement (default 3)")
    parser.add_argument("--nats-url", default=None, help="use this server instead of starting one")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    results = run_main(lambda: run(args))
    load_after = os.getloadavg()[0]
    print(
        f"\nmedian of {args.rounds} rounds (load average {load_before:.1f} before, {load_after:.1f} after):"
    )
    for (path, op, c), rate in median_rates(results).items():
        print(f"  {path:<8} {op:<4} c={c:<4} {rate:>10,.0f} ops/s")
    print(
        "\nops/s as a fraction of Redis, same operation and concurrency (median [lowest-highest] of rounds):"
    )
    for row in ratios(results):
        print(
            f"  {row['path']:<8} {row['op']:<4} c={row['concurrency']:<4} {row['vs_redis']:.2f}x "
            f"[{row['lowest']:.2f}-{row['highest']:.2f}]"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"results": [asdict(r) for r in results], "ratios": ratios(results)}, indent=2)
        )


if __name__ == "__main__":
    main()
