"""Per-breaker counters, histogram buckets and a latency reservoir: plain numbers, no locks.

Everything here is updated from breaker events on the hot path, so each update is a few integer operations;
rendering into metric families happens only at scrape time (see `_collector.py`).
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from dataclasses import dataclass, field

RESULTS = ("success", "failure", "rejected", "ignored")
FAILURE_TYPES = ("timeout", "transport", "protocol", "tool_error", "slow")

# Tool calls range from a millisecond (a local file read) to minutes (a build, a model); the top buckets
# sit at the usual call_timeout (30 s), the max_timeout (300 s) and in between.
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

# The latest calls kept per breaker for exact recent percentiles (8 bytes each).
RESERVOIR_SIZE = 512


def failure_type(kind: str) -> str:
    """Map an engine failure kind to a `failure_type` label value.

    The proxy's kinds pass through. The library's "exception" (the guarded callable raised) and any kind we do
    not know become "tool_error": the operation itself failed, which is what "tool_error" means in the proxy.
    Keeping the label to the five contract values also keeps its cardinality fixed.
    """
    return kind if kind in FAILURE_TYPES else "tool_error"


@dataclass(slots=True)
class Series:
    """What one breaker has done since it was bound or first seen."""

    server: str
    tool: str
    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESULTS, 0))
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_TYPES, 0))
    transitions: dict[tuple[str, str], int] = field(default_factory=dict)
    fallbacks: int = 0
    retries: int = 0
    stale_answers: int = 0
    # bucket_counts[i] counts durations <= BUCKETS[i] and > BUCKETS[i-1]; the last slot is +Inf.
    bucket_counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    duration_sum: float = 0.0
    duration_count: int = 0
    # Last state seen in a transition event: used only when the breaker object itself is not reachable.
    state: str = "closed"
    # Collector-clock (monotonic) time the circuit stopped passing calls; kept through half_open flips.
    unavailable_since: float | None = None
    _reservoir: array[float] = field(default_factory=lambda: array("d"))
    _next: int = 0

    def observe(self, duration: float) -> None:
        self.bucket_counts[bisect_left(BUCKETS, duration)] += 1
        self.duration_sum += duration
        self.duration_count += 1
        if len(self._reservoir) < RESERVOIR_SIZE:
            self._reservoir.append(duration)
        else:  # ring buffer: overwrite the oldest
            self._reservoir[self._next] = duration
            self._next = (self._next + 1) % RESERVOIR_SIZE

    def cumulative_buckets(self) -> list[tuple[float, int]]:
        out: list[tuple[float, int]] = []
        running = 0
        for bound, count in zip((*BUCKETS, math.inf), self.bucket_counts, strict=True):
            running += count
            out.append((bound, running))
        return out

    def percentiles(self) -> dict[str, float | int | None]:
        """p50/p95/p99/max over the latest `RESERVOIR_SIZE` calls (nearest rank), None without samples."""
        data = sorted(self._reservoir)
        n = len(data)

        def rank(q: float) -> float | None:
            if not n:
                return None
            return data[max(0, math.ceil(q * n) - 1)]

        return {
            "samples": n,
            "p50": rank(0.50),
            "p95": rank(0.95),
            "p99": rank(0.99),
            "max": data[-1] if n else None,
        }
