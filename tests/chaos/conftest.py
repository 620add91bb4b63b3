"""Real processes for the guarantee tests: scheduler services and worker processes, which a
test kills with SIGKILL; and the JSON lines the workers write about every run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

WORKER = Path(__file__).resolve().with_name("worker_process.py")

# Short leases and retries so a killed worker's task comes back in seconds, not minutes.
SCHEDULER_ENV = {
    "CORRAL_SCHEDULER_ACK_WAIT": "2",
    "CORRAL_SCHEDULER_BACKOFF_INITIAL": "0.1",
    "CORRAL_SCHEDULER_BACKOFF_MAX": "0.5",
    "CORRAL_SCHEDULER_BACKOFF_JITTER": "0",
    "CORRAL_SCHEDULER_MONITOR_INTERVAL": "0.5",
    "CORRAL_SCHEDULER_IDLE_POLL": "0.5",
}


class Processes:
    """Scheduler and worker processes of one test, on one NATS server and prefix."""

    def __init__(self, workdir: Path, nats_url: str, prefix: str, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.nats_url = nats_url
        self.prefix = prefix
        self.log = workdir / "runs.jsonl"
        self.extra_env = {**SCHEDULER_ENV, **(env or {})}
        self.children: dict[str, subprocess.Popen[bytes]] = {}

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "NATS_URL": self.nats_url,
            "CORRAL_PREFIX": self.prefix,
            "CORRAL_METRICS_PORT": "-1",
            "CORRAL_HEARTBEAT_INTERVAL": "0.5",
            "CORRAL_DRAIN_TIMEOUT": "2",
            "CORRAL_LOG_LEVEL": "INFO",
            "CHAOS_LOG": str(self.log),
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        out = (self.workdir / f"{name}.log").open("ab")
        process = subprocess.Popen(argv, env=self._env(), stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        out.close()
        self.children[name] = process
        return process

    def scheduler(self, name: str = "scheduler") -> subprocess.Popen[bytes]:
        return self._spawn(name, [sys.executable, "-m", "corral.scheduler"])

    def worker(self, name: str, concurrency: int = 8) -> subprocess.Popen[bytes]:
        return self._spawn(name, [sys.executable, str(WORKER), name, "--concurrency", str(concurrency)])

    def kill(self, name: str) -> None:
        """SIGKILL: no drain, no goodbye."""
        process = self.children[name]
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()

    def output(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def runs(self, event: str | None = None) -> list[dict[str, Any]]:
        try:
            lines = self.log.read_text().splitlines()
        except FileNotFoundError:
            return []
        runs = [json.loads(line) for line in lines if line]
        return [r for r in runs if event is None or r["event"] == event]

    def alive(self) -> None:
        for name, process in self.children.items():
            if process.poll() is not None and process.returncode != -signal.SIGKILL:
                raise AssertionError(f"{name} exited with {process.returncode}:\n{self.output(name)[-3000:]}")

    def stop(self) -> None:
        for process in self.children.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + 10
        for process in self.children.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def processes(tmp_path: Path, nats_url: str, prefix: str) -> Iterator[Processes]:
    procs = Processes(tmp_path, nats_url, prefix)
    try:
        yield procs
    finally:
        procs.stop()


async def wait_until(condition: Any, timeout: float, what: str, processes: Processes | None = None) -> None:
    """Poll `condition()` (sync or async) every 50 ms; fail naming `what` after `timeout` s."""
    import asyncio
    import inspect

    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if processes is not None:
            processes.alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        await asyncio.sleep(0.05)


async def scheduler_answers(nc: Any, prefix: str) -> bool:
    """True once a scheduler answers `status`."""
    import nats.errors

    try:
        msg = await nc.request(f"{prefix}.scheduler.status", b"", timeout=1)
    except (nats.errors.Error, TimeoutError):
        return False
    return bool(json.loads(msg.data).get("success"))
