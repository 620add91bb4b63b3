"""Per-module call statistics: counts by outcome and latency percentiles over recent calls."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

__all__ = ["ModuleStats"]

# Percentiles come from the most recent calls: enough for a stable p99, bounded in memory.
LATENCY_SAMPLES = 2048


class ModuleStats:
    def __init__(self) -> None:
        self.calls = 0
        self.successes = 0
        self.errors: dict[str, int] = {}
        self.latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.first_call = time.time()

    def record(self, code: str, seconds: float) -> None:
        self.calls += 1
        if code == "ok":
            self.successes += 1
            self.latencies.append(seconds)
        else:
            self.errors[code] = self.errors.get(code, 0) + 1

    def percentiles(self) -> dict[str, float]:
        """p50/p95/p99 of successful calls, in milliseconds (nearest-rank)."""
        if not self.latencies:
            return {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0}
        ordered = sorted(self.latencies)
        last = len(ordered) - 1

        def rank(q: float) -> float:
            return round(1000 * ordered[min(last, int(q * len(ordered)))], 3)

        return {"p50_ms": rank(0.50), "p95_ms": rank(0.95), "p99_ms": rank(0.99)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "successes": self.successes,
            "errors": dict(self.errors),
            **self.percentiles(),
        }
