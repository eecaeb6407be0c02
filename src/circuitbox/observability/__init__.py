"""Observability for circuitbox: Prometheus metrics fed by breaker events, health scores, the /metrics
endpoint, a Grafana dashboard, alert rules and transition logs.

    collector = MetricsCollector(CollectorRegistry())
    collector.attach(breaker_registry)                 # or a single CircuitBreaker
    collector.bind("docker__ps", server="docker", tool="ps")
    app = metrics_app(collector.registry)              # ASGI, mount at /metrics
"""

from __future__ import annotations

from ._series import BUCKETS
from .alerts import Thresholds, build_rules, to_yaml
from .collector import MetricsCollector
from .dashboard import build_dashboard
from .health import health_report
from .http import MetricsApp, metrics_app, metrics_route, render, start_metrics_server
from .logging import TransitionLogger, configure_logging, log_transition

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
