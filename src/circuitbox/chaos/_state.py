"""The chaos server's mutable state: its tools, their behaviours, seeded RNGs and call counters.

Every method is synchronous, so the server's handlers read and change it without races between awaits.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from circuitbox.chaos._behaviours import Behaviour, resolve

Outcome = Literal["ok", "errors", "protocol_errors", "cancelled"]


@dataclass
class ToolStats:
    """Counters of one tool; `calls` counts every call that reached the server."""

    calls: int = 0
    ok: int = 0
    errors: int = 0
    protocol_errors: int = 0
    cancelled: int = 0
    in_flight: int = 0


@dataclass
class ToolEntry:
    """A served tool. `shape` (echo or add) is fixed at creation: its schemas never change under a client."""

    name: str
    behaviour: Behaviour
    shape: Literal["echo", "add"]
    since: float
    rng: random.Random
    stats: ToolStats = field(default_factory=ToolStats)
    calls_since: int = 0
    """Calls since the behaviour was set (fail_first counts them)."""
    hints: frozenset[str] = frozenset()
    """Annotations the tool is listed with: "readOnly", "idempotent"."""


class UnknownToolError(KeyError):
    """No chaos tool has that name."""


class ChaosState:
    """Tools and counters; `clock` is any monotonic `() -> float` (injected in tests)."""

    def __init__(
        self,
        tools: Mapping[str, Behaviour],
        *,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        hints: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        self.seed = seed
        self.clock = clock
        self.hints = dict(hints or {})
        self._initial = dict(tools)
        self._started = clock()
        self.tools: dict[str, ToolEntry] = {}
        self.reset()

    def _rng(self, name: str) -> random.Random:
        # One RNG per tool, seeded from (seed, name): its sequence does not depend on calls to other tools.
        return random.Random(f"{self.seed}/{name}") if self.seed is not None else random.Random()

    def reset(self) -> bool:
        """Restore the initial tools, behaviours, RNGs and zero counters; True if the tool names changed."""
        before = set(self.tools)
        self.tools = {}
        for name, behaviour in self._initial.items():
            self.add(name, behaviour)
        return before != set(self.tools)

    def entry(self, name: str) -> ToolEntry:
        """Raises: UnknownToolError."""
        try:
            return self.tools[name]
        except KeyError:
            raise UnknownToolError(name) from None

    def add(self, name: str, behaviour: Behaviour) -> bool:
        """Add a tool, or set its behaviour if it exists. Returns whether it is new."""
        if name in self.tools:
            self.set(name, behaviour)
            return False
        shape: Literal["echo", "add"] = "add" if behaviour.kind == "add" else "echo"
        self.tools[name] = ToolEntry(
            name, behaviour, shape, self.clock(), self._rng(name), hints=self.hints.get(name, frozenset())
        )
        return True

    def remove(self, name: str) -> None:
        """Raises: UnknownToolError."""
        self.entry(name)
        del self.tools[name]

    def set(self, name: str, behaviour: Behaviour) -> list[str]:
        """Set the behaviour of `name`, or of every tool for `"*"`; restarts the flapping clock.

        Raises:
            UnknownToolError: no such tool.
        """
        names = list(self.tools) if name == "*" else [self.entry(name).name]
        now = self.clock()
        for n in names:
            self.tools[n].behaviour = behaviour
            self.tools[n].since = now
            self.tools[n].calls_since = 0
        return names

    def begin(self, name: str) -> tuple[ToolEntry, Behaviour]:
        """Count a call arriving and decide what it does.

        Raises:
            UnknownToolError: no such tool.
        """
        entry = self.entry(name)
        entry.stats.calls += 1
        entry.stats.in_flight += 1
        entry.calls_since += 1
        return entry, resolve(entry.behaviour, entry.rng, self.clock() - entry.since, entry.calls_since)

    @staticmethod
    def end(entry: ToolEntry, outcome: Outcome) -> None:
        """Count a call leaving (on its entry: a removed tool's late answer changes nothing served)."""
        entry.stats.in_flight -= 1
        setattr(entry.stats, outcome, getattr(entry.stats, outcome) + 1)

    def stats(self) -> dict[str, Any]:
        """JSON-ready counters: `{"tools": {name: {"behaviour", "calls", "ok", ...}}, "total_calls", ...}`."""
        tools = {n: {"behaviour": e.behaviour.spec, **asdict(e.stats)} for n, e in self.tools.items()}
        return {
            "tools": tools,
            "total_calls": sum(t["calls"] for t in tools.values()),
            "seed": self.seed,
            "uptime": round(self.clock() - self._started, 3),
        }
