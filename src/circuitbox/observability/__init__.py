"""Observability for circuitbox: Prometheus metrics fed by breaker events, health scores, the /metrics
endpoint, a Grafana dashboard, alert rules and transition logs.

    collector = MetricsCollector(CollectorRegistry())
    collector.attach(breaker_registry)                 # or a single CircuitBreaker
    collector.bind("docker__ps", server="docker", tool="ps")
    app = metrics_app(collector.registry)              # ASGI, mount at /metrics
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._series import BUCKETS
    from .alerts import Thresholds, build_rules, to_yaml
    from .collector import MetricsCollector
    from .dashboard import build_dashboard
    from .health import health_report
    from .http import MetricsApp, metrics_app, metrics_route, render, start_metrics_server
    from .logging import TransitionLogger, configure_logging, log_transition

# name -> the submodule defining it, imported on first use: `serve` imports this package for its logging and
# traces, and its start (spawn to initialize answered) would otherwise pay for prometheus_client's exposition
# (http.server, wsgiref), the dashboard and the alert rules, none of which a stdio proxy needs.
_LAZY = {
    "BUCKETS": "_series",
    "Thresholds": "alerts",
    "build_rules": "alerts",
    "to_yaml": "alerts",
    "MetricsCollector": "collector",
    "build_dashboard": "dashboard",
    "health_report": "health",
    "MetricsApp": "http",
    "metrics_app": "http",
    "metrics_route": "http",
    "render": "http",
    "start_metrics_server": "http",
    "TransitionLogger": "logging",
    "configure_logging": "logging",
    "log_transition": "logging",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value


__all__ = [
    "BUCKETS",
    "MetricsApp",
    "MetricsCollector",
    "Thresholds",
    "TransitionLogger",
    "build_dashboard",
    "build_rules",
    "configure_logging",
    "health_report",
    "log_transition",
    "metrics_app",
    "metrics_route",
    "render",
    "start_metrics_server",
    "to_yaml",
]
