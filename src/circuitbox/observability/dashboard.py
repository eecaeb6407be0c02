"""The Grafana dashboard for the circuit_breaker_* families (`circuitbox dashboard`).

Importable as is (Dashboards > New > Import, or the HTTP API): no `__inputs`; a `datasource` variable
picks the Prometheus data source, and `server` / `tool` variables (multi-select, "All" = `.*`, which also
matches the empty tool label of library breakers) filter every panel.
"""

from __future__ import annotations

from typing import Any

UID = "circuitbox-breakers"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'server=~"$server", tool=~"$tool"'
RI = "$__rate_interval"
LEGEND = "{{server}}/{{tool}}"
REQ = "circuit_breaker_requests_total"
FALLBACKS = "circuit_breaker_fallback_activations_total"

_STATE_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "0": {"text": "closed", "color": "green", "index": 0},
            "1": {"text": "open", "color": "red", "index": 1},
            "2": {"text": "half_open", "color": "yellow", "index": 2},
        },
    }
]


def _target(expr: str, legend: str = LEGEND, ref: str = "A") -> dict[str, Any]:
    return {"refId": ref, "datasource": DS, "expr": expr, "legendFormat": legend, "range": True}


def _panel(
    kind: str,
    title: str,
    grid: tuple[int, int, int, int],
    targets: list[dict[str, Any]],
    *,
    unit: str = "short",
    description: str = "",
    defaults: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    x, y, w, h = grid
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit, **(defaults or {})}, "overrides": []},
        "options": options or {},
    }


def _thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]}


def _query_var(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": query,
        "definition": query,
        "refresh": 2,  # on time range change: tools come and go with the downstreams
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "regex": "",
        "sort": 1,
        "hide": 0,
    }


def _panels() -> list[dict[str, Any]]:
    health = {"min": 0, "max": 1, "thresholds": _thresholds((None, "red"), (0.5, "yellow"), (0.8, "green"))}
    bars = {"custom": {"drawStyle": "bars", "fillOpacity": 60}}
    q = "circuit_breaker_response_time_seconds_bucket"
    return [
        _panel(
            "stat",
            "Open circuits",
            (0, 0, 6, 4),
            [_target(f"count(circuit_breaker_state{{{SEL}}} == 1) or vector(0)", "open")],
            defaults={"thresholds": _thresholds((None, "green"), (1, "red"))},
        ),
        _panel(
            "stat",
            "Half-open circuits",
            (6, 0, 6, 4),
            [_target(f"count(circuit_breaker_state{{{SEL}}} == 2) or vector(0)", "half_open")],
            defaults={"thresholds": _thresholds((None, "green"), (1, "yellow"))},
        ),
        _panel(
            "stat",
            "Overall health score",
            (12, 0, 6, 4),
            [_target(f"avg(circuit_breaker_health_score{{{SEL}}})", "health")],
            unit="percentunit",
            defaults=health,
        ),
        _panel(
            "stat",
            "Requests per second",
            (18, 0, 6, 4),
            [_target(f"sum(rate(circuit_breaker_requests_total{{{SEL}}}[{RI}]))", "req/s")],
            unit="reqps",
        ),
        _panel(
            "state-timeline",
            "Circuit state per server and tool",
            (0, 4, 24, 9),
            [_target(f"max by (server, tool) (circuit_breaker_state{{{SEL}}})")],
            description="closed / open (or forced_open) / half_open, one row per (server, tool).",
            defaults={
                "mappings": _STATE_MAPPINGS,
                "color": {"mode": "thresholds"},
                "thresholds": _thresholds((None, "green"), (1, "red"), (2, "yellow")),
            },
            options={"showValue": "never", "mergeValues": True, "rowHeight": 0.8},
        ),
        _panel(
            "timeseries",
            "Request rate by result",
            (0, 13, 12, 8),
            [_target(f"sum by (result) (rate(circuit_breaker_requests_total{{{SEL}}}[{RI}]))", "{{result}}")],
            unit="reqps",
        ),
        _panel(
            "timeseries",
            "Failure rate per tool",
            (12, 13, 12, 8),
            [
                _target(
                    f'sum by (server, tool) (rate({REQ}{{{SEL}, result="failure"}}[{RI}]))'
                    f' / sum by (server, tool) (rate({REQ}{{{SEL}, result=~"success|failure"}}[{RI}]))'
                )
            ],
            unit="percentunit",
            description="Failed / (succeeded + failed) calls; rejected calls excluded.",
            defaults={"min": 0, "max": 1},
        ),
        _panel(
            "timeseries",
            "Failures by type",
            (0, 21, 12, 8),
            [
                _target(
                    f"sum by (failure_type) (rate(circuit_breaker_failures_total{{{SEL}}}[{RI}]))",
                    "{{failure_type}}",
                )
            ],
            unit="reqps",
            description="slow counts calls over slow_call_duration, whatever their outcome.",
        ),
        _panel(
            "timeseries",
            "Response time p50 / p95 / p99",
            (12, 21, 12, 8),
            [
                _target(f"histogram_quantile({p}, sum by (le) (rate({q}{{{SEL}}}[{RI}])))", f"p{int(p * 100)}", r)
                for p, r in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
            ],
            unit="s",
            description="From the histogram, over every selected tool.",
        ),
        _panel(
            "timeseries",
            "Response time p95 per tool",
            (0, 29, 12, 8),
            [_target(f"histogram_quantile(0.95, sum by (server, tool, le) (rate({q}{{{SEL}}}[{RI}])))")],
            unit="s",
        ),
        _panel(
            "timeseries",
            "Health score per tool",
            (12, 29, 12, 8),
            [_target(f"circuit_breaker_health_score{{{SEL}}}")],
            unit="percentunit",
            defaults=health,
        ),
        _panel(
            "timeseries",
            "Health score per server",
            (0, 37, 12, 8),
            [_target(f"avg by (server) (circuit_breaker_health_score{{{SEL}}})", "{{server}}")],
            unit="percentunit",
            defaults=health,
        ),
        _panel(
            "timeseries",
            "State transitions",
            (12, 37, 12, 8),
            [
                _target(
                    "sum by (server, tool, from_state, to_state) "
                    f"(increase(circuit_breaker_state_transitions_total{{{SEL}}}[{RI}]))",
                    "{{server}}/{{tool}} {{from_state}} -> {{to_state}}",
                )
            ],
            defaults=bars,
        ),
        _panel(
            "timeseries",
            "Fallback activations",
            (0, 45, 24, 8),
            [_target(f"sum by (server, tool) (increase({FALLBACKS}{{{SEL}}}[{RI}]))")],
            defaults=bars,
            description="Rejected calls answered by the configured fallback instead of an error.",
        ),
        _panel(
            "timeseries",
            "Calls in flight per tool",
            (0, 53, 12, 8),
            [_target(f"sum by (server, tool) (circuit_breaker_inflight{{{SEL}}})")],
            description="Calls past their limits (max_concurrent, rate_limit) and not yet answered.",
        ),
        _panel(
            "timeseries",
            "Calls refused by limits (busy, rate limited)",
            (12, 53, 12, 8),
            [
                _target(
                    f"sum by (server, tool, reason) (increase(circuit_breaker_limited_total{{{SEL}}}[{RI}]))",
                    "{{server}}/{{tool}} {{reason}}",
                )
            ],
            defaults=bars,
            description="Answered at once without reaching the server; these never move a breaker.",
        ),
        _panel(
            "timeseries",
            "Retries and stale answers",
            (0, 61, 12, 8),
            [
                _target(
                    f"sum by (server, tool) (increase(circuit_breaker_retries_total{{{SEL}}}[{RI}]))",
                    "{{server}}/{{tool}} retries",
                ),
                _target(
                    f"sum by (server, tool) (increase(circuit_breaker_stale_answers_total{{{SEL}}}[{RI}]))",
                    "{{server}}/{{tool}} stale answers",
                    "B",
                ),
            ],
            defaults=bars,
            description="Attempts after the first (retry policy); calls answered from last_known_good, marked stale.",
        ),
        _panel(
            "timeseries",
            "Cluster: replicas linked to Redis",
            (12, 61, 12, 8),
            [
                _target("sum(circuitbox_cluster_connected) or vector(0)", "linked", "A"),
                _target("count(circuitbox_cluster_connected == 0) or vector(0)", "going on alone", "B"),
            ],
            description="Replicas sharing breaker state through the cluster's Redis, and those cut off from it "
            "(each goes on alone). Empty without a cluster configured.",
        ),
    ]


def build_dashboard(title: str = "circuitbox: circuit breakers", uid: str = UID) -> dict[str, Any]:
    """The dashboard as a JSON-ready dict."""
    panels = _panels()
    for number, panel in enumerate(panels, start=1):
        panel["id"] = number
    return {
        "id": None,
        "uid": uid,
        "title": title,
        "description": "circuitbox's per (server, tool) circuit breakers: state, traffic, failures, latency.",
        "tags": ["circuitbox", "circuit-breaker", "mcp"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "options": [],
                    "refresh": 1,
                    "regex": "",
                    "hide": 0,
                },
                _query_var("server", "Server", "label_values(circuit_breaker_state, server)"),
                _query_var("tool", "Tool", 'label_values(circuit_breaker_state{server=~"$server"}, tool)'),
            ]
        },
        "panels": panels,
    }
