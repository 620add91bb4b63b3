"""The heartbeat path: cpu % from the process's CPU clock, the slow psutil figures every few
beats, beats on shared wall-clock boundaries, and the pre-encoded heartbeat."""

from __future__ import annotations

import os

import msgspec
import pytest

from corral.protocol import Heartbeat
from corral.runtime.heartbeat import REFRESH_EVERY, HeartbeatEncoder, ProcessProbe, next_beat


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingProbe(ProcessProbe):
    """A real probe that counts its psutil reads."""

    slow_reads = 0

    def _read_slow(self) -> tuple[int, int, int]:
        self.slow_reads += 1
        return super()._read_slow()


def test_cpu_percent_is_cpu_time_over_wall_time_since_the_last_read() -> None:
    cpu, wall = Clock(0.0), Clock(100.0)
    probe = ProcessProbe(cpu_clock=cpu, clock=wall)
    cpu.now = 5.0
    assert probe.read()[0] > 0  # the first read: the process's life so far
    cpu.now, wall.now = 5.25, 101.0  # a quarter of a core over one second
    assert probe.read()[0] == 25.0
    cpu.now, wall.now = 6.75, 102.0  # two threads busy: more than one core
    assert probe.read()[0] == 150.0
    assert probe.read()[0] == 0.0  # no time passed: 0, not a division by zero


def test_the_first_read_is_the_average_since_the_process_started() -> None:
    first = ProcessProbe().read()[0]
    # This test process has been busy importing and testing, but not on more than a few cores.
    assert 0.0 < first < 400.0


def test_the_slow_figures_are_real_and_refreshed_every_few_reads() -> None:
    probe = CountingProbe(refresh_every=3)
    first = probe.read()
    _, rss, threads, fds = first
    assert rss > 10 * 2**20  # a Python process with msgspec and psutil loaded
    assert threads >= 1
    assert fds >= 3
    assert probe.slow_reads == 1
    for _ in range(5):
        probe.read()
    assert probe.slow_reads == 2  # reads 1 and 4 of 6
    probe.read()
    assert probe.slow_reads == 3


def test_the_slow_figures_follow_the_process() -> None:
    probe = ProcessProbe(refresh_every=1)
    before = probe.read()[3]
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(5)]
    try:
        assert probe.read()[3] == before + 5
    finally:
        for fd in fds:
            os.close(fd)


def test_refresh_every_is_at_least_one() -> None:
    assert REFRESH_EVERY >= 1
    with pytest.raises(ValueError, match="refresh_every"):
        ProcessProbe(refresh_every=0)


@pytest.mark.parametrize(
    ("now", "interval", "expected"),
    [
        (100.3, 1.0, 101.0),
        (100.0, 1.0, 101.0),  # on a boundary: the next one
        (100.95, 1.0, 102.0),  # too close to the next boundary: the one after
        (100.899, 1.0, 101.0),
        (100.05, 0.2, 100.2),
        (7.0, 5.0, 10.0),
    ],
)
def test_next_beat_is_the_next_shared_boundary(now: float, interval: float, expected: float) -> None:
    assert next_beat(now, interval) == pytest.approx(expected)


def test_a_timer_that_fires_early_does_not_beat_twice() -> None:
    assert next_beat(100.9995, 1.0) == pytest.approx(102.0)  # woke just before 101: next is 102


def beat(**changes: object) -> Heartbeat:
    fields: dict[str, object] = {
        "service": "physics", "instance": "vm-1", "role": "module", "version": "1.0", "pid": 42,
        "host": "vm", "started": 1.5, "timestamp": 0.0, "cpu_percent": 0.0, "rss_bytes": 0,
        "threads": 0, "open_fds": 0, "in_flight": 0, "handled": 0, "ready": False,
    }  # fmt: skip
    fields.update(changes)
    return Heartbeat(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fixed",
    [
        {},  # metrics_url, service_id and modctl left at their defaults (omitted on the wire)
        {"metrics_url": "http://127.0.0.1:9100", "service_id": "abc", "modctl": True},
    ],
)
def test_the_encoder_writes_what_encoding_a_heartbeat_writes(fixed: dict[str, object]) -> None:
    encoder = HeartbeatEncoder(beat(**fixed, cpu_percent=99.0, handled=5))  # changing fields ignored
    changing = {
        "timestamp": 1796000000.25, "cpu_percent": 3.5, "rss_bytes": 2**30, "threads": 4,
        "open_fds": 12, "in_flight": 2, "handled": 77, "ready": True,
    }  # fmt: skip
    data = encoder.encode(**changing)  # type: ignore[arg-type]
    expected = beat(**fixed, **changing)
    assert msgspec.json.decode(data, type=Heartbeat) == expected
    assert msgspec.json.decode(data) == msgspec.json.decode(msgspec.json.encode(expected))
