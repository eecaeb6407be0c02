"""Prometheus alerting rules for the circuit_breaker_* families (`circuitbox alerts`).

The seed's conditions: a circuit opened, a high failure rate, a circuit open longer than its timeout plus a
margin, a low health score, excessive fallback activations; and two of our own: many calls refused by the limits,
a replica cut off from its cluster's Redis. Rules keep every label of the series (job,
instance, server, tool) so two proxies scraped by one Prometheus never collide.

"Open too long" compares two gauges that are not part of the contract: `circuit_breaker_open_duration_seconds`
(how long the circuit has not been passing calls, kept through open -> half_open -> open flips) and
`circuit_breaker_open_timeout_seconds` (its configured timeout), so each breaker is judged by its own timeout.

The file is YAML written by hand (no YAML dependency): every scalar is a JSON string, which YAML reads as is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Thresholds:
    """Knobs of the rules; the defaults match the engine's defaults (failure_rate_threshold 0.5)."""

    failure_rate: float = 0.5
    min_calls: int = 10
    health: float = 0.5
    open_margin: float = 60.0
    fallbacks_per_minute: float = 10.0
    limited_per_minute: float = 60.0
    window: str = "5m"


def build_rules(t: Thresholds = Thresholds()) -> dict[str, Any]:
    """The rules file as a dict (`groups` -> `rules`), JSON-ready."""
    w = t.window
    req = "circuit_breaker_requests_total"
    ran = f'sum without (result) (increase({req}{{result=~"success|failure"}}[{w}]))'
    who = "{{ $labels.server }}/{{ $labels.tool }}"
    rules = [
        _rule(
            "CircuitBreakerOpen",
            "circuit_breaker_state == 1",
            "30s",
            "warning",
            f"Circuit {who} is open",
            "Calls to this tool are rejected (or answered by its fallback) until a probe succeeds.",
        ),
        _rule(
            "CircuitBreakerHighFailureRate",
            f'sum without (result) (increase({req}{{result="failure"}}[{w}])) / {ran} > {t.failure_rate}'
            f" and {ran} >= {t.min_calls}",
            "5m",
            "warning",
            f"{who} fails {{{{ $value | humanizePercentage }}}} of its calls",
            f"More than {t.failure_rate:.0%} of the calls that ran over {w} failed (at least {t.min_calls} calls).",
        ),
        _rule(
            "CircuitBreakerOpenTooLong",
            f"circuit_breaker_open_duration_seconds > (circuit_breaker_open_timeout_seconds + {t.open_margin:g})",
            "1m",
            "critical",
            f"Circuit {who} has not closed for {{{{ $value | humanizeDuration }}}}",
            f"Open longer than its timeout plus {t.open_margin:g}s: its probes keep failing, or no call has "
            "come to probe it.",
        ),
        _rule(
            "CircuitBreakerLowHealth",
            f"circuit_breaker_health_score < {t.health}",
            "5m",
            "warning",
            f"Health score of {who} is {{{{ $value | humanize }}}}",
            f"Below {t.health}: failures or slow calls in its window, or the circuit is not closed.",
        ),
        _rule(
            "CircuitBreakerExcessiveFallbacks",
            f"rate(circuit_breaker_fallback_activations_total[{w}]) * 60 > {t.fallbacks_per_minute:g}",
            "5m",
            "warning",
            f"{who} answers {{{{ $value | humanize }}}} calls per minute from its fallback",
            f"More than {t.fallbacks_per_minute:g} fallback answers per minute over {w}.",
        ),
        _rule(
            "CircuitBreakerCallsLimited",
            f"sum without (reason) (rate(circuit_breaker_limited_total[{w}])) * 60 > {t.limited_per_minute:g}",
            "5m",
            "warning",
            f"{who} refuses {{{{ $value | humanize }}}} calls per minute as busy or rate limited",
            f"More than {t.limited_per_minute:g} calls per minute over {w} met its max_concurrent, "
            "server_max_concurrent or rate_limit: the limit is too low for the traffic, or the server is slow.",
        ),
        _rule(
            "CircuitboxClusterUnreachable",
            "circuitbox_cluster_connected == 0",
            "1m",
            "warning",
            "Replica {{ $labels.instance }} cannot reach the cluster's Redis",
            "It goes on alone: its breakers no longer learn of the fleet's trips, and its share of each probe "
            "budget is what it admits.",
        ),
    ]
    return {"groups": [{"name": "circuitbox", "rules": rules}]}


def _rule(name: str, expr: str, for_: str, severity: str, summary: str, description: str) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": description},
    }


def to_yaml(doc: dict[str, Any]) -> str:
    """Render a rules dict as YAML (block style, JSON-quoted scalars)."""
    lines = ["# Prometheus alerting rules for circuitbox (generated by `circuitbox alerts`).", "groups:"]
    for group in doc["groups"]:
        lines.append(f"  - name: {json.dumps(group['name'])}")
        lines.append("    rules:")
        for rule in group["rules"]:
            first = True
            for key, value in rule.items():
                prefix = "      - " if first else "        "
                first = False
                if isinstance(value, dict):
                    lines.append(f"{prefix}{key}:")
                    lines.extend(f"          {k}: {json.dumps(v)}" for k, v in value.items())
                else:
                    lines.append(f"{prefix}{key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"
