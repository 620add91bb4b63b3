"""The `corral` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from corral.bus import BusSettings
from corral.cli import calls, commands
from corral.cli import config_cmd as config_cli
from corral.cli import events as events_cli
from corral.cli import lifecycle as lifecycle_cli
from corral.cli import recurring as recurring_cli
from corral.cli import state as state_cli
from corral.cli import tasks as tasks_cli
from corral.cli.up import run_up
from corral.config import load_config
from corral.errors import ConfigError
from corral.runtime import run_main
from corral.subjects import DEFAULT_PREFIX, SERVICES

__all__ = ["main"]

URL_FILE = Path(".corral/nats.url")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corral", description="Run and talk to a corral system over NATS.")
    parser.add_argument("--nats-url", default=None, help="NATS server(s), comma-separated (env NATS_URL)")
    parser.add_argument(
        "--prefix", default=None, help=f"subject prefix (env CORRAL_PREFIX, default {DEFAULT_PREFIX})"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "up", help="start nats-server (embedded), every service and the modules of corral.toml"
    )
    up.add_argument("-c", "--config", default="corral.toml", help="the system file (default corral.toml)")

    run = sub.add_parser("run", help="run one service in this process")
    run.add_argument("service", choices=SERVICES)

    send = sub.add_parser("send", help="call a module through the orchestrator and print the result")
    send.add_argument("module")
    send.add_argument("type")
    send.add_argument("payload", nargs="?", default="{}", help="JSON payload (default {})")
    send.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    send.add_argument("--priority", default="normal", help="0-4 or critical|high|normal|low|background")

    status = sub.add_parser("status", help="what is running, with heartbeat figures and call statistics")
    status.add_argument("--module", default=None, help="one module: lifecycle state and recovery history")
    sub.add_parser("breakers", help="every module's circuit breaker")
    breaker = sub.add_parser("breaker", help="act on one module's circuit breaker")
    breaker_verbs = breaker.add_subparsers(dest="verb", required=True)
    reset = breaker_verbs.add_parser("reset", help="close the breaker (every orchestrator replica follows)")
    reset.add_argument("module")
    state_cli.add_parser(sub)
    events_cli.add_parser(sub)
    config_cli.add_parser(sub)
    tasks_cli.add_parsers(sub)
    recurring_cli.add_parser(sub)
    lifecycle_cli.add_parsers(sub)
    return parser


def _nats_url(args: argparse.Namespace) -> str | None:
    """--nats-url, else NATS_URL, else the URL the local `corral up` wrote, else None."""
    if args.nats_url:
        return str(args.nats_url)
    if url := os.environ.get("NATS_URL"):
        return url
    if args.command != "up" and URL_FILE.exists():
        return URL_FILE.read_text().strip() or None
    return None


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    url = _nats_url(args)
    prefix = args.prefix or os.environ.get("CORRAL_PREFIX") or DEFAULT_PREFIX
    bus = BusSettings.from_env(
        servers=[u.strip() for u in url.split(",")] if url else None, connect_attempts=3
    )
    try:
        code = _dispatch(args, bus, prefix, url)
    except ConfigError as exc:
        print(f"corral: {exc}", file=sys.stderr)
        code = 2
    except ConnectionError as exc:
        print(f"corral: {exc}", file=sys.stderr)
        code = 1
    sys.exit(code)


def _dispatch(args: argparse.Namespace, bus: BusSettings, prefix: str, url: str | None) -> int:
    """Run one subcommand; commands that own a parser module are looked up in `_SUBCOMMANDS`."""
    if args.command == "up":
        config = load_config(args.config)
        if args.prefix:
            config.prefix = args.prefix
        return _run(run_up(config, url or (config.nats.url or None)))
    if args.command == "run":
        return commands.run_service(args.service)
    if args.command == "send":
        return _run(
            commands.send(bus, prefix, args.module, args.type, args.payload, args.timeout, args.priority)
        )
    if args.command == "breakers":
        return _run(calls.breakers(bus, prefix))
    if args.command == "breaker":
        return _run(calls.breaker_reset(bus, prefix, args.module))
    if handler := _SUBCOMMANDS.get(args.command):
        return _run(handler(args, bus, prefix))
    return _run(commands.status(bus, prefix))


SubcommandRunner = Callable[[argparse.Namespace, BusSettings, str], Coroutine[Any, Any, int]]
_SUBCOMMANDS: dict[str, SubcommandRunner] = {
    "events": events_cli.run,
    "state": state_cli.run,
    "config": config_cli.run,
    "recurring": recurring_cli.run,
    **dict.fromkeys(tasks_cli.COMMANDS, tasks_cli.run),
    **dict.fromkeys(lifecycle_cli.COMMANDS, lifecycle_cli.run),  # `status` too: `--module X`
}


def _run(coro: Coroutine[Any, Any, int]) -> int:
    return run_main(lambda: coro)


if __name__ == "__main__":
    main()
