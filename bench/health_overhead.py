"""What health monitoring costs: CPU of the health service and of 20 idle modules heartbeating.

    python bench/health_overhead.py [--modules 20] [--seconds 60] [--interval 1.0]

Starts an embedded nats-server, the health service (`python -m corral.health`) and N idle SDK
modules (each its own process, heartbeating every `--interval` seconds and answering the health
service's check rounds), lets them settle, then reads every process's CPU time (psutil) over
`--seconds`. Reports CPU as a fraction of one core: the health service, the modules together
and per module. An idle module does nothing but heartbeat and answer checks, so its CPU is what
monitoring costs it. The goal the issue sets: under 1% of one core in total.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from corral.natsd import NatsServer

MODULE = """
import sys
from corral.sdk import Module
Module(sys.argv[1]).run(argv=["--no-wait"])
"""


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def wait_until_idle(processes: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """Wait until the modules have finished starting: 20 Python processes importing on 2 cores
    take many seconds, and CPU spent starting up is not what monitoring costs."""
    watched = [psutil.Process(p.pid) for p in processes]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = sum(cpu_seconds(p) for p in watched)
        time.sleep(1.0)
        if sum(cpu_seconds(p) for p in watched) - before < 0.05 * len(watched):  # < 5% of a core each
            return
    raise SystemExit(f"modules still busy after {timeout:g}s; is the machine loaded?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modules", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=1.0, help="heartbeat interval, seconds")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after start-up before measuring")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as store:
        server = NatsServer(Path(store))
        server.start()
        env = {
            **os.environ,
            "NATS_URL": server.url,
            "CORRAL_PREFIX": "bench",
            "CORRAL_HEARTBEAT_INTERVAL": str(args.interval),
            "CORRAL_LOG_LEVEL": "WARNING",
        }
        env.pop("CORRAL_CONFIG", None)
        out = subprocess.DEVNULL
        health = subprocess.Popen([sys.executable, "-m", "corral.health"], env=env, stdout=out, stderr=out)
        modules = [
            subprocess.Popen([sys.executable, "-c", MODULE, f"idle{i}"], env=env, stdout=out, stderr=out)
            for i in range(args.modules)
        ]
        try:
            wait_until_idle(modules, timeout=120)
            time.sleep(args.settle)
            procs = [psutil.Process(p.pid) for p in (health, *modules)]
            before = [cpu_seconds(p) for p in procs]
            started = time.monotonic()
            time.sleep(args.seconds)
            elapsed = time.monotonic() - started
            used = [cpu_seconds(p) - b for p, b in zip(procs, before, strict=True)]
        finally:
            for process in (health, *modules):
                process.terminate()
            for process in (health, *modules):
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
            server.stop()
    health_share = used[0] / elapsed
    modules_share = sum(used[1:]) / elapsed
    print(f"{args.modules} idle modules, heartbeat every {args.interval:g}s, measured {elapsed:.1f}s")
    print(f"health service:       {health_share:.4f} of one core ({health_share * 100:.2f}%)")
    print(f"modules together:     {modules_share:.4f} of one core ({modules_share * 100:.2f}%)")
    print(f"per module:           {modules_share / max(1, args.modules) * 100:.3f}% of one core")
    print(f"total:                {(health_share + modules_share) * 100:.2f}% of one core")


if __name__ == "__main__":
    main()
