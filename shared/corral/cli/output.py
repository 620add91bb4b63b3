"""Where the CLI writes: results to stdout, diagnostics to stderr."""

from __future__ import annotations

import sys

from rich.console import Console

__all__ = ["err", "out"]

# When stdout is not a terminal (a log, CI) do not squeeze tables into 80 columns.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False)
