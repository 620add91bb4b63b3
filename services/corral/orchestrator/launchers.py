"""How a module's instances come to exist and stop: `process` and `wasm` are launched as child
processes of the orchestrator; `external` ones are started by someone else (Kubernetes, a
terminal) and only asked to stop and restart through their control verbs.

Children get a session of their own, so they outlive an orchestrator that dies: a standby that
takes over adopts them by pid (checked against the process start time, so a reused pid is not
mistaken for them). Their stdout and stderr go to `<log_dir>/<module>.log`, opened for append;
`rotate_logs` rotates it copy-then-truncate, like logrotate's copytruncate, because the child
keeps its descriptor (lines written between the copy and the truncate are lost; an orchestrator
in the middle of the pipe instead would take its children down with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import socket
import time
import uuid
from pathlib import Path

import psutil

from corral.orchestrator.records import InstanceRecord, ModuleRecord

__all__ = ["ProcessLauncher", "log_tail"]

HOST = socket.gethostname()
POLL = 0.25  # seconds between checks on a process that is not our child


class ProcessLauncher:
    def __init__(
        self,
        *,
        nats_url: str,
        prefix: str,
        log_dir: Path,
        log_max_bytes: int = 10 * 2**20,
        log_backups: int = 3,
    ) -> None:
        self.nats_url = nats_url
        self.prefix = prefix
        self.log_dir = log_dir
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        self.children: dict[str, asyncio.subprocess.Process] = {}  # instance id -> our child

    def log_file(self, module: str) -> Path:
        return self.log_dir / f"{module}.log"

    async def launch(self, record: ModuleRecord, *, reset: bool = False) -> InstanceRecord:
        """Start one instance; OSError (no such command, ...) propagates."""
        module = record.descriptor
        instance = f"{record.name}-{uuid.uuid4().hex[:8]}"
        env = {
            **os.environ,
            "NATS_URL": self.nats_url,
            "CORRAL_PREFIX": self.prefix,
            "CORRAL_MODULE": record.name,
            "CORRAL_INSTANCE": instance,
            "CORRAL_METRICS_PORT": str(module.metrics_port),
            "CORRAL_DEPENDS_ON": ",".join(module.depends_on),
            "CORRAL_HEARTBEAT_INTERVAL": f"{module.heartbeat_interval:g}",
            "PYTHONUNBUFFERED": "1",
            **module.env,
        }
        env.pop("CORRAL_RESET", None)
        if reset:
            env["CORRAL_RESET"] = "1"  # the SDK runs the module's on_reset hooks before serving
        log_file = self.log_file(record.name)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} launching {instance}\n".encode())
            log.flush()
            process = await asyncio.create_subprocess_exec(
                *record.argv,
                env=env,
                cwd=record.cwd or None,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        self.children[instance] = process
        if module.limits.open_files is not None:
            # Applied from outside right after the fork: the limit holds before the module has
            # opened more than a handful of files.
            n = module.limits.open_files
            with contextlib.suppress(OSError, ValueError):
                resource.prlimit(process.pid, resource.RLIMIT_NOFILE, (n, n))
        try:
            create_time = psutil.Process(process.pid).create_time()
        except psutil.Error:
            create_time = 0.0
        return InstanceRecord(
            instance=instance, pid=process.pid, host=HOST, create_time=create_time, started=time.time()
        )

    def alive(self, inst: InstanceRecord) -> bool:
        child = self.children.get(inst.instance)
        if child is not None:
            return child.returncode is None
        if not inst.pid or inst.host != HOST:
            return False
        try:
            process = psutil.Process(inst.pid)
            return process.status() != psutil.STATUS_ZOMBIE and (
                not inst.create_time or abs(process.create_time() - inst.create_time) < 1.0
            )
        except psutil.Error:
            return False

    async def wait_exit(self, inst: InstanceRecord) -> str:
        """Return how the instance ended, once it has."""
        child = self.children.get(inst.instance)
        if child is not None:
            code = await child.wait()
            return f"exited with code {code}"
        while self.alive(inst):  # noqa: ASYNC110 - not our child: no exit to wait for, only to poll
            await asyncio.sleep(POLL)
        return f"exited (pid {inst.pid} is gone)"

    async def stop(self, inst: InstanceRecord, timeout: float) -> str:
        """SIGTERM (the SDK drains), then SIGKILL to the process group after `timeout` seconds."""
        if not self.alive(inst):
            self.children.pop(inst.instance, None)
            return "already exited"
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(inst.pid, signal.SIGTERM)
        try:
            how = await asyncio.wait_for(self.wait_exit(inst), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(inst.pid, signal.SIGKILL)
            how = f"killed after {timeout:g}s without exiting"
            child = self.children.get(inst.instance)
            if child is not None:
                await child.wait()
        self.children.pop(inst.instance, None)
        return how

    def forget(self, inst: InstanceRecord) -> None:
        self.children.pop(inst.instance, None)

    def rotate_logs(self, modules: list[str]) -> list[str]:
        """Rotate every log over the size limit; return the modules whose log was rotated."""
        rotated = []
        for module in modules:
            path = self.log_file(module)
            try:
                if path.stat().st_size <= self.log_max_bytes:
                    continue
            except OSError:
                continue
            for n in range(self.log_backups - 1, 0, -1):
                older = path.with_name(f"{path.name}.{n}")
                if older.exists():
                    older.replace(path.with_name(f"{path.name}.{n + 1}"))
            if self.log_backups > 0:
                shutil.copyfile(path, path.with_name(f"{path.name}.1"))
            with path.open("r+b") as f:
                f.truncate(0)
            rotated.append(module)
        return rotated


def log_tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
