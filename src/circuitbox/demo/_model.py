"""What one scenario observed: every call the agent made, per-tool tallies, breaker states and events."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["ok", "failed", "fast_fail", "no_answer"]
"""How a call ended for the agent: success, an error after waiting, an immediate breaker answer, or nothing."""


@dataclass(frozen=True, slots=True)
class Call:
    server: str
    tool: str
    start: float
    """Seconds since the scenario began."""
    seconds: float
    kind: Kind


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class ToolTally:
    """One tool as the live view shows it."""

    server: str
    tool: str
    state: str = "closed"
    calls: int = 0
    ok: int = 0
    failed: int = 0
    fast_fails: int = 0
    seconds: list[float] = field(default_factory=list)
    opened_after: float | None = None
    """Seconds from the outage's start until the circuit was seen open."""
    recovered_after: float | None = None
    """Seconds from the heal until the tool was seen healthy again (circuit closed, or first success without one)."""

    def add(self, call: Call) -> None:
        self.calls += 1
        self.seconds.append(call.seconds)
        if call.kind == "ok":
            self.ok += 1
        elif call.kind == "fast_fail":
            self.fast_fails += 1
        else:
            self.failed += 1


@dataclass
class Outcome:
    """A finished scenario, ready for the summary."""

    label: str
    breakers: bool
    calls: list[Call]
    tallies: dict[tuple[str, str], ToolTally]
    downstream_calls: dict[str, int]
    """Calls each downstream server received, from its chaos stats."""
    events: list[tuple[float, str]]
    duration: float

    def of(self, server: str) -> list[Call]:
        return [c for c in self.calls if c.server == server]

    def count(self, kind: Kind, server: str | None = None) -> int:
        return sum(1 for c in self.calls if c.kind == kind and (server is None or c.server == server))

    def seconds(self) -> list[float]:
        return [c.seconds for c in self.calls if c.kind != "no_answer"]

    def saved(self, server: str) -> int:
        """Agent calls to `server` that never reached it (answered by the breaker)."""
        return max(0, len(self.of(server)) - self.downstream_calls.get(server, 0))

    def waited(self, server: str) -> float:
        """Seconds the agent spent waiting on calls to `server` that failed."""
        return sum(c.seconds for c in self.of(server) if c.kind in ("failed", "no_answer"))

    def success_rate(self, server: str) -> float:
        calls = self.of(server)
        return sum(1 for c in calls if c.kind == "ok") / len(calls) if calls else 1.0

    def opened_after(self, server: str) -> float | None:
        """Seconds from the outage's start until the first circuit of `server` opened (None: none did)."""
        known = [t.opened_after for t in self.tallies.values() if t.server == server and t.opened_after is not None]
        return min(known) if known else None

    def recovered_after(self, server: str) -> float | None:
        """Seconds from the heal until every tool of `server` was healthy again (None: one never was)."""
        values = [t.recovered_after for t in self.tallies.values() if t.server == server]
        known = [v for v in values if v is not None]
        return max(known) if known and len(known) == len(values) else None
