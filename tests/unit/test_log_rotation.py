"""Module logs rotate copy-then-truncate: the child keeps appending to the same descriptor."""

from __future__ import annotations

import os
from pathlib import Path

from corral.orchestrator.launchers import ProcessLauncher


def launcher(tmp_path: Path, max_bytes: int, backups: int) -> ProcessLauncher:
    return ProcessLauncher(
        nats_url="nats://127.0.0.1:1",
        prefix="t",
        log_dir=tmp_path,
        log_max_bytes=max_bytes,
        log_backups=backups,
    )


def test_a_log_over_the_limit_is_copied_then_truncated_under_the_writer(tmp_path: Path) -> None:
    rotating = launcher(tmp_path, max_bytes=100, backups=2)
    path = rotating.log_file("worker")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)  # what the child holds
    try:
        os.write(fd, b"a" * 150)
        assert rotating.rotate_logs(["worker", "absent"]) == ["worker"]
        assert path.read_bytes() == b""
        assert (tmp_path / "worker.log.1").read_bytes() == b"a" * 150
        os.write(fd, b"b" * 120)  # the child goes on writing, at the start of the truncated file
        assert path.read_bytes() == b"b" * 120
        assert rotating.rotate_logs(["worker"]) == ["worker"]
        assert (tmp_path / "worker.log.1").read_bytes() == b"b" * 120
        assert (tmp_path / "worker.log.2").read_bytes() == b"a" * 150
        os.write(fd, b"c" * 101)
        rotating.rotate_logs(["worker"])
        assert (tmp_path / "worker.log.2").read_bytes() == b"b" * 120  # the oldest is dropped
        assert not (tmp_path / "worker.log.3").exists()
        os.write(fd, b"small")
        assert rotating.rotate_logs(["worker"]) == []  # under the limit: left alone
    finally:
        os.close(fd)


def test_without_backups_a_log_is_only_truncated(tmp_path: Path) -> None:
    rotating = launcher(tmp_path, max_bytes=10, backups=0)
    rotating.log_file("m").write_bytes(b"x" * 20)
    assert rotating.rotate_logs(["m"]) == ["m"]
    assert rotating.log_file("m").read_bytes() == b""
    assert not (tmp_path / "m.log.1").exists()
