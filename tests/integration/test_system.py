"""The whole system as a user runs it: `corral up` in a subprocess, spoken to over raw NATS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from nats.aio.client import Client

from corral.discovery import discover
from corral.subjects import SERVICES
from tests.conftest import CorralUp

pytestmark = pytest.mark.slow

EXAMPLE_MODULES = ("interpreter", "compiler", "organism", "demo", "physics")  # the modules of corral.toml


async def request(nc: Client, subject: str, body: dict[str, object] | bytes) -> dict[str, object]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    msg = await nc.request(subject, data, timeout=10)
    reply: dict[str, object] = json.loads(msg.data)
    return reply


async def test_eval_through_the_orchestrator(corral_up: CorralUp, nc: Client) -> None:
    reply = await request(
        nc, f"{corral_up.prefix}.send.interpreter", {"type": "eval", "payload": {"code": "(* 6 7)"}}
    )
    assert reply["success"] is True
    assert reply["type"] == "eval:success"
    assert reply["payload"] == 42
    assert isinstance(reply["timestamp"], float)


async def test_every_service_and_module_is_registered(corral_up: CorralUp, nc: Client) -> None:
    instances = await discover(nc, corral_up.prefix, wait=0.5)
    names = {info.name for info in instances}
    assert names == {*SERVICES, *EXAMPLE_MODULES}
    for info in instances:
        assert info.metrics_url.startswith("http://127.0.0.1:"), info


def test_cli_send_prints_the_result(corral_up: CorralUp, nats_url: str) -> None:
    env = {**os.environ, "NATS_URL": nats_url, "CORRAL_PREFIX": corral_up.prefix}
    done = subprocess.run(
        [sys.executable, "-m", "corral.cli.main", "send", "interpreter", "eval", '{"code": "(+ 1 2 3)"}'],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "6"

    failed = subprocess.run(
        [sys.executable, "-m", "corral.cli.main", "send", "interpreter", "eval", '{"code": "(+ 1"}'],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert failed.returncode == 1
    assert "VALIDATION" in failed.stderr
    assert "unclosed '(' opened at line 1, column 1" in failed.stderr


def test_cli_status_lists_everything(corral_up: CorralUp, nats_url: str) -> None:
    env = {**os.environ, "NATS_URL": nats_url, "CORRAL_PREFIX": corral_up.prefix}
    done = subprocess.run(
        [sys.executable, "-m", "corral.cli.main", "status"],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name in (*SERVICES, *EXAMPLE_MODULES):
        assert name in done.stdout


def test_sigterm_stops_everything_in_reverse_order(tmp_path: Path, nats_url: str, prefix: str) -> None:
    system = CorralUp(tmp_path, nats_url, prefix)
    system.start()
    pids = system.pids()
    assert set(pids) == {*SERVICES, *EXAMPLE_MODULES}
    assert system.terminate() == 0
    for name, pid in pids.items():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, name
    stopped = [line.split()[2] for line in system.output().splitlines() if line.startswith("stopped ")]
    started = [line.split()[2] for line in system.output().splitlines() if line.startswith("up ")]
    assert stopped == list(reversed(started))


def test_a_failing_required_module_fails_startup_and_names_it(
    tmp_path: Path, nats_url: str, prefix: str
) -> None:
    config = (
        "[modules.broken]\n"
        'command = ["{python}", "-c", "import sys; print(\'no config here\'); sys.exit(3)"]\n'
    )
    system = CorralUp(tmp_path, nats_url, prefix, config_text=config)
    with pytest.raises(AssertionError, match="exited with 1"):
        system.start(timeout=60)
    output = system.output()
    assert "module broken exited with code 3 during startup" in output
    assert "no config here" in output
    # What had started was stopped again.
    assert "stopped service state" in output


def test_a_dependency_cycle_is_refused_before_anything_starts(
    tmp_path: Path, nats_url: str, prefix: str
) -> None:
    config = (
        '[modules.a]\ncommand = ["x"]\ndepends_on = ["b"]\n[modules.b]\ncommand = ["x"]\ndepends_on = ["a"]\n'
    )
    system = CorralUp(tmp_path, nats_url, prefix, config_text=config)
    with pytest.raises(AssertionError, match="exited with 2"):
        system.start(timeout=30)
    assert "dependency cycle: a -> b -> a" in system.output()
    assert "up service" not in system.output()


def test_cli_breakers_and_status_show_call_statistics(corral_up: CorralUp, nats_url: str) -> None:
    env = {**os.environ, "NATS_URL": nats_url, "CORRAL_PREFIX": corral_up.prefix}

    def corral(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "corral.cli.main", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    assert (
        corral("breakers").stdout.strip()
        == "no breakers yet: no module has been called through the orchestrator"
    )
    assert corral("send", "interpreter", "eval", '{"code": "(+ 1 1)"}').stdout.strip() == "2"
    breakers = corral("breakers")
    assert breakers.returncode == 0
    assert "interpreter" in breakers.stdout
    assert "closed" in breakers.stdout
    status = corral("status")
    assert "calls through the orchestrator (1 routed)" in status.stdout
    reset = corral("breaker", "reset", "interpreter")
    assert reset.stdout.strip() == "breaker of interpreter is closed"
    unknown = corral("breaker", "reset", "ghost")
    assert unknown.returncode == 1
    assert "NOT_FOUND: no breaker for module 'ghost'; breakers: interpreter" in unknown.stderr


def test_cli_lifecycle_commands(corral_up: CorralUp, nats_url: str) -> None:
    env = {**os.environ, "NATS_URL": nats_url, "CORRAL_PREFIX": corral_up.prefix}

    def corral(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "corral.cli.main", *args],
            env=env, cwd=corral_up.workdir, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    listed = corral("modules")
    assert listed.returncode == 0, listed.stderr
    for name in EXAMPLE_MODULES:
        assert name in listed.stdout
    old_pid = corral_up.pids()["compiler"]
    restarted = corral("restart", "compiler")
    assert restarted.returncode == 0, restarted.stderr
    assert restarted.stdout.startswith("compiler: running (pid ")
    new_pid = int(restarted.stdout.split("(pid ")[1].split(")")[0])
    assert new_pid != old_pid
    assert psutil.pid_exists(new_pid)
    assert not psutil.pid_exists(old_pid) or psutil.Process(old_pid).status() == psutil.STATUS_ZOMBIE
    assert (
        corral(
            "send", "compiler", "compile", '{"source": "IF x > 10 THEN y := 5", "language": "algol"}'
        ).returncode
        == 0
    )

    status = corral("status", "--module", "compiler")
    assert status.returncode == 0, status.stderr
    assert "module compiler: running" in status.stdout
    assert "restart policy: restart, at most 5 in 60s" in status.stdout
    assert f"pid {new_pid}" in status.stdout

    stopped = corral("stop", "organism")
    assert stopped.stdout.startswith("organism: stopped (pid "), stopped.stderr
    assert corral("start", "organism").stdout.startswith("organism: running (pid ")
    ghost = corral("restart", "ghost")
    assert ghost.returncode == 1
    assert "NOT_FOUND: no module 'ghost' in the registry" in ghost.stderr

    logs = corral("logs", "compiler", "-n", "200")
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.count("launching compiler-") == 2  # the first launch and the restart


def test_the_demo_worker_runs_tasks_submitted_from_the_cli(corral_up: CorralUp, nats_url: str) -> None:
    env = {**os.environ, "NATS_URL": nats_url, "CORRAL_PREFIX": corral_up.prefix}
    done = subprocess.run(
        [sys.executable, "-m", "corral.cli.main", "submit", "flaky", '{"fail_times": 1}', "--wait"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"attempts": 2}
    workers = subprocess.run(
        [sys.executable, "-m", "corral.cli.main", "workers"],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert workers.returncode == 0, workers.stderr
    assert "demo" in workers.stdout
    assert "echo, fail, flaky, sleep" in workers.stdout
