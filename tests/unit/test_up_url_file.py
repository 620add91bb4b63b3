"""`corral up` leaves .corral/nats.url to whichever `corral up` wrote it last."""

from __future__ import annotations

from pathlib import Path

from corral.cli.up import System
from corral.config import SystemConfig


def _system(root: Path, url: str) -> System:
    config = SystemConfig()
    config.root = str(root)
    return System(config, nats_url=url)


def test_stopping_removes_the_url_it_wrote(tmp_path: Path) -> None:
    first = _system(tmp_path, "nats://127.0.0.1:1111")
    first.url_file.parent.mkdir(parents=True)
    first.url_file.write_text("nats://127.0.0.1:1111\n")
    first._forget_url()
    assert not first.url_file.exists()


def test_stopping_keeps_the_url_a_later_corral_up_wrote(tmp_path: Path) -> None:
    first = _system(tmp_path, "nats://127.0.0.1:1111")
    first.url_file.parent.mkdir(parents=True)
    first.url_file.write_text("nats://127.0.0.1:2222\n")  # the second `corral up`'s server
    first._forget_url()
    assert first.url_file.read_text() == "nats://127.0.0.1:2222\n"
    first.url_file.unlink()
    first._forget_url()  # already gone: nothing to do, no error
