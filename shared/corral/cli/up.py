"""`corral up`: the whole system on one machine.

Starts the embedded nats-server (unless given a URL), then corral's services, then the
modules of corral.toml in dependency order, each as its own process (a layer is up when its
processes are registered and, for SDK modules, told ready by the orchestrator); prints what is up;
on Ctrl-C or SIGTERM stops everything in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from pathlib import Path

from nats.aio.client import Client
from rich.markup import escape
from rich.table import Table

from corral.bus import BusSettings, connect
from corral.cli.output import err, out
from corral.cli.processes import ChildProcess
from corral.config import SystemConfig, start_layers
from corral.discovery import InstanceInfo, discover, module_statuses
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
        for layer in start_layers(self.config.modules):
            children = []
            for name in layer:
                module = self.config.modules[name]
                blocked = [dep for dep in module.depends_on if dep in self.skipped]
                if blocked:
                    self.skipped[name] = f"depends on {', '.join(blocked)}, which did not start"
                elif module.kind in ("process", "wasm"):
                    children.append(self._module_process(name))
            for child in children:
                module = self.config.modules[child.name]
                try:
                    await self._start_layer([child], module.startup_timeout, required=module.required)
                except StartupError as exc:
                    if module.required:
                        raise
                    self.skipped[child.name] = str(exc)
                    reason = escape(str(exc))
                    console.print(f"[yellow]optional module {child.name} did not start:[/] {reason}")

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

    def _module_process(self, name: str) -> ChildProcess:
        module = self.config.modules[name]
        extra = {"CORRAL_DEPENDS_ON": ",".join(module.depends_on), **module.env}
        env, instance = self._env(name, module.metrics_port, extra)
        cwd = str(self.config.resolve(module.cwd)) if module.cwd else self.config.root
        return ChildProcess(
            name, "module", self.config.module_argv(name), env, self._log_file(name), instance, cwd
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
            elif await self._is_ready(child, self.infos[child.instance]):
                return
        what = "become ready" if child.instance in self.infos else "register"
        raise StartupError(
            f"{child.role} {child.name} did not {what} within {timeout:g}s; "
            f"see {child.log_file}:\n{child.log_tail()}"
        )

    async def _is_ready(self, child: ChildProcess, info: InstanceInfo) -> bool:
        """An SDK module serves once the orchestrator says its dependencies are ready; others
        (services, WebAssembly modules) serve once registered."""
        assert self.nc is not None
        status_subject = Subjects(self.config.prefix).modctl(child.name, "status")
        if all(endpoint.subject != status_subject for endpoint in info.endpoints):
            return True
        statuses = await module_statuses(self.nc, self.config.prefix, child.name, wait=0.2)
        return any(s.instance == child.instance and s.ready for s in statuses)

    # --- running -----------------------------------------------------------------------------
    def table(self) -> Table:
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
        for name, module in self.config.modules.items():
            if module.kind == "external":
                table.add_row(name, "module (external)", "-", "started elsewhere", "")
        for name, reason in self.skipped.items():
            table.add_row(name, "module (not started)", "-", reason, "")
        return table

    async def watch(self, stop: asyncio.Event) -> None:
        """Report children that exit on their own until `stop` is set."""
        reported: set[str] = set()
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
        """Reverse order: last layer first; each process gets the grace period to drain."""
        grace = self.config.grace_period
        for layer in reversed(self.started):
            for child in reversed(layer):
                code = await child.stop(grace)
                console.print(f"stopped {child.role} {child.name} (exit code {code})")
        self.started.clear()
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()
        if self.nats_server is not None:
            self.url_file.unlink(missing_ok=True)
            await asyncio.to_thread(self.nats_server.stop)
            console.print("stopped nats-server")


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
        out.print(system.table())
        console.print("Ctrl-C stops everything")
        await system.watch(stop)
    stopper.cancel()
    await system.stop()
    return code
