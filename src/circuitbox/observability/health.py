"""Health scores per breaker, per server and overall, for the `circuit_metrics` tool.

Per breaker the score is the engine's (`snapshot().health_score`, the README's formula); a server's is the
mean of its tools'; the overall one is the mean over all breakers (like `BreakerRegistry.summary()`), so a
server with many tools weighs more than one with a single tool. With no breakers every score is 1.0:
nothing is failing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from circuitbox.breakers import CircuitBreaker

Labels = Callable[[str], tuple[str, str]] | Mapping[str, tuple[str, str]] | None

_OPEN = frozenset({"open", "forced_open"})


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 1.0


def _label_fn(labels: Labels) -> Callable[[str], tuple[str, str]]:
    if labels is None:
        return lambda name: (name, "")
    if isinstance(labels, Mapping):
        table = labels
        return lambda name: table.get(name, (name, ""))
    return labels


def health_report(breakers: Iterable[CircuitBreaker], labels: Labels = None) -> dict[str, Any]:
    """Scores of every breaker, grouped by server, with an overall mean; JSON-ready.

    `labels` maps a breaker name to its (server, tool): a mapping, a function such as
    `MetricsCollector.labels_for`, or None for library breakers (server = name, tool = "").
    """
    label_of = _label_fn(labels)
    rows: list[dict[str, Any]] = []
    for breaker in breakers:  # a BreakerRegistry iterates over its breakers
        snap = breaker.snapshot()
        server, tool = label_of(breaker.name)
        rows.append(
            {
                "breaker": breaker.name,
                "server": server,
                "tool": tool,
                "state": snap.state.value,
                "health_score": snap.health_score,
            }
        )
    rows.sort(key=lambda r: (r["server"], r["tool"], r["breaker"]))

    by_server: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_server.setdefault(row["server"], []).append(row)
    servers = [
        {
            "server": server,
            "health_score": _mean([r["health_score"] for r in members]),
            "tools": len(members),
            "open": [r["tool"] or r["breaker"] for r in members if r["state"] in _OPEN],
        }
        for server, members in by_server.items()
    ]
    return {
        "overall": {
            "health_score": _mean([r["health_score"] for r in rows]),
            "breakers": len(rows),
            "open": sum(1 for r in rows if r["state"] in _OPEN),
            "half_open": sum(1 for r in rows if r["state"] == "half_open"),
        },
        "servers": servers,
        "breakers": rows,
    }
