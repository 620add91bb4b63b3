"""No-op task throughput and latency: corral's scheduler against Celery, Taskiq and raw JetStream.

    python bench/tasks.py [--tasks N] [--systems celery,taskiq,raw,corral,corral-batch]
                          [--redis-url redis://127.0.0.1:6379/13] [--nats-url URL] [--json PATH]

One run starts a nats-server (unless --nats-url is given) and measures each system in turn on
it, with one worker process each:

* celery:       Celery 5, Redis broker, `acks_late`, prefork pool of 2 processes, no results;
* taskiq:       Taskiq with taskiq-nats' pull-based JetStream broker, `--workers 1`, its defaults;
* raw:          nats-py `js.publish` into a work-queue stream, one pull consumer that acks
                (fetch 256): the ceiling for any design on this bus;
* corral:       the scheduler service and one SDK Worker process, `Client.submit`;
* corral-batch: the same processes, `Client.submit_many` in batches.

Every system runs the same task (bench/task_processes.py): one line appended to a file, so the
bench learns what ran and when without asking the systems. For each system, in order:

1. end to end: N tasks submitted as fast as the client allows (`--concurrency` submissions in
   flight, Celery's blocking client from one thread) while the worker runs; timed from the
   first submission until every task has run and the broker holds no unacknowledged message.
   The submission rate under that load is reported too;
2. latency: `--latency-tasks` submitted at a steady `--rate` per second (below every system's
   capacity, so queueing does not dominate); p50/p99 of the time from just before the submit
   call to the start of the task (wall clocks of one machine);
3. submit only: N tasks to a queue no worker consumes (a Celery queue nobody listens on, a
   Taskiq stream and raw subject no consumer takes, a corral capability no worker offers).

Every loop is bounded in count and in time (`--deadline` per phase); a phase that does not
finish reports how far it got instead of a rate. Redis: the bench uses its own database number
(`--redis-url`), refuses one that holds keys, and flushes it at the end.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import psutil
from call_path import (
    Child,
    CpuMeter,
    fmt,
    machine_info,
    no_nan,
    package_version,
    percentile,
    positive_int,
    raise_interrupt,
    run_async,
)
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext, api
from task_processes import (
    RAW_DURABLE,
    TASK,
    make_celery,
    make_taskiq,
    raw_stream,
    raw_subject,
)

from corral.natsd import NatsServer

HERE = Path(__file__).resolve().parent
PROCESSES = HERE / "task_processes.py"
SYSTEMS = ("celery", "taskiq", "raw", "corral", "corral-batch")
DEFAULT_TASKS = 10_000
DEFAULT_WARMUP = 500
DEFAULT_CONCURRENCY = 64
DEFAULT_BATCH = 100
DEFAULT_WORKER_CONCURRENCY = 64  # tasks one corral Worker runs at once
DEFAULT_RATE = 200.0  # tasks per second in the latency phase
DEFAULT_LATENCY_TASKS = 1_000
DEFAULT_DEADLINE = 120.0  # seconds one phase may take
READY_TIMEOUT = 60.0  # seconds for a system's processes to run a first task
STOP_GRACE = 10.0
POLL = 0.002  # seconds between looks at the task log and the broker

_encode = msgspec.json.encode


# --- what ran: the task log ------------------------------------------------------------------------


class TaskLog:
    """Reads the lines the workers append (`<phase> <i> <submitted> <started>`), as they come."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.started: dict[str, dict[int, tuple[float, float]]] = {}
        self.duplicates: dict[str, int] = {}

    def poll(self) -> None:
        try:
            with self.path.open("rb") as file:
                file.seek(self._offset)
                chunk = file.read()
        except FileNotFoundError:
            return
        self._offset += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            phase, index, submitted, started = line.decode().split()
            seen = self.started.setdefault(phase, {})
            if int(index) in seen:  # at-least-once systems may run a task twice
                self.duplicates[phase] = self.duplicates.get(phase, 0) + 1
            else:
                seen[int(index)] = (float(submitted), float(started))

    def count(self, phase: str) -> int:
        return len(self.started.get(phase, {}))


def payloads(phase: str, count: int) -> list[dict[str, Any]]:
    return [{"p": phase, "i": i, "t": 0.0} for i in range(count)]


def stamp(payload: dict[str, Any]) -> dict[str, Any]:
    """Set the submission time just before the submit call."""
    payload["t"] = time.time()
    return payload


async def bounded_gather(
    items: Sequence[dict[str, Any]], submit: Callable[[dict[str, Any]], Awaitable[None]], concurrency: int
) -> None:
    """`concurrency` submitters share `items`; each awaits its acknowledgement before the next."""
    cursor = iter(items)

    async def submitter() -> None:
        for item in cursor:
            await submit(stamp(item))

    await asyncio.gather(*(submitter() for _ in range(min(concurrency, len(items)))))


# --- the systems -----------------------------------------------------------------------------------


class System(abc.ABC):
    """One system under test: its worker processes, a client, and how to tell it has drained.
    Each has its own subject prefix (so its own streams) and its own task log."""

    name = "?"

    def __init__(self, ctx: Context, round_: int = 0) -> None:
        self.ctx = ctx
        self.prefix = f"{ctx.prefix}-{self.name}-r{round_}"
        self.log = TaskLog(ctx.workdir / f"{self.prefix}-tasks.log")
        self.children: list[Child] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log_file = self.ctx.workdir / f"{self.prefix}-{name}.log"
        full_env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "BENCH_TASK_LOG": str(self.log.path),
            **(env or {}),
        }
        with log_file.open("wb") as log:
            process = subprocess.Popen(
                argv, cwd=HERE, env=full_env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.children.append(Child(name, process, log_file))

    def check_alive(self) -> None:
        for child in self.children:
            if child.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name}: {child.role} exited with code {child.process.returncode}:\n"
                    f"{child.log_tail()}"
                )

    def pids(self) -> dict[str, int]:
        """Every process of this system, pool children included (psutil, at the time of asking)."""
        pids: dict[str, int] = {}
        for child in self.children:
            pids[child.role] = child.process.pid
            with contextlib.suppress(psutil.Error):
                for n, sub in enumerate(psutil.Process(child.process.pid).children(recursive=True)):
                    pids[f"{child.role}.{n}"] = sub.pid
        return pids

    @abc.abstractmethod
    async def start(self) -> None:
        """Start the worker processes (they may still be connecting when this returns)."""

    @abc.abstractmethod
    async def submit(self, payload: dict[str, Any]) -> None:
        """Submit one task and wait for the system to acknowledge the submission."""

    async def submit_all(self, items: Sequence[dict[str, Any]]) -> None:
        await bounded_gather(items, self.submit, self.ctx.opts.concurrency)

    @abc.abstractmethod
    async def submit_idle(self, items: Sequence[dict[str, Any]]) -> None:
        """Submit to a queue no worker consumes."""

    @abc.abstractmethod
    async def drained(self) -> bool:
        """No message is waiting or unacknowledged."""

    async def stop(self) -> None:
        for child in self.children:
            if child.process.poll() is None:
                child.process.terminate()
        for child in self.children:
            try:
                await asyncio.to_thread(child.process.wait, STOP_GRACE)
            except subprocess.TimeoutExpired:
                print(f"{self.name}: {child.role} ignored SIGTERM; killing it", file=sys.stderr)
                child.process.kill()
                await asyncio.to_thread(child.process.wait)


async def consumers_drained(js: JetStreamContext, stream: str, durable: str | None = None) -> bool:
    """True when the stream's consumers (or one of them) have nothing pending or unacked."""
    if durable is not None:
        infos = [await js.consumer_info(stream, durable)]
    else:
        infos = await js.consumers_info(stream)
    return all(not info.num_pending and not info.num_ack_pending for info in infos)


class CelerySystem(System):
    name = "celery"
    QUEUE = "celery"  # Celery's default queue: a Redis list
    IDLE_QUEUE = "bench-idle"  # a queue no worker consumes

    async def start(self) -> None:
        import redis.asyncio as aioredis

        url = self.ctx.opts.redis_url
        self.redis = aioredis.Redis.from_url(url)
        if keys := await self.redis.dbsize():
            raise RuntimeError(
                f"Redis database {url} holds {keys} keys; the bench flushes its database at the end, "
                "so give it an empty one with --redis-url redis://127.0.0.1:6379/<n>"
            )
        self.app = make_celery(url)
        celery_argv = [sys.executable, "-m", "celery", "-A", "task_processes:celery_app", "worker"]
        flags = ["--pool", "prefork", "--concurrency", "2", "--loglevel", "WARNING"]
        # No gossip, mingle or heartbeat events: one worker has no peers to talk to.
        quiet = ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        self.spawn("worker", [*celery_argv, *flags, *quiet], {"BENCH_REDIS_URL": url})

    def _send(self, payload: dict[str, Any], queue: str) -> None:
        self.app.send_task(TASK, args=[payload], queue=queue)

    async def submit(self, payload: dict[str, Any]) -> None:
        await asyncio.to_thread(self._send, payload, self.QUEUE)

    def _send_all(self, items: Sequence[dict[str, Any]], queue: str) -> None:
        # Celery's client blocks; one thread submitting in a loop is how an application uses it.
        give_up = time.perf_counter() + self.ctx.opts.deadline
        for item in items:
            if time.perf_counter() > give_up:
                raise TimeoutError(
                    f"celery: submitting {len(items)} tasks took over {self.ctx.opts.deadline:g}s"
                )
            self._send(stamp(item), queue)

    async def submit_all(self, items: Sequence[dict[str, Any]]) -> None:
        await asyncio.to_thread(self._send_all, items, self.QUEUE)

    async def submit_idle(self, items: Sequence[dict[str, Any]]) -> None:
        await asyncio.to_thread(self._send_all, items, self.IDLE_QUEUE)

    async def drained(self) -> bool:
        # kombu's Redis transport keeps a delivered message in the `unacked` hash until its ack.
        waiting = await self.redis.llen(self.QUEUE)
        unacked = await self.redis.hlen("unacked")
        return not waiting and not unacked

    async def stop(self) -> None:
        await super().stop()
        if hasattr(self, "redis"):
            await self.redis.flushdb()
            await self.redis.aclose()


class TaskiqSystem(System):
    name = "taskiq"

    async def start(self) -> None:
        prefix = self.prefix
        self.broker, self.task = make_taskiq(self.ctx.nats_url, prefix)
        self.idle_broker, _ = make_taskiq(self.ctx.nats_url, prefix, idle=True)
        await self.broker.startup()  # creates the stream and the durable consumer the worker uses
        await self.idle_broker.startup()
        env = {"BENCH_NATS_URL": self.ctx.nats_url, "BENCH_PREFIX": prefix}
        argv = [sys.executable, "-m", "taskiq", "worker", "task_processes:taskiq_broker", "--workers", "1"]
        self.spawn("worker", [*argv, "--log-level", "WARNING"], env)

    async def submit(self, payload: dict[str, Any]) -> None:
        await self.task.kiq(payload)

    async def submit_idle(self, items: Sequence[dict[str, Any]]) -> None:
        kicker = self.task.kicker().with_broker(self.idle_broker)
        await bounded_gather(items, kicker.kiq, self.ctx.opts.concurrency)

    async def drained(self) -> bool:
        return await consumers_drained(self.ctx.js, self.broker.stream_name, self.broker.durable)

    async def stop(self) -> None:
        await super().stop()
        for broker in (getattr(self, "broker", None), getattr(self, "idle_broker", None)):
            if broker is not None:
                await broker.shutdown()


class RawSystem(System):
    name = "raw"

    async def start(self) -> None:
        js, prefix = self.ctx.js, self.prefix
        self.stream = raw_stream(prefix)
        await js.add_stream(
            name=self.stream,
            subjects=[raw_subject(prefix), raw_subject(prefix, idle=True)],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
        )
        await js.add_consumer(
            self.stream,
            api.ConsumerConfig(
                durable_name=RAW_DURABLE,
                filter_subject=raw_subject(prefix),
                ack_policy=api.AckPolicy.EXPLICIT,
                max_ack_pending=20_000,
            ),
        )
        argv = [sys.executable, str(PROCESSES), "raw", "--nats-url", self.ctx.nats_url, "--prefix", prefix]
        self.spawn("worker", argv)
        self.subject, self.idle_subject = raw_subject(prefix), raw_subject(prefix, idle=True)

    async def submit(self, payload: dict[str, Any]) -> None:
        await self.ctx.js.publish(self.subject, _encode(payload))

    async def submit_idle(self, items: Sequence[dict[str, Any]]) -> None:
        async def publish(payload: dict[str, Any]) -> None:
            await self.ctx.js.publish(self.idle_subject, _encode(payload))

        await bounded_gather(items, publish, self.ctx.opts.concurrency)

    async def drained(self) -> bool:
        return await consumers_drained(self.ctx.js, self.stream, RAW_DURABLE)

    async def stop(self) -> None:
        await super().stop()
        with contextlib.suppress(nats.errors.Error):
            await self.ctx.js.delete_stream(self.stream)


class CorralSystem(System):
    """The scheduler service and one SDK Worker process; the bench's connection submits."""

    name = "corral"
    IDLE_CAPABILITY = "bench-idle"  # no worker offers it, so tasks that need it stay queued

    async def start(self) -> None:
        from corral.sdk.client import Client

        url, prefix = self.ctx.nats_url, self.prefix
        env = {
            "NATS_URL": url,
            "CORRAL_PREFIX": prefix,
            "CORRAL_METRICS_PORT": "-1",
            "CORRAL_LOG_LEVEL": "WARNING",
        }
        self.spawn("scheduler", [sys.executable, "-m", "corral.scheduler"], env)
        concurrency = str(self.ctx.opts.worker_concurrency)
        argv = [sys.executable, str(PROCESSES), "corral", "--nats-url", url, "--prefix", prefix]
        self.spawn("worker", [*argv, "--concurrency", concurrency])
        self.client = Client(self.ctx.nc, prefix=prefix)
        self.stream = self.client.subjects.tasks_stream

    async def submit(self, payload: dict[str, Any]) -> None:
        await self.client.submit(TASK, payload)

    async def submit_idle(self, items: Sequence[dict[str, Any]]) -> None:
        async def submit(payload: dict[str, Any]) -> None:
            await self.client.submit(TASK, payload, capabilities=[self.IDLE_CAPABILITY])

        await bounded_gather(items, submit, self.ctx.opts.concurrency)

    async def drained(self) -> bool:
        return await consumers_drained(self.ctx.js, self.stream)


class CorralBatchSystem(CorralSystem):
    """The same processes; the client submits `--batch` tasks per `submit_many`."""

    name = "corral-batch"

    def _batches(self, items: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        size = self.ctx.opts.batch
        return [list(items[i : i + size]) for i in range(0, len(items), size)]

    async def _submit_batches(self, items: Sequence[dict[str, Any]], capabilities: list[str]) -> None:
        cursor = iter(self._batches(items))

        async def submitter() -> None:
            for batch in cursor:
                tasks = [{"type": TASK, "payload": stamp(p), "capabilities": capabilities} for p in batch]
                await self.client.submit_many(tasks)

        # The same tasks in flight as the other systems: concurrency / batch batches at once.
        in_flight = max(1, self.ctx.opts.concurrency // self.ctx.opts.batch)
        await asyncio.gather(*(submitter() for _ in range(in_flight)))

    async def submit_all(self, items: Sequence[dict[str, Any]]) -> None:
        await self._submit_batches(items, [])

    async def submit_idle(self, items: Sequence[dict[str, Any]]) -> None:
        await self._submit_batches(items, [self.IDLE_CAPABILITY])


# --- measuring ---------------------------------------------------------------------------------------


@dataclass
class Options:
    systems: list[str]
    tasks: int
    warmup: int
    concurrency: int
    batch: int
    worker_concurrency: int
    rate: float
    latency_tasks: int
    deadline: float
    redis_url: str
    rounds: int = 1


@dataclass
class Context:
    opts: Options
    nats_url: str
    prefix: str
    workdir: Path
    nc: NatsClient
    js: JetStreamContext
    server_pid: int | None
    redis_pid: int | None


@dataclass
class Result:
    system: str
    tasks: int
    ran: int  # distinct tasks that ran in the end-to-end phase
    duplicates: int  # extra runs of a task (at least once)
    e2e_seconds: float
    e2e_rate: float  # tasks per second, submit to acknowledged
    submit_rate_under_load: float  # submissions acknowledged per second while the worker ran
    latency_tasks: int
    latency_ran: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    submit_only_rate: float
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # in the end-to-end phase
    other_cores: float = 0.0
    failure: str = ""  # a phase that did not finish says why
    round: int = 0

    @property
    def cpu_us_per_task(self) -> float:
        return 1e6 * sum(self.cpu_seconds.values()) / self.ran if self.ran else math.nan


async def wait_for(
    condition: Callable[[], Awaitable[bool]], deadline: float, system: System, what: str
) -> float:
    """Poll `condition` until it holds; return the perf_counter time it was first seen to hold."""
    give_up = time.perf_counter() + deadline
    while time.perf_counter() < give_up:
        if await condition():
            return time.perf_counter()
        system.check_alive()
        await asyncio.sleep(POLL)
    raise TimeoutError(f"{system.name}: {what} did not happen within {deadline:g}s")


async def wait_ready(system: System, log: TaskLog) -> None:
    """Submit a probe task every 0.2 s until one runs: the worker is up and consuming."""
    give_up = time.perf_counter() + READY_TIMEOUT
    probe = 0
    while time.perf_counter() < give_up:
        system.check_alive()
        with contextlib.suppress(Exception):  # the system may not accept submissions yet
            await asyncio.wait_for(system.submit({"p": "ready", "i": probe, "t": 0.0}), 2.0)
        probe += 1
        for _ in range(100):
            log.poll()
            if log.count("ready"):
                return
            await asyncio.sleep(0.002)
    raise TimeoutError(f"{system.name}: no probe task ran within {READY_TIMEOUT:g}s")


async def measure(system: System, opts: Options) -> Result:
    ctx = system.ctx
    log = system.log
    await wait_ready(system, log)
    if opts.warmup:
        await run_phase(system, "warm", opts.warmup, opts)
    pids = {**system.pids(), "bench": os.getpid()}
    if ctx.server_pid is not None:
        pids["nats-server"] = ctx.server_pid
    if system.name == "celery" and ctx.redis_pid is not None:
        pids["redis-server"] = ctx.redis_pid
    cpu = CpuMeter(pids)
    cpu.start()
    e2e_seconds, submit_seconds = await run_phase(system, "e2e", opts.tasks, opts)
    cpu_use = cpu.stop()
    lat = await latency_phase(system, opts)
    idle_started = time.perf_counter()
    await asyncio.wait_for(system.submit_idle(payloads("idle", opts.tasks)), opts.deadline)
    idle_seconds = time.perf_counter() - idle_started
    ordered = sorted(1000 * (started - submitted) for submitted, started in lat.values())
    return Result(
        system=system.name,
        tasks=opts.tasks,
        ran=log.count("e2e"),
        duplicates=log.duplicates.get("e2e", 0),
        e2e_seconds=round(e2e_seconds, 4),
        e2e_rate=opts.tasks / e2e_seconds,
        submit_rate_under_load=opts.tasks / submit_seconds,
        latency_tasks=opts.latency_tasks,
        latency_ran=len(ordered),
        p50_ms=percentile(ordered, 0.50),
        p99_ms=percentile(ordered, 0.99),
        mean_ms=sum(ordered) / len(ordered) if ordered else math.nan,
        max_ms=ordered[-1] if ordered else math.nan,
        submit_only_rate=opts.tasks / idle_seconds,
        cpu_seconds=cpu_use.per_process,
        other_cores=cpu_use.other_cores,
    )


async def run_phase(system: System, phase: str, count: int, opts: Options) -> tuple[float, float]:
    """Submit `count` tasks at full speed and wait until all ran and the broker holds none.
    Returns (seconds end to end, seconds until the last submission was acknowledged)."""
    log = system.log
    submit_done = math.nan

    async def submit_all() -> None:
        nonlocal submit_done
        await system.submit_all(payloads(phase, count))
        submit_done = time.perf_counter()

    async def all_ran_and_acked() -> bool:
        log.poll()
        return log.count(phase) >= count and await system.drained()

    started = time.perf_counter()
    submitting = asyncio.create_task(submit_all())
    try:
        done = await wait_for(all_ran_and_acked, opts.deadline, system, f"{count} {phase} tasks")
        await submitting
    finally:
        submitting.cancel()
    return done - started, submit_done - started


async def latency_phase(system: System, opts: Options) -> dict[int, tuple[float, float]]:
    """Submit at a steady rate, one submission at a time, and wait for all to run."""
    log = system.log
    items = payloads("lat", opts.latency_tasks)
    interval = 1.0 / opts.rate
    started = time.perf_counter()
    for n, item in enumerate(items):
        if time.perf_counter() - started > opts.deadline:
            raise TimeoutError(f"{system.name}: the latency phase took over {opts.deadline:g}s")
        delay = started + n * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await system.submit(stamp(item))
        log.poll()

    async def all_ran() -> bool:
        log.poll()
        return log.count("lat") >= len(items)

    await wait_for(all_ran, opts.deadline, system, f"{len(items)} latency tasks")
    return log.started["lat"]


SYSTEM_CLASSES: dict[str, Callable[[Context, int], System]] = {
    "celery": CelerySystem,
    "taskiq": TaskiqSystem,
    "raw": RawSystem,
    "corral": CorralSystem,
    "corral-batch": CorralBatchSystem,
}


def failed_result(name: str, opts: Options, failure: str, round_: int) -> Result:
    nan = math.nan
    return Result(name, opts.tasks, 0, 0, nan, nan, nan, opts.latency_tasks, 0, nan, nan, nan, nan, nan,
                  failure=failure, round=round_)  # fmt: skip


async def measure_system(name: str, ctx: Context, round_: int) -> Result:
    system = SYSTEM_CLASSES[name](ctx, round_)
    print(f"  round {round_ + 1} {name}: starting", file=sys.stderr, flush=True)
    try:
        await system.start()
        result = await measure(system, ctx.opts)
    except (TimeoutError, RuntimeError, OSError, nats.errors.Error) as exc:
        print(f"  {name}: FAILED: {exc}", file=sys.stderr, flush=True)
        return failed_result(name, ctx.opts, str(exc).splitlines()[0] if str(exc) else repr(exc), round_)
    finally:
        await system.stop()
    result.round = round_
    print(
        f"  round {round_ + 1} {name}: {result.e2e_rate:,.0f} tasks/s end to end, "
        f"submit only {result.submit_only_rate:,.0f}/s, "
        f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms",
        file=sys.stderr,
        flush=True,
    )
    return result


def redis_server_pid(redis_url: str) -> int | None:
    """The pid of the Redis server listening on the URL's port, to count its CPU (root only)."""
    port = urllib.parse.urlsplit(redis_url).port or 6379
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return conn.pid
    return None


@dataclass
class Report:
    machine: dict[str, Any]
    config: dict[str, Any]
    results: list[Result]
    ratios: list[dict[str, Any]]


def _ratio(ours: float, base: float) -> float:
    return ours / base if base and not math.isnan(base) else math.nan


def ratios(results: Sequence[Result]) -> list[dict[str, Any]]:
    """Each corral row against each peer, per round (same load on the machine), then the median
    and range over the rounds: end-to-end and submit-only rates and p50 latency as multiples."""
    by_key = {(r.round, r.system): r for r in results}
    rows = []
    systems = dict.fromkeys(r.system for r in results if r.system.startswith("corral"))
    for system in systems:
        for base in ("celery", "taskiq", "raw"):
            pairs = [
                (ours, by_key[(ours.round, base)])
                for ours in results
                if ours.system == system and (ours.round, base) in by_key
            ]
            if not pairs:
                continue
            row: dict[str, Any] = {"system": system, "against": base}
            for figure, attr in (
                ("e2e", "e2e_rate"),
                ("submit_only", "submit_only_rate"),
                ("p50_latency", "p50_ms"),
            ):
                values = [_ratio(getattr(o, attr), getattr(p, attr)) for o, p in pairs]
                values = [v for v in values if not math.isnan(v)]
                row[figure] = statistics.median(values) if values else math.nan
                row[f"{figure}_range"] = [min(values), max(values)] if values else []
            rows.append(row)
    return rows


async def bench(opts: Options, url: str, prefix: str, workdir: Path, server_pid: int | None) -> Report:
    nc = await asyncio.wait_for(
        nats.connect(url, name="bench-tasks", connect_timeout=5, max_reconnect_attempts=5), 15.0
    )
    try:
        ctx = Context(
            opts, url, prefix, workdir, nc, nc.jetstream(), server_pid, redis_server_pid(opts.redis_url)
        )
        # Rounds interleave the systems, so a burst of other load on the machine hits them alike.
        results = [
            await measure_system(name, ctx, round_) for round_ in range(opts.rounds) for name in opts.systems
        ]
        machine = machine_info(nc)
    finally:
        await nc.close()
    machine["versions"] = {
        p: package_version(p) for p in ("celery", "kombu", "redis", "taskiq", "taskiq-nats")
    }
    config = {k: v for k, v in asdict(opts).items()}
    config.update(prefix=prefix, nats_url=url, own_nats_server=server_pid is not None)
    return Report(machine, config, results, ratios(results))


def run(opts: Options, nats_url: str | None) -> Report:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="corral-bench-tasks-") as tmp:
        workdir = Path(tmp)
        server: NatsServer | None = None
        try:
            if nats_url is None:
                server = NatsServer(workdir / "nats")
                server.start()
                nats_url = server.url
            url, pid = nats_url, server.pid if server is not None else None
            report, loop_name = run_async(lambda: bench(opts, url, prefix, workdir, pid))
            report.machine["event_loop"] = loop_name
            return report
        finally:
            if server is not None:
                server.stop()


# --- output ------------------------------------------------------------------------------------------


def render(report: Report) -> str:
    m = report.machine
    versions = " | ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines = [
        f"machine: {m['cpu_count']} cpus ({m['cpus_usable']} usable, {m['cpu_model']}) | {m['python']} | "
        f"nats-server {m['nats_server']} | nats-py {m['nats_py']} | {versions} | loop {m['event_loop']}",
        f"tasks: {report.config['tasks']} per phase, submissions in flight {report.config['concurrency']}, "
        f"corral-batch {report.config['batch']} per submit_many; latency at {report.config['rate']:g}/s",
        "",
    ]
    header = (
        f"{'round':>5} {'system':<13} {'ran':>6} {'dup':>4} {'e2e tasks/s':>11} {'submit/s':>9} "
        f"{'submit-only/s':>13} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'cpu us/task':>11} {'other':>5}"
    )
    lines += [header, "-" * len(header)]
    for r in report.results:
        lines.append(
            f"{r.round + 1:>5} {r.system:<13} {r.ran:>6} {r.duplicates:>4} {fmt(r.e2e_rate, ',.0f'):>11} "
            f"{fmt(r.submit_rate_under_load, ',.0f'):>9} {fmt(r.submit_only_rate, ',.0f'):>13} "
            f"{fmt(r.p50_ms, '.2f'):>7} {fmt(r.p99_ms, '.2f'):>7} {fmt(r.max_ms, '.1f'):>7} "
            f"{fmt(r.cpu_us_per_task, ',.0f'):>11} {r.other_cores:>5.2f}"
        )
    if report.ratios:
        rounds = report.config["rounds"]
        title = "ratio (same round)" if rounds == 1 else f"ratio: median [range] of {rounds} rounds"
        lines += ["", f"{title:<28} {'e2e':>18} {'submit-only':>18} {'p50 latency':>18}"]
        for row in report.ratios:
            cells = [_ratio_cell(row, figure) for figure in ("e2e", "submit_only", "p50_latency")]
            name = row["system"] + " / " + row["against"]
            lines.append(f"{name:<28} {cells[0]:>18} {cells[1]:>18} {cells[2]:>18}")
    lines += ["", "cpu us/task by process (e2e phase; worker.N: pool children):"]
    for r in report.results:
        if r.ran:
            split = ", ".join(
                f"{name} {1e6 * sec / r.ran:,.0f}" for name, sec in r.cpu_seconds.items() if sec
            )
            lines.append(f"  round {r.round + 1} {r.system:<13} {split}")
    lines += [
        "",
        "e2e = tasks / seconds from the first submission until all ran and none is unacked; submit/s = the",
        "submission rate during that phase; submit-only = submissions to a queue no worker consumes;",
        "p50/p99/max = submit call to task start at a steady rate; cpu us/task = CPU of the system's",
        "processes, the bench and the broker per task in the e2e phase; other = cores busy with anything",
        "else on the machine meanwhile (noise: want ~0).",
    ]
    lines += [f"FAILED {r.system}: {r.failure}" for r in report.results if r.failure]
    return "\n".join(lines)


def _ratio_cell(row: dict[str, Any], figure: str) -> str:
    median, spread = row[figure], row[f"{figure}_range"]
    if math.isnan(median):
        return "-"
    if len(spread) == 2 and spread[0] != spread[1]:
        return f"{median:.2f}x [{spread[0]:.2f}-{spread[1]:.2f}]"
    return f"{median:.2f}x"


def to_json(report: Report) -> dict[str, Any]:
    results = [{**asdict(r), "cpu_us_per_task": r.cpu_us_per_task} for r in report.results]
    document = {
        "machine": report.machine,
        "config": report.config,
        "results": results,
        "ratios": report.ratios,
    }
    return dict(no_nan(document))


def parse_systems(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--systems takes some of {', '.join(SYSTEMS)}, got {text!r}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--systems", type=parse_systems, default=list(SYSTEMS))
    parser.add_argument("--tasks", type=positive_int, default=DEFAULT_TASKS, help="tasks per phase")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="tasks before measuring")
    parser.add_argument("--concurrency", type=positive_int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--batch", type=positive_int, default=DEFAULT_BATCH, help="tasks per submit_many")
    parser.add_argument(
        "--worker-concurrency", type=positive_int, default=DEFAULT_WORKER_CONCURRENCY, help="corral Worker"
    )
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="tasks/s in the latency phase")
    parser.add_argument("--latency-tasks", type=positive_int, default=DEFAULT_LATENCY_TASKS)
    parser.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE, help="seconds per phase")
    parser.add_argument("--rounds", type=positive_int, default=1, help="rounds of all systems, interleaved")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--nats-url", help="use this NATS server instead of starting one")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    opts = Options(
        systems=args.systems,
        tasks=args.tasks,
        warmup=max(0, args.warmup),
        concurrency=args.concurrency,
        batch=args.batch,
        worker_concurrency=args.worker_concurrency,
        rate=args.rate,
        latency_tasks=args.latency_tasks,
        deadline=args.deadline,
        redis_url=args.redis_url,
        rounds=args.rounds,
    )
    signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        report = run(opts, args.nats_url)
    except KeyboardInterrupt:
        print("interrupted; child processes stopped", file=sys.stderr)
        return 130
    except (TimeoutError, RuntimeError, OSError, nats.errors.Error) as exc:
        print(f"bench failed: {exc}" if str(exc) else f"bench failed: {exc!r}", file=sys.stderr)
        return 2
    print(render(report))
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(report), indent=2, allow_nan=False, default=str) + "\n")
        print(f"\nwrote {args.json}")
    return 1 if any(r.failure for r in report.results) else 0


if __name__ == "__main__":
    sys.exit(main())
