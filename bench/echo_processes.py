"""The processes `bench/call_path.py` measures, one role per OS process.

    python bench/echo_processes.py raw          --nats-url URL --prefix P   # nats-py echo on <P>.raw.echo
    python bench/echo_processes.py sdk          --nats-url URL --prefix P   # Module("echo"), handler "echo"
    python bench/echo_processes.py orchestrator --nats-url URL --prefix P   # OrchestratorService

Each serves until SIGTERM or SIGINT. All three run on uvloop when it is installed (the
corral runtime does, so the raw responder does too, to keep the comparison fair).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import nats
from nats.aio.msg import Msg

from corral.bus import BusSettings
from corral.orchestrator.service import OrchestratorService
from corral.runtime import ServiceSettings, run_forever, run_main
from corral.sdk.module import Module

ROLES = ("raw", "sdk", "orchestrator")


def raw_subject(prefix: str) -> str:
    """The subject of the raw responder; `call_path.py` builds the same string."""
    return f"{prefix}.raw.echo"


async def serve_raw(url: str, prefix: str) -> None:
    """The baseline: a bare nats-py queue subscriber that answers with the request's bytes."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Bounded retries: with nats-py's defaults an unreachable server means minutes of retrying.
    nc = await nats.connect(
        url,
        name=f"bench-raw-echo:{prefix}",
        connect_timeout=5,
        max_reconnect_attempts=5,
        reconnect_time_wait=0.5,
    )

    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(raw_subject(prefix), queue=f"{prefix}.raw", cb=echo)
    await nc.flush()
    await stop.wait()
    await nc.drain()


def settings_for(url: str, prefix: str) -> ServiceSettings:
    # metrics_port=-1: no HTTP endpoint; WARNING: no per-start INFO lines in the bench's logs.
    return ServiceSettings(
        prefix=prefix, bus=BusSettings(servers=[url]), metrics_port=-1, log_level="WARNING"
    )


def echo_module() -> Module:
    module = Module("echo", description="bench echo module")

    @module.handler("echo")
    async def echo(payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    return module


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--prefix", required=True, help="subject prefix, unique per bench run")
    args = parser.parse_args(argv)
    url: str = args.nats_url
    prefix: str = args.prefix
    if args.role == "raw":
        run_main(lambda: serve_raw(url, prefix))
    elif args.role == "sdk":
        echo_module().run(settings_for(url, prefix), argv=["--no-wait"])  # no orchestrator needed
    else:
        run_forever(OrchestratorService(settings_for(url, prefix)))


if __name__ == "__main__":
    main()
