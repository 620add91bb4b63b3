"""`corral up`: the whole system on one machine.

Starts the embedded nats-server (unless given a URL) and corral's services, each as its own
process; then asks the orchestrator to start the system (`<prefix>.orchestrator.start_system`):
the orchestrator launches the modules of corral.toml in dependency order as its own children and
supervises them. Prints each module as it comes up, then a table of what is up, then the
lifecycle events (restarts, failures) as they happen. On Ctrl-C or SIGTERM: `stop_system`
(modules in reverse order), then the services in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

from nats.aio.client import Client
from nats.aio.msg import Msg
from rich.markup import escape
from rich.table import Table

from corral.bus import BusSettings, connect
from corral.cli.output import err, out
from corral.cli.processes import ChildProcess
from corral.config import SystemConfig
from corral.discovery import InstanceInfo, discover
from corral.natsd import NatsServer, port_is_free
from corral.subjects import SERVICES, Subjects

__all__ = ["StartupError", "System"]

console = err  # progress and diagnostics; the table of what is up goes to stdout


class StartupError(Exception):
    """A process did not come up; the message names it and says why."""


class System:
    def __init__(self, config: SystemConfig, *, nats_url: str | None) -> None:
        self.config = config
        self.nats_url = nats_url
        self.nats_server: NatsServer | None = None
        self.started: list[list[ChildProcess]] = []  # layers, in start order
        self.infos: dict[str, InstanceInfo] = {}  # instance id -> what it registered
        self.nc: Client | None = None
        self.skipped: dict[str, str] = {}  # optional module -> why it was not started
        self.printed: set[str] = set()  # modules whose `up` line was printed
        self.module_pids: dict[str, list[int]] = {}
        self.modules_up: list[str] = []  # in the order they came up

    @property
    def url_file(self) -> Path:
        return self.config.resolve(".corral/nats.url")

    # --- startup ---------------------------------------------------------------------------
    async def start(self) -> None:
        await self._start_nats()
        assert self.nats_url is not None
        self.nc = await connect(
            BusSettings.from_env(servers=[self.nats_url], name="corral-up", connect_attempts=10)
        )
        services = [self._service_process(name) for name in SERVICES if self.config.service(name).enabled]
        await self._start_layer(services, self.config.startup_timeout, required=True)
        if self.config.modules and self.config.service("orchestrator").enabled:
            await self._start_modules()

    async def _start_modules(self) -> None:
        """The orchestrator starts the modules; each `running` event is printed as it comes."""
        assert self.nc is not None
        subjects = Subjects(self.config.prefix)
        sub = await self.nc.subscribe(subjects.event("lifecycle", "*"), cb=self._on_lifecycle)
        budget = sum(m.startup_timeout + m.stop_timeout for m in self.config.modules.values()) + 30
        try:
            with console.status(f"starting {len(self.config.modules)} modules"):
                msg = await self.nc.request(
                    subjects.service("orchestrator", "start_system"), b"", timeout=budget
                )
        finally:
            await self.nc.flush()
            await sub.unsubscribe()
        reply = json.loads(msg.data)
        if not reply["success"]:
            raise StartupError("; ".join(reply["payload"]["errors"]).removeprefix("startup failed: "))
        for name, reason in reply["payload"]["skipped"].items():
            self.skipped[name] = reason
            console.print(f"[yellow]optional module {name} did not start:[/] {escape(reason)}")
        self.modules_up = [m["module"] for m in reply["payload"]["started"]]
        for started in reply["payload"]["started"]:
            if started["module"] not in self.printed:  # its event was missed
                self._print_up(started["module"], started["pids"])

    async def _on_lifecycle(self, msg: Msg) -> None:
        event = json.loads(msg.data)
        if event["new"] == "running" and event["old"] == "starting" and event["module"] not in self.printed:
            self._print_up(event["module"], event["pids"])

    def _print_up(self, module: str, pids: list[int]) -> None:
        self.printed.add(module)
        self.module_pids[module] = pids
        what = f"pid {', '.join(map(str, pids))}" if pids else "external"
        console.print(f"[green]up[/] module {module} ({what})")

    async def _start_nats(self) -> None:
        if self.nats_url:
            console.print(f"using NATS at {self.nats_url}")
            return
        nats = self.config.nats
        port: int | None = nats.port
        if nats.port and not port_is_free(nats.port):
            console.print(f"[yellow]port {nats.port} is taken[/]; the embedded nats-server picks a free port")
            port = None
        self.nats_server = NatsServer(
            self.config.resolve(nats.store_dir),
            port=port,
            sync_interval=nats.sync_interval,
            max_payload=nats.max_payload,
            log_file=self.config.resolve(self.config.log_dir) / "nats-server.log",
        )
        with console.status("starting nats-server"):
            await asyncio.to_thread(self.nats_server.start)
        self.nats_url = self.nats_server.url
        # `corral send` / `corral status` in another terminal read this when NATS_URL is unset.
        self.url_file.parent.mkdir(parents=True, exist_ok=True)
        self.url_file.write_text(self.nats_url + "\n")
        console.print(f"nats-server {self.nats_url} (JetStream in {self.nats_server.store_dir})")

    def _env(self, name: str, metrics_port: int, extra: dict[str, str]) -> tuple[dict[str, str], str]:
        instance = f"{name}-{uuid.uuid4().hex[:8]}"
        env = {
            **os.environ,
            "NATS_URL": self.nats_url or "",
            "CORRAL_PREFIX": self.config.prefix,
            "CORRAL_INSTANCE": instance,
            "CORRAL_METRICS_PORT": str(metrics_port),
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
        return env, instance

    def _service_process(self, name: str) -> ChildProcess:
        service = self.config.service(name)
        # The orchestrator reads per-module call policies (timeouts, breakers, bulkheads) from it,
        # the health service per-module resource limits and which modules are required.
        extra = {"CORRAL_CONFIG": self.config.source, **service.env} if self.config.source else service.env
        env, instance = self._env(name, service.metrics_port, extra)
        return ChildProcess(
            name, "service", [sys.executable, "-m", f"corral.{name}"], env, self._log_file(name), instance
        )

    def _log_file(self, name: str) -> Path:
        return self.config.resolve(self.config.log_dir) / f"{name}.log"

    async def _start_layer(self, children: list[ChildProcess], timeout: float, *, required: bool) -> None:
        self.started.append(children)
        names = ", ".join(c.name for c in children)
        with console.status(f"starting {names}"):
            for child in children:
                try:
                    await child.start()
                except OSError as exc:
                    raise StartupError(
                        f"{child.role} {child.name} could not be started ({child.argv[0]}): {exc}"
                    ) from exc
            await asyncio.gather(*(self._wait_registered(child, timeout) for child in children))
        for child in children:
            console.print(f"[green]up[/] {child.role} {child.name} (pid {child.pid})")

    async def _wait_registered(self, child: ChildProcess, timeout: float) -> None:
        assert self.nc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.exited:
                assert child.process is not None
                raise StartupError(
                    f"{child.role} {child.name} exited with code {child.process.returncode} during startup; "
                    f"last lines of {child.log_file}:\n{child.log_tail()}"
                )
            if child.instance not in self.infos:
                for info in await discover(self.nc, self.config.prefix, wait=0.2, name=child.name):
                    if info.metadata.get("instance") == child.instance:
                        self.infos[child.instance] = info
            else:
                return
        raise StartupError(
            f"{child.role} {child.name} did not register within {timeout:g}s; "
            f"see {child.log_file}:\n{child.log_tail()}"
        )

    # --- running -----------------------------------------------------------------------------
    async def table(self) -> Table:
        table = Table(title=f"corral is up (prefix {self.config.prefix}, NATS {self.nats_url})")
        for column in ("name", "role", "pid", "subjects", "metrics"):
            table.add_column(column)
        for layer in self.started:
            for child in layer:
                info = self.infos.get(child.instance)
                subjects = "\n".join(e.subject for e in info.endpoints) if info else ""
                table.add_row(
                    child.name, child.role, str(child.pid), subjects, info.metrics_url if info else ""
                )
        assert self.nc is not None
        found = await discover(self.nc, self.config.prefix, wait=0.3)
        infos = {i.name: i for i in found if i.role != "service"}  # modules and scheduler workers
        for name in self.modules_up:
            info = infos.get(name)
            kind = self.config.modules[name].kind
            role = "module" if kind == "process" else f"module ({kind})"
            pids = ", ".join(map(str, self.module_pids.get(name, []))) or "-"
            subjects = "\n".join(e.subject for e in info.endpoints if ".mod." in e.subject) if info else ""
            table.add_row(name, role, pids, subjects, info.metrics_url if info else "")
        for name, reason in self.skipped.items():
            table.add_row(name, "module (not started)", "-", reason, "")
        return table

    async def watch(self, stop: asyncio.Event) -> None:
        """Report services that exit on their own, and modules' lifecycle changes, until `stop`."""
        reported: set[str] = set()
        assert self.nc is not None
        sub = await self.nc.subscribe(
            Subjects(self.config.prefix).event("lifecycle", ">"), cb=self._on_change
        )
        try:
            await self._watch_services(stop, reported)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_change(self, msg: Msg) -> None:
        event = json.loads(msg.data)
        if msg.subject.endswith(".alert"):
            console.print(f"[red]module {event['module']} needs an operator:[/] {escape(event['reason'])}")
        elif event.get("new") not in (None, "stopping", "stopped"):
            colour = {"running": "green", "failed": "red"}.get(event["new"], "yellow")
            console.print(
                f"module {event['module']}: {event['old']} -> [{colour}]{event['new']}[/] "
                f"({escape(event['reason'])})"
            )

    async def _watch_services(self, stop: asyncio.Event, reported: set[str]) -> None:
        while not stop.is_set():
            for layer in self.started:
                for child in layer:
                    if child.exited and child.instance not in reported:
                        reported.add(child.instance)
                        assert child.process is not None
                        console.print(
                            f"[red]{child.role} {child.name} exited with code {child.process.returncode}[/]; "
                            f"see {child.log_file}"
                        )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    # --- shutdown ----------------------------------------------------------------------------
    async def stop(self) -> None:
        """Modules first (the orchestrator's stop_system, reverse order), then the services in
        reverse order; each process gets the grace period to drain."""
        grace = self.config.grace_period
        if self.nc is not None and self.nc.is_connected and (self.printed or self.modules_up):
            await self._stop_modules()
        for layer in reversed(self.started):
            for child in reversed(layer):
                code = await child.stop(grace)
                console.print(f"stopped {child.role} {child.name} (exit code {code})")
        self.started.clear()
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()
        if self.nats_server is not None:
            self._forget_url()
            await asyncio.to_thread(self.nats_server.stop)
            console.print("stopped nats-server")

    def _forget_url(self) -> None:
        """Remove .corral/nats.url if it still names our server: a second `corral up` in the same
        directory wrote its own, which the CLI must go on finding."""
        try:
            if self.url_file.read_text().strip() == self.nats_url:
                self.url_file.unlink()
        except OSError:
            pass

    async def _stop_modules(self) -> None:
        assert self.nc is not None
        subject = Subjects(self.config.prefix).service("orchestrator", "stop_system")
        budget = sum(m.stop_timeout for m in self.config.modules.values()) + 30
        try:
            with console.status("stopping modules"):
                msg = await self.nc.request(subject, b"{}", timeout=budget)
        except Exception as exc:
            console.print(f"[red]could not stop the modules through the orchestrator:[/] {exc!r}")
            return
        reply = json.loads(msg.data)
        if not reply["success"]:
            console.print(f"[red]stop_system failed:[/] {escape('; '.join(reply['payload']['errors']))}")
            return
        for result in reply["payload"]["stopped"]:
            console.print(
                f"stopped module {result['module']} ({escape(result['detail'] or result['state'])})"
            )


async def run_up(config: SystemConfig, nats_url: str | None) -> int:
    system = System(config, nats_url=nats_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    startup = asyncio.create_task(system.start())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([startup, stopper], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if not startup.done():
        console.print("interrupted during startup; stopping what was started")
        startup.cancel()
        await asyncio.gather(startup, return_exceptions=True)
        code = 130
    elif (exc := startup.exception()) is not None:
        # escape: error text quotes corral.toml tables such as [modules.x], which are not markup
        console.print(f"[red]startup failed:[/] {escape(str(exc))}")
        code = 1
    else:
        out.print(await system.table())
        console.print("Ctrl-C stops everything")
        await system.watch(stop)
    stopper.cancel()
    await system.stop()
    return code
