"""`corral logs <module> -f`: prints the tail, then new lines, and carries on across a rotation."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from corral.orchestrator.launchers import ProcessLauncher


def wait_for(path: Path, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        output = path.read_text()
        if text in output:
            return output
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not printed; got:\n{path.read_text()}")


def test_logs_follow_across_a_rotation(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (tmp_path / "corral.toml").write_text(f'log_dir = "{logs}"\n')
    log = logs / "worker.log"
    log.write_text("".join(f"old {n}\n" for n in range(100)))
    out = tmp_path / "out"
    with out.open("w") as sink:
        follower = subprocess.Popen(
            [sys.executable, "-m", "corral.cli.main", "logs", "worker", "-f", "-n", "3", "-c", "corral.toml"],
            cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        printed = wait_for(out, "old 99\n")
        assert printed.startswith("old 97\nold 98\n")  # only the last 3 lines first
        with log.open("a") as f:
            f.write("new 1\n")
        wait_for(out, "new 1\n")
        ProcessLauncher(nats_url="", prefix="t", log_dir=logs, log_max_bytes=10).rotate_logs(["worker"])
        with log.open("a") as f:
            f.write("after rotation\n")
        wait_for(out, "after rotation\n")
        assert (logs / "worker.log.1").read_text().endswith("new 1\n")
    finally:
        follower.terminate()
        follower.wait(10)


def test_logs_of_an_unknown_module_say_where_they_looked(tmp_path: Path) -> None:
    (tmp_path / "corral.toml").write_text('log_dir = "logs"\n')
    done = subprocess.run(
        [sys.executable, "-m", "corral.cli.main", "logs", "ghost"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "no log for module 'ghost' at " in done.stderr
    assert str(tmp_path / "logs" / "ghost.log") in done.stderr.replace("\n", "")
