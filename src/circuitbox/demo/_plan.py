"""What the demo runs: the timing of one scenario, the downstreams and the proxy config in front of them."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

FAILING = "search"
"""The downstream that goes down in the middle of the scenario."""
HEALTHY = "weather"
"""The downstream that stays healthy all along (its success rate must not suffer)."""
TOOLS: dict[str, tuple[str, ...]] = {FAILING: ("query", "suggest"), HEALTHY: ("forecast", "alerts")}
FAULTS: dict[str, str] = {
    "hang": "hang",
    "error": "error:search index unavailable (injected)",
}
"""Outage kinds (`--fault`) and the chaos behaviour each sets on every tool of the failing server."""


@dataclass(frozen=True)
class Timing:
    """One scenario: healthy for `warmup` s, the outage for `outage` s, then healed for `recovery` s."""

    warmup: float
    outage: float
    recovery: float
    call_timeout: float
    """The proxy's per-call deadline: what a call to a hung server costs the agent."""
    open_timeout: float
    """How long a circuit stays open before it lets a probe through."""
    max_open: float
    callers: int
    """Concurrent agent callers."""
    think: tuple[float, float]
    """Pause between two calls of one caller, drawn uniformly (seeded)."""

    @property
    def heal_at(self) -> float:
        return self.warmup + self.outage

    @property
    def total(self) -> float:
        return self.warmup + self.outage + self.recovery


NORMAL = Timing(
    warmup=3.0, outage=8.0, recovery=7.0, call_timeout=1.5, open_timeout=2.0, max_open=3.0, callers=5,
    think=(0.05, 0.15),
)  # fmt: skip
QUICK = Timing(
    warmup=1.0, outage=3.5, recovery=3.5, call_timeout=0.6, open_timeout=1.0, max_open=1.5, callers=4,
    think=(0.03, 0.1),
)  # fmt: skip


def published(server: str, tool: str) -> str:
    return f"{server}__{tool}"


def all_tools() -> list[tuple[str, str]]:
    return [(server, tool) for server, tools in TOOLS.items() for tool in tools]


def chaos_entry(server: str, seed: int) -> dict[str, Any]:
    args = ["-m", "circuitbox", "chaos", "--seed", str(seed), "--name", f"demo-{server}"]
    for tool in TOOLS[server]:
        args += ["--tool", f"{tool}=healthy"]
    return {"command": sys.executable, "args": args}


def proxy_config(timing: Timing, seed: int) -> dict[str, Any]:
    """The config `circuitbox serve` gets: two chaos downstreams, small thresholds so the demo fits a minute."""
    breaker = {
        "failure_threshold": 3,
        "success_threshold": 2,
        "half_open_max_calls": 1,
        "timeout": timing.open_timeout,
        "timeout_multiplier": 1.5,
        "max_timeout": timing.max_open,
        "jitter": 0,
        "call_timeout": timing.call_timeout,
    }
    servers = {name: {**chaos_entry(name, seed), "breaker": dict(breaker)} for name in TOOLS}
    return {"environment": "testing", "admin": {"enabled": True}, "mcpServers": servers}
