"""What each layer of the corral call path costs, against a bare nats-py echo.

    python bench/call_path.py [--requests N] [--concurrency 1,64,256] [--repeat N] [--nats-url URL]
                              [--json PATH]

One run starts a nats-server (unless --nats-url is given) and three processes from
`bench/echo_processes.py`, then measures, from one nats-py client in this process:

* raw:          request-reply to a bare nats-py responder (`msg.respond(msg.data)`);
* sdk:          a request straight to the SDK module's subject `<prefix>.mod.echo.echo`;
* orchestrated: `<prefix>.send.echo` with an Envelope, through the OrchestratorService,
                which forwards the payload to the same SDK module.

For each concurrency level, `concurrency` asyncio workers each send request after request
until the level's request count is reached. Every reply is decoded and checked (the echoed
payload, and `success` for the corral paths), so a broken path reports errors instead of a
fast number. Throughput counts valid replies only; latencies are of valid replies.

`--repeat N` measures every path and level N times, interleaved (raw, sdk, orchestrated, raw, ...),
and adds a table of medians: on a shared machine a single run says more about the neighbours
than about the code. Ratios and added latencies are taken within a round, then their median.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import nats
import nats.errors
import psutil
from nats.aio.client import Client

from corral.natsd import NatsServer

T = TypeVar("T")

ECHO_SCRIPT = Path(__file__).resolve().with_name("echo_processes.py")
ROLES = ("raw", "sdk", "orchestrator")
PAYLOAD: dict[str, Any] = {"x": 1, "s": "hello"}
DEFAULT_CONCURRENCY = "1,64,256"
DEFAULT_REQUESTS_SERIAL = 5000  # at concurrency 1
DEFAULT_REQUESTS_CONCURRENT = 20000  # at every other level
READY_TIMEOUT = 30.0  # seconds for all three processes to answer
CONNECT_TIMEOUT = 15.0  # seconds for the bench's own client to connect
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
PATH_DEADLINE = 120.0  # seconds one measurement may take before its workers give up
MAX_ERRORS = 100  # a measurement stops early after this many bad replies

_decode = msgspec.json.Decoder().decode


# --- the three paths ----------------------------------------------------------------------------


def check_raw(data: bytes) -> str | None:
    """None if `data` is the echoed payload, else what is wrong with it."""
    try:
        reply = _decode(data)
    except msgspec.DecodeError:
        return "reply is not JSON"
    return None if reply == PAYLOAD else "reply is not the payload"


def check_response(data: bytes) -> str | None:
    """None if `data` is a successful corral Response echoing the payload."""
    try:
        reply = _decode(data)
    except msgspec.DecodeError:
        return "reply is not JSON"
    if not isinstance(reply, dict):
        return "reply is not a JSON object"
    if reply.get("success") is not True:
        payload = reply.get("payload")
        code = payload.get("code") if isinstance(payload, dict) else None
        return f"success is not true ({code or reply.get('type')})"
    if reply.get("payload") != PAYLOAD:
        return "Response.payload is not the payload"
    return None


@dataclass(frozen=True)
class CallPath:
    name: str
    subject: str
    body: bytes
    check: Callable[[bytes], str | None]
    roles: tuple[str, ...]  # the processes that must be up for it to answer


def call_paths(prefix: str) -> list[CallPath]:
    payload = msgspec.json.encode(PAYLOAD)
    envelope = msgspec.json.encode({"type": "echo", "payload": PAYLOAD})
    return [
        CallPath("raw", f"{prefix}.raw.echo", payload, check_raw, ("raw",)),
        CallPath("sdk", f"{prefix}.mod.echo.echo", payload, check_response, ("sdk",)),
        CallPath("orchestrated", f"{prefix}.send.echo", envelope, check_response, ("sdk", "orchestrator")),
    ]


# --- child processes ----------------------------------------------------------------------------


@dataclass
class Child:
    role: str
    process: subprocess.Popen[bytes]
    log_file: Path

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_child(role: str, url: str, prefix: str, log_dir: Path) -> Child:
    log_file = log_dir / f"{role}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(ECHO_SCRIPT), role, "--nats-url", url, "--prefix", prefix],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return Child(role, process, log_file)


def stop_children(children: Sequence[Child]) -> None:
    """SIGTERM all, then wait for each; SIGKILL whoever outlives the grace period."""
    for child in children:
        if child.process.poll() is None:
            child.process.terminate()
    for child in children:
        try:
            child.process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            print(f"{child.role} (pid {child.process.pid}) ignored SIGTERM; killing it", file=sys.stderr)
            child.process.kill()
            child.process.wait()


async def wait_ready(nc: Client, path: CallPath, children: dict[str, Child]) -> None:
    """Send the path's request until a valid reply comes back; raise after READY_TIMEOUT."""
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no attempt"
    while time.monotonic() < deadline:
        for role in path.roles:
            child = children[role]
            if child.process.poll() is not None:
                raise RuntimeError(
                    f"{role} process exited with code {child.process.returncode} before it was ready:\n"
                    f"{child.log_tail()}"
                )
        try:
            reply = await nc.request(path.subject, path.body, timeout=0.5)
        except (TimeoutError, nats.errors.Error) as exc:
            last = repr(exc)
        else:
            problem = path.check(reply.data)
            if problem is None:
                return
            last = f"{problem}: {reply.data[:300]!r}"
        await asyncio.sleep(0.05)
    logs = "\n".join(f"--- {role} ---\n{children[role].log_tail()}" for role in path.roles)
    raise TimeoutError(f"path {path.name} did not answer within {READY_TIMEOUT:g}s (last: {last})\n{logs}")


# --- measuring ----------------------------------------------------------------------------------


@dataclass
class Result:
    path: str
    concurrency: int
    requests: int  # asked for
    ok: int  # valid replies
    errors: int
    error_kinds: dict[str, int]
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # per process, during the measurement
    other_cores: float = 0.0  # CPU load on the machine from anything but the bench's processes
    steal_cores: float = 0.0
    warmup_errors: int = 0
    round: int = 0  # which repetition (--repeat)

    @property
    def cpu_us_per_request(self) -> float:
        return 1e6 * sum(self.cpu_seconds.values()) / self.ok if self.ok else math.nan


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


@dataclass
class Run:
    latencies: list[float]
    errors: Counter[str]
    seconds: float


async def drive(nc: Client, path: CallPath, concurrency: int, total: int, timeout: float) -> Run:
    """`concurrency` workers send `total` requests in all; each one waits for its reply before the next."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    give_up = time.monotonic() + PATH_DEADLINE
    subject, body, check, request = path.subject, path.body, path.check, nc.request
    clock = time.perf_counter

    async def worker(count: int) -> None:
        for _ in range(count):
            if errors.total() >= MAX_ERRORS or time.monotonic() > give_up:
                return
            started = clock()
            try:
                reply = await request(subject, body, timeout=timeout)
            except (TimeoutError, nats.errors.Error) as exc:
                errors[type(exc).__name__] += 1
                continue
            elapsed = clock() - started
            problem = check(reply.data)
            if problem is None:
                latencies.append(elapsed)
            else:
                errors[problem] += 1

    started = clock()
    await asyncio.gather(*(worker(count) for count in split(total, concurrency) if count))
    return Run(latencies, errors, clock() - started)


def _machine_cpu() -> tuple[float, float]:
    """System-wide (busy, steal) CPU seconds since boot, all cores summed."""
    t = psutil.cpu_times()
    busy = t.user + t.system + sum(getattr(t, name, 0.0) for name in ("nice", "irq", "softirq"))
    return busy, getattr(t, "steal", 0.0)


@dataclass
class CpuUse:
    per_process: dict[str, float]  # CPU seconds of each watched process
    other_cores: float  # mean cores busy outside the watched processes: other load on the machine
    steal_cores: float  # mean cores the hypervisor gave to someone else


class CpuMeter:
    """CPU time each watched process, and the rest of the machine, spend between `start()` and `stop()`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._before: dict[str, float] = {}
        self._machine_before = (0.0, 0.0)
        self._started = 0.0

    def _read(self) -> dict[str, float]:
        seconds: dict[str, float] = {}
        for name, process in self.processes.items():
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            seconds[name] = times.user + times.system
        return seconds

    def start(self) -> None:
        self._before = self._read()
        self._machine_before = _machine_cpu()
        self._started = time.perf_counter()

    def stop(self) -> CpuUse:
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        after = self._read()
        busy, steal = _machine_cpu()
        ours = {name: round(after[name] - self._before[name], 4) for name in after if name in self._before}
        other = max(0.0, busy - self._machine_before[0] - sum(ours.values()))
        return CpuUse(ours, round(other / elapsed, 3), round((steal - self._machine_before[1]) / elapsed, 3))


async def measure(
    nc: Client, path: CallPath, concurrency: int, total: int, warmup: int, timeout: float, cpu: CpuMeter
) -> Result:
    warm = await drive(nc, path, concurrency, warmup, timeout) if warmup else Run([], Counter(), 0.0)
    gc.collect()
    cpu.start()
    run = await drive(nc, path, concurrency, total, timeout)
    cpu_use = cpu.stop()
    ordered = sorted(run.latencies)
    ok = len(ordered)
    return Result(
        path=path.name,
        concurrency=concurrency,
        requests=total,
        ok=ok,
        errors=run.errors.total(),
        error_kinds=dict(run.errors),
        seconds=round(run.seconds, 4),
        rps=ok / run.seconds if run.seconds > 0 else 0.0,
        p50_ms=1000 * percentile(ordered, 0.50),
        p99_ms=1000 * percentile(ordered, 0.99),
        mean_ms=1000 * sum(ordered) / ok if ok else math.nan,
        max_ms=1000 * ordered[-1] if ordered else math.nan,
        cpu_seconds=cpu_use.per_process,
        other_cores=cpu_use.other_cores,
        steal_cores=cpu_use.steal_cores,
        warmup_errors=warm.errors.total(),
    )


@dataclass
class Comparison:
    path: str
    concurrency: int
    round: int
    throughput_vs_raw: float
    added_p50_us: float
    added_p99_us: float


def compare(results: Sequence[Result]) -> list[Comparison]:
    raw = {(r.round, r.concurrency): r for r in results if r.path == "raw"}
    comparisons = []
    for r in results:
        base = raw.get((r.round, r.concurrency))
        if r.path == "raw" or base is None:
            continue
        comparisons.append(
            Comparison(
                path=r.path,
                concurrency=r.concurrency,
                round=r.round,
                throughput_vs_raw=r.rps / base.rps if base.rps else math.nan,
                added_p50_us=1000 * (r.p50_ms - base.p50_ms),
                added_p99_us=1000 * (r.p99_ms - base.p99_ms),
            )
        )
    return comparisons


@dataclass
class Summary:
    """Medians over the rounds of one path at one level."""

    path: str
    concurrency: int
    rounds: int
    rps: float
    p50_ms: float
    p99_ms: float
    throughput_vs_raw: float
    vs_raw_min: float
    vs_raw_max: float
    added_p50_us: float
    added_p99_us: float
    other_cores: float


def _median(values: Sequence[float]) -> float:
    ordered = sorted(v for v in values if not math.isnan(v))
    if not ordered:
        return math.nan
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def summarize(results: Sequence[Result], comparisons: Sequence[Comparison]) -> list[Summary]:
    summaries = []
    keys = list(dict.fromkeys((r.path, r.concurrency) for r in results))
    for path, concurrency in keys:
        mine = [r for r in results if (r.path, r.concurrency) == (path, concurrency)]
        comps = [c for c in comparisons if (c.path, c.concurrency) == (path, concurrency)]
        ratios = [c.throughput_vs_raw for c in comps] or [1.0]
        summaries.append(
            Summary(
                path=path,
                concurrency=concurrency,
                rounds=len(mine),
                rps=_median([r.rps for r in mine]),
                p50_ms=_median([r.p50_ms for r in mine]),
                p99_ms=_median([r.p99_ms for r in mine]),
                throughput_vs_raw=_median(ratios),
                vs_raw_min=min(ratios),
                vs_raw_max=max(ratios),
                added_p50_us=_median([c.added_p50_us for c in comps]) if comps else math.nan,
                added_p99_us=_median([c.added_p99_us for c in comps]) if comps else math.nan,
                other_cores=_median([r.other_cores for r in mine]),
            )
        )
    return summaries


# --- the run ------------------------------------------------------------------------------------


@dataclass
class Options:
    levels: list[int]
    requests: int | None
    warmup: int
    timeout: float
    repeat: int = 1

    def requests_at(self, concurrency: int) -> int:
        if self.requests is not None:
            return self.requests
        return DEFAULT_REQUESTS_SERIAL if concurrency == 1 else DEFAULT_REQUESTS_CONCURRENT


@dataclass
class Report:
    machine: dict[str, Any]
    config: dict[str, Any]
    results: list[Result]
    comparisons: list[Comparison]
    summaries: list[Summary]
    client_errors: list[str]  # asynchronous errors the bench's NATS client reported (slow consumer, ...)


def package_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or "?"


def machine_info(nc: Client) -> dict[str, Any]:
    try:
        version = nc.connected_server_version
        server = f"{version.major}.{version.minor}.{version.patch}"
    except (AttributeError, ValueError):
        server = "?"
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "cpu_model": _cpu_model(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "nats_server": server,
        "nats_py": package_version("nats-py"),
        "msgspec": package_version("msgspec"),
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


async def bench(
    opts: Options, url: str, prefix: str, children: dict[str, Child], server_pid: int | None
) -> Report:
    client_errors: list[str] = []

    async def on_error(exc: Exception) -> None:  # nats-py's default prints a traceback per failed attempt
        client_errors.append(repr(exc))

    # Bounded: nats-py retries the first connection forever unless max_reconnect_attempts > 0.
    nc = await asyncio.wait_for(
        nats.connect(
            url,
            name="bench-call-path",
            error_cb=on_error,
            connect_timeout=5,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.5,
        ),
        CONNECT_TIMEOUT,
    )
    try:
        paths = call_paths(prefix)
        for path in paths:
            await wait_ready(nc, path, children)
        pids = {role: child.process.pid for role, child in children.items()}
        pids["bench"] = os.getpid()
        if server_pid is not None:
            pids["nats-server"] = server_pid
        cpu = CpuMeter(pids)
        results: list[Result] = []
        for round_ in range(opts.repeat):
            for concurrency in opts.levels:
                total = opts.requests_at(concurrency)
                for path in paths:
                    result = await measure(nc, path, concurrency, total, opts.warmup, opts.timeout, cpu)
                    result.round = round_
                    results.append(result)
                    print(
                        f"  [{round_ + 1}/{opts.repeat}] {path.name:<13} c={concurrency:<4} "
                        f"{result.rps:>9,.0f} req/s  "
                        f"p50 {result.p50_ms:7.3f} ms  p99 {result.p99_ms:7.3f} ms  errors {result.errors}",
                        file=sys.stderr,
                        flush=True,
                    )
        machine = machine_info(nc)
    finally:
        await nc.close()
    config = {
        "concurrency": opts.levels,
        "requests": {str(c): opts.requests_at(c) for c in opts.levels},
        "warmup": opts.warmup,
        "repeat": opts.repeat,
        "request_timeout_s": opts.timeout,
        "payload": PAYLOAD,
        "prefix": prefix,
        "nats_url": url,
        "own_nats_server": server_pid is not None,
    }
    comparisons = compare(results)
    return Report(machine, config, results, comparisons, summarize(results, comparisons), client_errors)


def run_async(main: Callable[[], Coroutine[Any, Any, T]]) -> tuple[T, str]:
    """Run on uvloop when it is installed; also say which loop ran."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main()), "asyncio"
    return uvloop.run(main()), f"uvloop {package_version('uvloop')}"


def run(opts: Options, nats_url: str | None) -> Report:
    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        workdir = Path(tmp)
        server: NatsServer | None = None
        children: dict[str, Child] = {}
        try:
            if nats_url is None:
                server = NatsServer(workdir / "nats")
                server.start()
                nats_url = server.url
            for role in ROLES:
                children[role] = start_child(role, nats_url, prefix, workdir)
            url = nats_url
            server_pid = server.pid if server is not None else None
            report, loop_name = run_async(lambda: bench(opts, url, prefix, children, server_pid))
            report.machine["event_loop"] = loop_name
            return report
        finally:
            stop_children(list(children.values()))
            if server is not None:
                server.stop()


# --- output -------------------------------------------------------------------------------------


def fmt(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def render(report: Report) -> str:
    m = report.machine
    lines = [
        f"machine: {m['cpu_count']} cpus ({m['cpus_usable']} usable, {m['cpu_model']}) | {m['python']} | "
        f"{m['platform']} | nats-server {m['nats_server']} | nats-py {m['nats_py']} | loop {m['event_loop']}",
        "",
    ]
    repeated = report.config.get("repeat", 1) > 1
    header = (
        f"{'path':<13} {'conc':>5} {'requests':>8} {'errors':>6} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'vs raw':>7} {'+p50 us':>8} {'+p99 us':>8} {'cpu us/req':>10} {'other':>5}"
    )
    if repeated:
        header = f"{'round':>5} " + header
    lines += [header, "-" * len(header)]
    by_key = {(c.path, c.concurrency, c.round): c for c in report.comparisons}
    for r in report.results:
        comp = by_key.get((r.path, r.concurrency, r.round))
        ratio = fmt(comp.throughput_vs_raw, ".3f") if comp else "1.000"
        add50 = fmt(comp.added_p50_us, "+.0f") if comp else "-"
        add99 = fmt(comp.added_p99_us, "+.0f") if comp else "-"
        p50, p99, cpu = (
            fmt(r.p50_ms, ".3f"),
            fmt(r.p99_ms, ".3f"),
            fmt(r.cpu_us_per_request, ".0f"),
        )
        lines.append(
            (f"{r.round + 1:>5} " if repeated else "")
            + f"{r.path:<13} {r.concurrency:>5} {r.ok:>8} {r.errors:>6} {r.rps:>9,.0f} {p50:>8} {p99:>8} "
            f"{ratio:>7} {add50:>8} {add99:>8} {cpu:>10} {r.other_cores:>5.2f}"
        )
    if repeated:
        lines += ["", *render_medians(report.summaries)]
    lines.append("")
    lines.append(
        "vs raw = throughput / raw throughput at the same concurrency; +p50/+p99 = added latency over raw;"
    )
    lines.append(
        "cpu us/req = CPU time of all processes (bench, services, nats-server if ours) per valid reply;"
    )
    lines.append(
        "other = mean cores busy with anything else on the machine during the measurement (noise: want ~0)."
    )
    failed = [r for r in report.results if r.errors or r.warmup_errors]
    for r in failed:
        lines.append(
            f"ERRORS {r.path} c={r.concurrency}: {r.error_kinds} (warm-up errors: {r.warmup_errors})"
        )
    if report.client_errors:
        lines.append(f"NATS client errors: {len(report.client_errors)}, first: {report.client_errors[0]}")
    return "\n".join(lines)


def render_medians(summaries: Sequence[Summary]) -> list[str]:
    header = (
        f"{'median of':<13} {'conc':>5} {'rounds':>6} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'vs raw':>7} {'(min-max)':>13} {'+p50 us':>8} {'+p99 us':>8} {'other':>5}"
    )
    lines = [header, "-" * len(header)]
    for s in summaries:
        spread = f"{s.vs_raw_min:.3f}-{s.vs_raw_max:.3f}" if s.path != "raw" else "-"
        lines.append(
            f"{s.path:<13} {s.concurrency:>5} {s.rounds:>6} {s.rps:>9,.0f} {fmt(s.p50_ms, '.3f'):>8} "
            f"{fmt(s.p99_ms, '.3f'):>8} {s.throughput_vs_raw:>7.3f} {spread:>13} "
            f"{fmt(s.added_p50_us, '+.0f'):>8} {fmt(s.added_p99_us, '+.0f'):>8} {s.other_cores:>5.2f}"
        )
    return lines


def no_nan(value: Any) -> Any:
    """JSON has no NaN: a figure that could not be computed (no valid reply) becomes null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [no_nan(v) for v in value]
    return value


def to_json(report: Report) -> dict[str, Any]:
    results = []
    for r in report.results:
        item = asdict(r)
        item["cpu_us_per_request"] = r.cpu_us_per_request
        results.append(item)
    document = {
        "machine": report.machine,
        "config": report.config,
        "results": results,
        "comparisons": [asdict(c) for c in report.comparisons],
        "medians": [asdict(s) for s in report.summaries],
        "client_errors": report.client_errors,
    }
    return dict(no_nan(document))


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--concurrency takes integers separated by commas, got {text!r}"
        ) from None
    if not levels or any(level < 1 for level in levels):
        raise argparse.ArgumentTypeError(f"--concurrency levels must be positive, got {text!r}")
    return levels


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def raise_interrupt(signum: int, frame: object) -> None:
    # SIGTERM as Ctrl-C: unwind through the `finally` that stops the child processes.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests",
        type=positive_int,
        help=f"requests per path and level (default {DEFAULT_REQUESTS_SERIAL} at concurrency 1, "
        f"{DEFAULT_REQUESTS_CONCURRENT} otherwise)",
    )
    parser.add_argument("--concurrency", type=parse_levels, default=parse_levels(DEFAULT_CONCURRENCY))
    parser.add_argument(
        "--warmup", type=int, default=500, help="requests before each measurement (default 500)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    parser.add_argument("--nats-url", help="use this NATS server instead of starting one")
    parser.add_argument(
        "--repeat",
        type=positive_int,
        default=1,
        help="measure everything this many times, interleaved, and add a table of medians (default 1)",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    opts = Options(
        levels=args.concurrency,
        requests=args.requests,
        warmup=max(0, args.warmup),
        timeout=args.timeout,
        repeat=args.repeat,
    )

    signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        report = run(opts, args.nats_url)
    except KeyboardInterrupt:
        print("interrupted; child processes stopped", file=sys.stderr)
        return 130
    except (TimeoutError, RuntimeError, OSError, nats.errors.Error) as exc:
        # Setup failures: no NATS, a process that died or never answered (its log tail is in `exc`).
        print(f"bench failed: {exc!r}" if not str(exc) else f"bench failed: {exc}", file=sys.stderr)
        return 2
    print(render(report))
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(report), indent=2, allow_nan=False, default=str) + "\n")
        print(f"\nwrote {args.json}")
    return 1 if any(r.errors for r in report.results) else 0


if __name__ == "__main__":
    sys.exit(main())
