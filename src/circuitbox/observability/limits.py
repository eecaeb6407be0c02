"""`circuit_breaker_inflight` and `circuit_breaker_limited_total{reason}`: read from the guard at scrape time.

The guard already counts calls in flight and refusals per (server, tool) as plain integers (it needs them to decide);
this collector only turns them into families when scraped, so the hot path pays nothing for the metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

# (server, tool, calls in flight, {reason: refusals}) for every (server, tool) the proxy guards.
LimitRows = Callable[[], Iterable[tuple[str, str, int, Mapping[str, int]]]]


class LimitsCollector:
    """The two limit families for the rows `source` gives, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry, source: LimitRows) -> None:
        self._source = source
        registry.register(self)

    def _families(self) -> tuple[GaugeMetricFamily, CounterMetricFamily]:
        # Here, not at the top: this module is imported by every proxy, prometheus_client only once it is scraped.
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        return (
            GaugeMetricFamily(
                "circuit_breaker_inflight",
                "Calls in flight (past their limits, not yet answered).",
                labels=["server", "tool"],
            ),
            CounterMetricFamily(
                "circuit_breaker_limited",
                "Calls answered without reaching the downstream because of a limit: busy (max_concurrent, "
                "server_max_concurrent) or rate_limited (rate_limit).",
                labels=["server", "tool", "reason"],
            ),
        )

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        inflight, limited = self._families()
        for server, tool, count, refused in self._source():
            inflight.add_metric([server, tool], count)
            for reason, n in refused.items():
                limited.add_metric([server, tool, reason], n)
        yield inflight
        yield limited
