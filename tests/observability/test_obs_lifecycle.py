from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from circuitbox.breakers import BreakerRegistry, CircuitState
from circuitbox.breakers.testing import FakeClock
from circuitbox.observability import MetricsCollector
from circuitbox.observability._series import RESERVOIR_SIZE

from .obs_support import make_breaker, samples, scrape, serving, taking, trip, value

pytestmark = pytest.mark.anyio

PS = {"server": "docker", "tool": "ps"}


async def test_the_open_duration_runs_from_the_opening_through_half_open_and_stops_when_it_closes() -> None:
    clock = FakeClock()  # the breaker's clock
    wall = FakeClock(1000.0)  # the collector's own clock for "how long has it been open"
    breaker = make_breaker("docker__ps", clock, success_threshold=1)
    collector = MetricsCollector(CollectorRegistry(), clock=wall)
    collector.attach(breaker)
    collector.bind("docker__ps", **PS)

    async with serving(collector.registry) as url:
        await trip(breaker, clock)
        wall.advance(75)
        found = samples((await scrape(url)).text)
        # The alert condition: open_duration > open_timeout + margin (60 s by default).
        assert value(found, "circuit_breaker_open_duration_seconds", **PS) == 75
        assert value(found, "circuit_breaker_open_timeout_seconds", **PS) == 10

        clock.advance(11)
        permit = breaker.acquire()  # half_open now; the duration keeps running
        assert not permit.rejected
        wall.advance(5)
        assert value(samples((await scrape(url)).text), "circuit_breaker_open_duration_seconds", **PS) == 80
        permit.success()
        found = samples((await scrape(url)).text)
    assert value(found, "circuit_breaker_state", **PS) == 0
    assert value(found, "circuit_breaker_open_duration_seconds", **PS) == 0


async def test_operator_states_map_to_the_contract_values() -> None:
    clock = FakeClock()
    breaker = make_breaker("docker__ps", clock)
    collector = MetricsCollector(CollectorRegistry())
    collector.attach(breaker)
    expected = {
        CircuitState.FORCED_OPEN: (1, 0.0),
        CircuitState.DISABLED: (0, 1.0),
        CircuitState.METRICS_ONLY: (0, 1.0),
    }
    async with serving(collector.registry) as url:
        for state, (gauge, health) in expected.items():
            breaker.force(state)
            found = samples((await scrape(url)).text)
            labels = {"server": "docker__ps", "tool": ""}
            assert value(found, "circuit_breaker_state", **labels) == gauge, state
            assert value(found, "circuit_breaker_health_score", **labels) == health, state
            breaker.reset()


async def test_a_plain_listener_counts_everything_and_tracks_state_from_transitions() -> None:
    clock = FakeClock()
    registry = BreakerRegistry()
    collector = MetricsCollector(CollectorRegistry())
    registry.add_listener(collector.on_event)  # no attach(): the collector never sees breaker objects
    breaker = registry.get_or_create("payments", make_breaker("x", clock).config, clock=clock)
    await trip(breaker, clock)

    async with serving(collector.registry) as url:
        found = samples((await scrape(url)).text)
    labels = {"server": "payments", "tool": ""}
    assert value(found, "circuit_breaker_state", **labels) == 1
    assert value(found, "circuit_breaker_requests_total", **labels, result="rejected") == 2
    assert ("circuit_breaker_health_score", frozenset(labels.items())) not in found  # needs attach()


async def test_name_filters_restrict_a_scrape_to_the_asked_families() -> None:
    clock = FakeClock()
    breaker = make_breaker("docker__ps", clock)
    collector = MetricsCollector(CollectorRegistry())
    collector.attach(breaker)
    async with serving(collector.registry) as url:
        text = (await scrape(url + "?name[]=circuit_breaker_state&name[]=circuit_breaker_health_score")).text
    assert {name for name, _ in samples(text)} == {"circuit_breaker_state", "circuit_breaker_health_score"}


async def test_percentiles_cover_the_latest_calls_only() -> None:
    clock = FakeClock()
    breaker = make_breaker("docker__ps", clock, slow_call_duration=None)
    collector = MetricsCollector(CollectorRegistry())
    collector.attach(breaker)
    for _ in range(RESERVOIR_SIZE):
        await breaker.call(taking, clock, 5.0)
    for _ in range(RESERVOIR_SIZE):
        await breaker.call(taking, clock, 0.01)  # the slow past has rotated out
    latency = collector.tool_stats("docker__ps")["latency_seconds"]
    assert latency["samples"] == RESERVOIR_SIZE
    assert latency["p99"] == latency["max"] == pytest.approx(0.01)
    assert latency["mean"] == pytest.approx((5.0 + 0.01) / 2)  # the mean is over every call since binding


class Broken(Collector):
    def collect(self) -> Iterator[object]:  # type: ignore[override]
        raise RuntimeError("collector bug")


async def test_a_broken_collector_gets_a_500_and_the_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    registry.register(Broken())
    async with serving(registry) as url, httpx2.AsyncClient(timeout=5) as client:
        assert (await client.get(url)).status_code == 500
        assert (await client.get(url)).status_code == 500
    assert "rendering /metrics failed" in caplog.text
