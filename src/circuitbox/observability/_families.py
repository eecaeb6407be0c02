"""The metric families one scrape yields, and how one breaker's `Series` becomes their samples.

The first nine are the contract (README, "Observability"). The last two are extras that only the "open for
too long" alert needs, so that each breaker is judged against its own timeout.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ._series import FAILURE_TYPES, Series

LABELS = ("server", "tool")

# circuit_breaker_state values (README). disabled and metrics_only pass every call, so they read as closed.
STATE_VALUES = {"closed": 0, "open": 1, "forced_open": 1, "half_open": 2, "disabled": 0, "metrics_only": 0}


class Families:
    """One set of empty families per scrape (prometheus_client families are filled, yielded, dropped)."""

    def __init__(self) -> None:
        lb = list(LABELS)
        self.state = GaugeMetricFamily(
            "circuit_breaker_state", "Circuit state: 0 closed, 1 open or forced_open, 2 half_open.", labels=lb
        )
        self.requests = CounterMetricFamily(
            "circuit_breaker_requests",
            "Calls by result: success, failure, rejected, ignored.",
            labels=[*lb, "result"],
        )
        self.failures = CounterMetricFamily(
            "circuit_breaker_failures",
            "Failures by type: timeout, transport, protocol, tool_error, slow (slow counts in addition).",
            labels=[*lb, "failure_type"],
        )
        self.transitions = CounterMetricFamily(
            "circuit_breaker_state_transitions", "State transitions.", labels=[*lb, "from_state", "to_state"]
        )
        self.response = HistogramMetricFamily(
            "circuit_breaker_response_time_seconds", "Duration of calls that ran (not rejected).", labels=lb
        )
        self.fallbacks = CounterMetricFamily(
            "circuit_breaker_fallback_activations", "Rejected calls answered by a fallback.", labels=lb
        )
        self.health = GaugeMetricFamily("circuit_breaker_health_score", "Health score 0..1 (0 when open).", labels=lb)
        self.retries = CounterMetricFamily(
            "circuit_breaker_retries", "Attempts after the first (retry policy, read-only/idempotent tools).", labels=lb
        )
        self.stale_answers = CounterMetricFamily(
            "circuit_breaker_stale_answers", "Calls answered with a last-known-good result, marked stale.", labels=lb
        )
        self.open_timeout = GaugeMetricFamily(
            "circuit_breaker_open_timeout_seconds",
            "Configured base open period (the breaker's timeout); not part of the contract.",
            labels=lb,
        )
        self.open_duration = GaugeMetricFamily(
            "circuit_breaker_open_duration_seconds",
            "Seconds since the circuit stopped passing calls (open/half_open), 0 when closed; not contract.",
            labels=lb,
        )

    def __iter__(self) -> Iterator[Metric]:
        yield from (
            self.state,
            self.requests,
            self.failures,
            self.transitions,
            self.response,
            self.fallbacks,
            self.health,
            self.retries,
            self.stale_answers,
            self.open_timeout,
            self.open_duration,
        )

    def add(
        self,
        s: Series,
        state: str,
        open_duration: float,
        health: float | None = None,
        open_timeout: float | None = None,
    ) -> None:
        """Samples of one breaker; `health` and `open_timeout` need the breaker object, hence optional."""
        labels = [s.server, s.tool]
        self.state.add_metric(labels, STATE_VALUES.get(state, 0))
        for result, n in s.requests.items():
            self.requests.add_metric([*labels, result], n)
        for kind in FAILURE_TYPES:
            self.failures.add_metric([*labels, kind], s.failures[kind])
        for (src, dst), n in list(s.transitions.items()):
            self.transitions.add_metric([*labels, src, dst], n)
        self.response.add_metric(
            labels,
            buckets=[("+Inf" if b == math.inf else repr(float(b)), c) for b, c in s.cumulative_buckets()],
            sum_value=s.duration_sum,
        )
        self.fallbacks.add_metric(labels, s.fallbacks)
        self.retries.add_metric(labels, s.retries)
        self.stale_answers.add_metric(labels, s.stale_answers)
        self.open_duration.add_metric(labels, open_duration)
        if health is not None:
            self.health.add_metric(labels, health)
        if open_timeout is not None:
            self.open_timeout.add_metric(labels, open_timeout)
