"""Process figures (psutil) for heartbeats: cheap enough to read every second."""

from __future__ import annotations

import os
import socket

import psutil

__all__ = ["ProcessProbe"]


class ProcessProbe:
    """Reads this process's cpu %, rss, threads and open fds in one psutil oneshot."""

    def __init__(self) -> None:
        self.process = psutil.Process(os.getpid())
        self.process.cpu_percent(None)  # the first call only sets the baseline
        self.host = socket.gethostname()

    def read(self) -> tuple[float, int, int, int]:
        with self.process.oneshot():
            cpu = self.process.cpu_percent(None)
            rss = self.process.memory_info().rss
            threads = self.process.num_threads()
            try:
                fds = self.process.num_fds()
            except (AttributeError, psutil.Error):  # num_fds is POSIX-only
                fds = -1
        return cpu, rss, threads, fds
