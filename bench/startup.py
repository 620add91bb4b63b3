"""How long start_system takes, and what an idle orchestrator costs while it supervises.

    python bench/startup.py [--sizes 5,20,50] [--rounds 3] [--idle-modules 20] [--idle-seconds 20]

Starts an embedded nats-server and, per run, an orchestrator process (`python -m
corral.orchestrator`) with a corral.toml of N tiny SDK modules, each its own process:

* chain: m1 depends on m0, m2 on m1, ... (nothing can start in parallel);
* wide: m1..mN-1 all depend on m0 (everything after the root can start at once);

each with `parallel_startup = true` and `false`. Measured: the `start_system` request, from
sending it until the reply says every module answered readiness; then `stop_system`.

The baseline, in the same run: the same N module processes launched straight from this script
(`--no-wait`, no orchestrator), one at a time (each waits until the one before sends its first
heartbeat, which it does once serving) and all at once. A Python process importing corral costs
the same either way; the ratio is what the orchestrator adds (readiness polls, KV writes,
lifecycle events, dependency gating).

Each figure is the median of `--rounds` rounds, baseline and orchestrated interleaved, so load
from other processes on the machine hits both alike.

Idle: with `--idle-modules` modules running under the orchestrator, its own RSS and CPU (psutil,
the orchestrator process alone, children excluded) over `--idle-seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats
import psutil
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from corral.natsd import NatsServer

MODULE = """
import os
from corral.sdk import Module

module = Module(os.environ["CORRAL_MODULE"])


@module.handler("ping")
async def ping(_payload: object) -> str:
    return "pong"


module.run()
"""


def system_file(workdir: Path, n: int, shape: str, parallel: bool) -> Path:
    module = workdir / "bench_module.py"
    module.write_text(MODULE)
    lines = [f'log_dir = "{workdir / "logs"}"', f"parallel_startup = {'true' if parallel else 'false'}"]
    for i in range(n):
        deps = [] if i == 0 else [f"m{i - 1}" if shape == "chain" else "m0"]
        lines += [
            f"[modules.m{i}]",
            f'command = ["{{python}}", "{module}"]',
            f"depends_on = {json.dumps(deps)}",
            "startup_timeout = 120.0",
        ]
    path = workdir / f"{shape}-{n}-{'p' if parallel else 's'}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Orchestrator:
    def __init__(self, url: str, prefix: str, config: Path, log: Path) -> None:
        env = {
            **os.environ, "NATS_URL": url, "CORRAL_PREFIX": prefix, "CORRAL_CONFIG": str(config),
            "CORRAL_METRICS_PORT": "-1", "CORRAL_LOG_LEVEL": "WARNING",
        }  # fmt: skip
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "corral.orchestrator"], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.prefix = prefix

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


async def request(nc: NatsClient, subject: str, body: dict[str, object], timeout: float) -> dict[str, object]:
    msg = await nc.request(subject, json.dumps(body).encode(), timeout=timeout)
    reply: dict[str, object] = json.loads(msg.data)
    if not reply["success"]:
        raise SystemExit(f"{subject} failed: {reply['payload']}")
    return reply


async def wait_for_orchestrator(nc: NatsClient, prefix: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            reply = await request(nc, f"{prefix}.orchestrator.status", {}, 2)
            if reply["payload"]["leader"]:  # type: ignore[index]
                return
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("the orchestrator did not come up")


async def orchestrated(nc: NatsClient, url: str, workdir: Path, n: int, shape: str, parallel: bool) -> float:
    prefix = f"b{shape}{n}{'p' if parallel else 's'}{os.getpid()}"
    orch = Orchestrator(url, prefix, system_file(workdir, n, shape, parallel), workdir / "orchestrator.log")
    try:
        await wait_for_orchestrator(nc, prefix)
        began = time.perf_counter()
        await request(nc, f"{prefix}.orchestrator.start_system", {}, 600)
        took = time.perf_counter() - began
        await request(nc, f"{prefix}.orchestrator.stop_system", {"timeout": 10}, 600)
        return took
    finally:
        orch.stop()


async def baseline(nc: NatsClient, url: str, workdir: Path, n: int, parallel: bool) -> float:
    """N module processes launched directly, each serving at once (`--no-wait`)."""
    module = workdir / "bench_module.py"
    prefix = f"raw{n}{'p' if parallel else 's'}{os.getpid()}"
    procs: list[subprocess.Popen[bytes]] = []

    def launch(i: int) -> None:
        # Metrics on a free port, like the modules the orchestrator launches.
        env = {**os.environ, "NATS_URL": url, "CORRAL_PREFIX": prefix, "CORRAL_MODULE": f"m{i}",
               "CORRAL_METRICS_PORT": "0", "CORRAL_LOG_LEVEL": "WARNING"}  # fmt: skip
        procs.append(
            subprocess.Popen([sys.executable, str(module), "--no-wait"], env=env, stdout=subprocess.DEVNULL)
        )

    # A module's first heartbeat goes out as soon as it serves: waiting for it costs nothing,
    # where polling each module with requests would load the machine being measured.
    serving: dict[str, asyncio.Event] = {f"m{i}": asyncio.Event() for i in range(n)}

    async def on_heartbeat(msg: Msg) -> None:
        name = msg.subject.split(".")[-2]
        if name in serving:
            serving[name].set()

    sub = await nc.subscribe(f"{prefix}.hb.>", cb=on_heartbeat)

    async def until_serving(i: int) -> None:
        await asyncio.wait_for(serving[f"m{i}"].wait(), 120)

    began = time.perf_counter()
    try:
        if parallel:
            for i in range(n):
                launch(i)
            await asyncio.gather(*(until_serving(i) for i in range(n)))
        else:
            for i in range(n):
                launch(i)
                await until_serving(i)
        return time.perf_counter() - began
    finally:
        await sub.unsubscribe()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)


async def idle(nc: NatsClient, url: str, workdir: Path, n: int, seconds: float) -> tuple[float, float]:
    """(RSS MB, CPU % of one core) of the orchestrator alone while `n` modules run under it."""
    prefix = f"idle{n}{os.getpid()}"
    orch = Orchestrator(url, prefix, system_file(workdir, n, "wide", True), workdir / "orchestrator.log")
    try:
        await wait_for_orchestrator(nc, prefix)
        await request(nc, f"{prefix}.orchestrator.start_system", {}, 600)
        await asyncio.sleep(5)  # let start-up work (imports, the first polls) finish
        process = psutil.Process(orch.process.pid)
        before = process.cpu_times()
        await asyncio.sleep(seconds)
        after = process.cpu_times()
        cpu = (after.user + after.system - before.user - before.system) / seconds * 100
        rss = process.memory_info().rss / 2**20
        await request(nc, f"{prefix}.orchestrator.stop_system", {"timeout": 10}, 600)
        return rss, cpu
    finally:
        orch.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="5,20,50")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle-modules", type=int, default=20)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = NatsServer(workdir / "nats")
        server.start()
        try:
            nc = await nats.connect(server.url)
            print("| modules | shape | startup | start_system s | baseline s | vs baseline |")
            print("|---|---|---|---|---|---|")
            system_file(workdir, 1, "chain", True)  # writes the module file
            for n in sizes:
                runs: dict[tuple[str, bool], list[float]] = {}
                raw: dict[bool, list[float]] = {False: [], True: []}
                for _ in range(args.rounds):
                    for parallel in (False, True):
                        raw[parallel].append(await baseline(nc, server.url, workdir, n, parallel))
                    for shape in ("chain", "wide"):
                        for parallel in (True, False):
                            took = await orchestrated(nc, server.url, workdir, n, shape, parallel)
                            runs.setdefault((shape, parallel), []).append(took)
                for (shape, parallel), times in runs.items():
                    # The baseline a startup can at best match: a chain is sequential by nature.
                    base = statistics.median(raw[parallel and shape == "wide"])
                    took = statistics.median(times)
                    mode = "parallel" if parallel else "sequential"
                    print(
                        f"| {n} | {shape} | {mode} | {took:.2f} | {base:.2f} | {took / base:.2f} |",
                        flush=True,
                    )
            rss, cpu = await idle(nc, server.url, workdir, args.idle_modules, args.idle_seconds)
            print(
                f"\nidle orchestrator supervising {args.idle_modules} modules: RSS {rss:.1f} MB, "
                f"CPU {cpu:.2f}% of one core over {args.idle_seconds:g}s"
            )
            await nc.close()
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
