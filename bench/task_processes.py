"""The worker processes `bench/tasks.py` measures, one per system, and the task they all run.

    celery -A task_processes:celery_app worker --pool prefork --concurrency 2  # BENCH_REDIS_URL
    taskiq worker task_processes:taskiq_broker --workers 1            # BENCH_NATS_URL, BENCH_PREFIX
    python bench/task_processes.py raw    --nats-url URL --prefix P   # nats-py pull consumer
    python bench/task_processes.py corral --nats-url URL --prefix P   # corral SDK Worker

Every system runs the same no-op task: it appends one line `<phase> <i> <submitted> <started>`
to the file named by BENCH_TASK_LOG (one `write` on an O_APPEND descriptor, atomic between the
processes of a prefork pool), so the bench counts what ran and when without asking any broker.
The celery and taskiq CLIs import this file from the `bench/` folder (their cwd); both names
are built on first access from the environment (PEP 562 module `__getattr__`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from typing import Any

import msgspec
import nats
import nats.errors
from nats.aio.client import Client as NatsClient

from corral.bus import BusSettings
from corral.runtime import ServiceSettings, run_main
from corral.sdk.task_context import TaskContext
from corral.sdk.worker import Worker

LOG_ENV = "BENCH_TASK_LOG"
TASK = "noop"  # the task name in every system
RAW_DURABLE = "raw-worker"
RAW_FETCH = 256  # messages per pull request of the raw consumer

_log_fd: int | None = None


def record(payload: dict[str, Any]) -> None:
    """The task: note which task ran, when it was submitted and when it started."""
    global _log_fd
    if _log_fd is None:
        _log_fd = os.open(os.environ[LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_log_fd, f"{payload['p']} {payload['i']} {payload['t']!r} {time.time()!r}\n".encode())


# --- names shared with the driver ---------------------------------------------------------------


def raw_stream(prefix: str) -> str:
    return f"{prefix.upper()}_RAW".replace("-", "_")


def raw_subject(prefix: str, idle: bool = False) -> str:
    """Tasks for the raw consumer; `idle` ones go to the same stream but no consumer takes them."""
    return f"{prefix}.raw.{'idle' if idle else 'work'}"


def taskiq_names(prefix: str, idle: bool = False) -> tuple[str, str]:
    """(stream, subject) of the taskiq broker; the idle broker has a stream nobody consumes."""
    suffix = "_IDLE" if idle else ""
    stream = f"{prefix.upper()}_TASKIQ{suffix}".replace("-", "_")
    return stream, f"{prefix}.taskiq{'-idle' if idle else ''}"


# --- celery ------------------------------------------------------------------------------------


def make_celery(redis_url: str) -> Any:
    """Celery 5 on Redis with the settings closest to corral's guarantee: the message is acked
    after the task ran (`acks_late`), so a killed worker does not lose it; no result backend."""
    from celery import Celery

    app = Celery("corral-bench", broker=redis_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=4,  # Celery's default, stated because it matters here
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    app.task(name=TASK)(record)
    return app


# --- taskiq ------------------------------------------------------------------------------------


def make_taskiq(nats_url: str, prefix: str, idle: bool = False) -> tuple[Any, Any]:
    """Taskiq's JetStream broker (pull based, its defaults) and the task registered on it."""
    from taskiq_nats import PullBasedJetStreamBroker

    stream, subject = taskiq_names(prefix, idle)
    broker = PullBasedJetStreamBroker(servers=nats_url, subject=subject, stream_name=stream, durable="taskiq")

    @broker.task(task_name=TASK)
    async def noop(payload: dict[str, Any]) -> None:
        record(payload)

    return broker, noop


_built: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    """`celery_app` and `taskiq_broker` for the worker CLIs, built from the environment."""
    if name not in ("celery_app", "taskiq_broker"):
        raise AttributeError(name)
    if name not in _built:
        if name == "celery_app":
            _built[name] = make_celery(os.environ["BENCH_REDIS_URL"])
        else:
            _built[name] = make_taskiq(os.environ["BENCH_NATS_URL"], os.environ["BENCH_PREFIX"])[0]
    return _built[name]


# --- raw JetStream and corral ---------------------------------------------------------------------


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _connect(url: str, name: str) -> NatsClient:
    # Bounded retries: with nats-py's defaults an unreachable server means minutes of retrying.
    return await nats.connect(
        url, name=name, connect_timeout=5, max_reconnect_attempts=5, reconnect_time_wait=0.5
    )


async def serve_raw(url: str, prefix: str) -> None:
    """The ceiling: a bare pull consumer that runs each task and acks it, RAW_FETCH at a time.
    The driver creates the work-queue stream and the durable consumer."""
    stop = _stop_on_signals()
    nc = await _connect(url, f"bench-raw-worker:{prefix}")
    sub = await nc.jetstream().pull_subscribe_bind(RAW_DURABLE, raw_stream(prefix))
    decode = msgspec.json.decode
    while not stop.is_set():
        try:
            messages = await sub.fetch(RAW_FETCH, timeout=0.5)
        except nats.errors.TimeoutError:
            continue
        for msg in messages:
            record(decode(msg.data))
            await msg.ack()
    await nc.flush()  # the last acks
    await nc.close()


def serve_corral(url: str, prefix: str, concurrency: int) -> None:
    """One corral SDK Worker process running the no-op task, `concurrency` at a time."""
    # metrics_port=-1: no HTTP endpoint; WARNING: no per-start INFO lines in the bench's logs.
    settings = ServiceSettings(
        prefix=prefix, bus=BusSettings(servers=[url]), metrics_port=-1, log_level="WARNING"
    )
    worker = Worker("bench", concurrency=concurrency, settings=settings)

    @worker.task(TASK)
    async def noop(ctx: TaskContext, payload: dict[str, Any]) -> None:
        record(payload)

    worker.run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("role", choices=("raw", "corral"))
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--prefix", required=True, help="subject prefix, unique per bench run")
    parser.add_argument("--concurrency", type=int, default=64, help="corral: tasks run at once")
    args = parser.parse_args(argv)

    url: str = args.nats_url
    prefix: str = args.prefix
    if args.role == "corral":
        serve_corral(url, prefix, args.concurrency)
    else:
        run_main(lambda: serve_raw(url, prefix))


if __name__ == "__main__":
    main()
