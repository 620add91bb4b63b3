"""What health monitoring costs: the health service plus heartbeating in 20 idle modules.

    python bench/health_overhead.py [--modules 20] [--seconds 60] [--interval 1.0] [--repeat 1]

The issue's figure: the CPU used by the health service and by heartbeating in 20 idle modules
over 60 s, as a fraction of one core (the goal: under 1%). Two phases on one embedded
nats-server, each with N idle SDK modules, one process each:

* floor: the modules with their heartbeat loop switched off and no health service. What an
  idle module costs without health: its NATS connection, its HTTP endpoint, its timers.
* monitored: the health service (`python -m corral.health`) and the modules heartbeating every
  `--interval` seconds and answering the health service's check rounds.

Health's cost is the monitored phase (health service + modules) less N times the floor of one
module. Each phase waits until every process has finished starting (and, monitored, until the
health service calls every module healthy), then reads each process's CPU time over
`--seconds`. CPU time, not wall time: other work on the machine does not inflate it. It is read
from /proc/<pid>/task/*/schedstat (nanoseconds; the sum over threads) where there is one, else
from psutil's cpu_times (clock ticks, 10 ms, too coarse for a process that uses 0.02% of a core
over a minute). The nats-server's CPU is shown too; it is not counted in the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from corral.natsd import NatsServer

MODULE = """
import sys
from corral.sdk import Module
if sys.argv[2] == "off":  # the floor: everything a module runs except its heartbeats
    import asyncio
    from corral.runtime.service import Service
    async def no_heartbeats(self): await asyncio.Event().wait()
    Service._heartbeat_loop = no_heartbeats
Module(sys.argv[1]).run(argv=["--no-wait"])
"""

PREFIX = "bench"


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of `pid` so far, in seconds."""
    try:
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)


@dataclass
class Phase:
    seconds: float
    health: float  # CPU seconds of the health service (0 in the floor phase)
    modules: list[float]  # CPU seconds of each module
    server: float  # CPU seconds of the nats-server

    def share(self, cpu: float) -> float:
        """CPU seconds as a fraction of one core over the phase."""
        return cpu / self.seconds


def wait_until_quiet(pids: list[int], timeout: float) -> None:
    """Until the processes have finished starting: 20 Python processes importing on 2 cores
    take many seconds, and CPU spent starting up is not what monitoring costs. Quiet: three
    seconds in a row under 1% of a core per process on average."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < deadline:
        before = sum(cpu_seconds(p) for p in pids)
        time.sleep(1.0)
        quiet = quiet + 1 if sum(cpu_seconds(p) for p in pids) - before < 0.01 * len(pids) else 0
        if quiet == 3:
            return
    raise SystemExit(f"processes still busy after {timeout:g}s; is the machine loaded?")


def wait_until_healthy(server_url: str, modules: int, timeout: float) -> None:
    """Until the health service calls every module healthy: the monitored phase is real."""
    deadline = time.monotonic() + timeout
    picture: dict[str, object] = {}
    while time.monotonic() < deadline:
        out = subprocess.run(
            [sys.executable, "-c", _STATUS, server_url], capture_output=True, text=True, check=False
        )
        if out.returncode == 0:
            picture = json.loads(out.stdout)
            healthy = [m for m, v in picture.items() if m.startswith("idle") and v == "healthy"]
            if len(healthy) == modules:
                return
        time.sleep(1.0)
    raise SystemExit(f"not every module healthy after {timeout:g}s: {picture}")


_STATUS = f"""
import asyncio, json, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    msg = await nc.request("{PREFIX}.health.status", b"", timeout=5)
    await nc.close()
    modules = json.loads(msg.data)["payload"]["modules"]
    print(json.dumps({{name: entry["verdict"] for name, entry in modules.items()}}))
asyncio.run(main())
"""


def run_phase(server: NatsServer, args: argparse.Namespace, *, monitored: bool) -> Phase:
    env = {
        **os.environ,
        "NATS_URL": server.url,
        "CORRAL_PREFIX": PREFIX,
        "CORRAL_HEARTBEAT_INTERVAL": str(args.interval),
        "CORRAL_LOG_LEVEL": "WARNING",
    }
    env.pop("CORRAL_CONFIG", None)
    logs = Path(tempfile.mkdtemp(prefix="health-bench-"))

    def start(name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (logs / f"{name}.log").open("wb") as log:
            return subprocess.Popen(argv, env=env, stdout=log, stderr=log)

    beats = "on" if monitored else "off"
    names = [f"idle{i}" for i in range(args.modules)]
    processes = [start(name, [sys.executable, "-c", MODULE, name, beats]) for name in names]
    if monitored:
        names.insert(0, "health")
        processes.insert(0, start("health", [sys.executable, "-m", "corral.health"]))
    pids = [p.pid for p in processes]
    try:
        if monitored:
            wait_until_healthy(server.url, args.modules, timeout=180)
        wait_until_quiet(pids, timeout=180)
        time.sleep(args.settle)
        assert server.pid is not None
        watched = [*pids, server.pid]
        before = [cpu_seconds(p) for p in watched]
        started = time.monotonic()
        time.sleep(args.seconds)
        elapsed = time.monotonic() - started
        used = [cpu_seconds(p) - b for p, b in zip(watched, before, strict=True)]
        for name, process in zip(names, processes, strict=True):
            if process.poll() is not None:
                tail = (logs / f"{name}.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"{name} exited with {process.returncode} while measured:\n{tail}")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(logs, ignore_errors=True)
    server_cpu = used.pop()
    if monitored:
        return Phase(elapsed, used[0], used[1:], server_cpu)
    return Phase(elapsed, 0.0, used, server_cpu)


def pct(share: float) -> str:
    return f"{share * 100:.3f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modules", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds per phase")
    parser.add_argument("--interval", type=float, default=1.0, help="heartbeat interval, seconds")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after start-up before measuring")
    parser.add_argument("--repeat", type=int, default=1, help="run both phases this many times")
    args = parser.parse_args()
    n = args.modules
    costs: list[float] = []
    print(f"{n} idle modules, heartbeat every {args.interval:g}s, {args.seconds:g}s measured per phase")
    print("CPU as a fraction of one core:")
    with tempfile.TemporaryDirectory() as store:
        server = NatsServer(Path(store))
        server.start()
        try:
            for run in range(1, args.repeat + 1):
                floor = run_phase(server, args, monitored=False)
                live = run_phase(server, args, monitored=True)
                floor_each = floor.share(sum(floor.modules)) / n
                health = live.share(live.health)
                modules = live.share(sum(live.modules))
                cost = health + modules - n * floor_each
                costs.append(cost)
                print(f"run {run}:")
                print(f"  floor, one idle module without health:   {pct(floor_each)}")
                print(f"  monitored, health service:                {pct(health)}")
                print(f"  monitored, {n} modules together:           {pct(modules)}")
                print(f"  monitored, per module:                    {pct(modules / n)}")
                print(f"  health's cost (service + modules - floor): {pct(cost)}")
                print(
                    f"  nats-server (not counted): floor {pct(floor.share(floor.server))}, "
                    f"monitored {pct(live.share(live.server))}"
                )
        finally:
            server.stop()
    if args.repeat > 1:
        print(f"health's cost over {args.repeat} runs: median {pct(statistics.median(costs))}, "
              f"min {pct(min(costs))}, max {pct(max(costs))}")  # fmt: skip
    verdict = "under" if statistics.median(costs) < 0.01 else "OVER"
    print(f"goal: under 1% of one core: {verdict}")


if __name__ == "__main__":
    main()
