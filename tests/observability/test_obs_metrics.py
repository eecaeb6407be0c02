from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from circuitbox.breakers import BreakerRegistry, CircuitBreakerConfig
from circuitbox.breakers.testing import FakeClock
from circuitbox.observability import BUCKETS, MetricsCollector, health_report

from .obs_support import collector_with, make_breaker, samples, scrape, serving, taking, trip, value

pytestmark = pytest.mark.anyio

DOCKER = {"server": "docker", "tool": "ps"}


async def test_a_scrape_after_scripted_calls_shows_every_family_with_the_expected_values() -> None:
    clock = FakeClock()
    breaker = make_breaker("docker__ps", clock)
    collector = collector_with(breaker)
    collector.bind("docker__ps", server="docker", tool="ps")
    await trip(breaker, clock)
    breaker.record_fallback()

    async with serving(collector.registry) as url:
        response = await scrape(url)
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(response.text)

    assert value(found, "circuit_breaker_state", **DOCKER) == 1
    for result, n in {"success": 3, "failure": 3, "rejected": 2, "ignored": 1}.items():
        assert value(found, "circuit_breaker_requests_total", **DOCKER, result=result) == n
    expected_failures = {"timeout": 1, "transport": 1, "tool_error": 1, "protocol": 0, "slow": 1}
    for kind, n in expected_failures.items():
        assert value(found, "circuit_breaker_failures_total", **DOCKER, failure_type=kind) == n
    transition = {"from_state": "closed", "to_state": "open"}
    assert value(found, "circuit_breaker_state_transitions_total", **DOCKER, **transition) == 1
    assert value(found, "circuit_breaker_fallback_activations_total", **DOCKER) == 1
    assert value(found, "circuit_breaker_health_score", **DOCKER) == 0
    assert value(found, "circuit_breaker_open_timeout_seconds", **DOCKER) == 10

    # 0.001 (ignored), 0.02, 0.04 x 3, 0.3, 2.0: seven calls ran; rejected ones have no duration.
    hist = "circuit_breaker_response_time_seconds"
    assert value(found, f"{hist}_count", **DOCKER) == 7
    assert value(found, f"{hist}_sum", **DOCKER) == pytest.approx(2.441)
    cumulative = {0.005: 1, 0.025: 2, 0.05: 5, 0.25: 5, 0.5: 6, 1.0: 6, 2.5: 7, 300.0: 7}
    for bound, n in cumulative.items():
        assert value(found, f"{hist}_bucket", **DOCKER, le=str(bound)) == n
    assert value(found, f"{hist}_bucket", **DOCKER, le="+Inf") == 7
    assert len([k for k in found if k[0] == f"{hist}_bucket"]) == len(BUCKETS) + 1


async def test_half_open_reads_two_and_its_health_is_half_the_closed_formula() -> None:
    clock = FakeClock()
    breaker = make_breaker("docker__ps", clock, success_threshold=2)
    collector = collector_with(breaker)
    collector.bind("docker__ps", server="docker", tool="ps")
    await trip(breaker, clock)
    clock.advance(10.5)
    assert await breaker.call(taking, clock, 0.1) == "ok"  # the first probe moves it to half_open

    async with serving(collector.registry) as url:
        found = samples((await scrape(url)).text)
        snap = breaker.snapshot()
        closed_formula = (1 - snap.failure_rate) * (1 - 0.5 * snap.slow_call_rate)
        assert value(found, "circuit_breaker_state", **DOCKER) == 2
        assert value(found, "circuit_breaker_health_score", **DOCKER) == pytest.approx(closed_formula / 2)

        assert await breaker.call(taking, clock, 0.1) == "ok"  # second probe closes it
        found = samples((await scrape(url)).text)
    assert value(found, "circuit_breaker_state", **DOCKER) == 0
    for src, dst in (("closed", "open"), ("open", "half_open"), ("half_open", "closed")):
        n = value(found, "circuit_breaker_state_transitions_total", **DOCKER, from_state=src, to_state=dst)
        assert n == 1
    assert value(found, "circuit_breaker_open_duration_seconds", **DOCKER) == 0


async def test_a_closed_breaker_scores_one_minus_failure_rate_times_the_slow_penalty() -> None:
    clock = FakeClock()
    breaker = make_breaker("payments", clock, failure_threshold=5)
    collector = collector_with(breaker)
    await breaker.call(taking, clock, 0.01)
    await breaker.call(taking, clock, 1.5)  # slow
    for _ in range(2):
        with pytest.raises(Exception, match="downstream said no"):
            await breaker.call(taking, clock, 0.01, fail=True)

    async with serving(collector.registry) as url:
        found = samples((await scrape(url)).text)
    # An unbound library breaker named X is server="X", tool="".
    labels = {"server": "payments", "tool": ""}
    assert value(found, "circuit_breaker_state", **labels) == 0
    assert value(found, "circuit_breaker_health_score", **labels) == pytest.approx((1 - 2 / 4) * (1 - 0.5 / 4))


async def test_openmetrics_is_served_when_the_scraper_asks_for_it() -> None:
    clock = FakeClock()
    breaker = make_breaker("docker__ps", clock)
    collector = collector_with(breaker)
    collector.bind("docker__ps", server="docker", tool="ps")
    await trip(breaker, clock)

    async with serving(collector.registry) as url:
        response = await scrape(url, accept="application/openmetrics-text; version=1.0.0; charset=utf-8")
        plain = await scrape(url, accept="text/plain")
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(response.text)}
    requests = families["circuit_breaker_requests"]
    assert requests.type == "counter"
    got = {s.labels["result"]: s.value for s in requests.samples if s.name == "circuit_breaker_requests_total"}
    assert got == {"success": 3, "failure": 3, "rejected": 2, "ignored": 0 + 1}
    assert families["circuit_breaker_response_time_seconds"].type == "histogram"
    assert plain.headers["content-type"].startswith("text/plain")
    assert "# EOF" not in plain.text


async def test_forget_removes_every_series_of_a_breaker_and_late_events_do_not_bring_them_back() -> None:
    clock = FakeClock()
    registry = BreakerRegistry()
    collector = MetricsCollector(CollectorRegistry())
    collector.attach(registry)
    gone = registry.get_or_create("docker__ps", clock=clock)
    kept = registry.get_or_create("docker__logs", clock=clock)
    collector.bind("docker__ps", server="docker", tool="ps")
    collector.bind("docker__logs", server="docker", tool="logs")
    await gone.call(taking, clock, 0.01)
    await kept.call(taking, clock, 0.01)
    in_flight = gone.acquire()
    assert not in_flight.rejected

    async with serving(collector.registry) as url:
        assert 'tool="ps"' in (await scrape(url)).text
        collector.forget("docker__ps")  # the tool vanished from the downstream
        in_flight.failure("timeout")  # its last call ends afterwards
        gone.record_fallback()
        text = (await scrape(url)).text
        assert 'tool="ps"' not in text
        assert 'server="docker__ps"' not in text  # not resurrected under an unbound label either
        found = samples(text)
        assert value(found, "circuit_breaker_requests_total", server="docker", tool="logs", result="success") == 1

        collector.bind("docker__ps", server="docker", tool="ps")  # the tool came back: counting starts over
        gone.record_fallback()
        found = samples((await scrape(url)).text)
    assert value(found, "circuit_breaker_fallback_activations_total", server="docker", tool="ps") == 1
    assert value(found, "circuit_breaker_requests_total", server="docker", tool="ps", result="success") == 0


async def test_tool_stats_gives_counters_percentiles_and_fallbacks_for_circuit_metrics() -> None:
    clock = FakeClock()
    breaker = make_breaker("docker__ps", clock, failure_threshold=50)
    collector = collector_with(breaker)
    collector.bind("docker__ps", server="docker", tool="ps")
    for i in range(1, 101):  # 10 ms .. 1 s
        await breaker.call(taking, clock, i / 100)
    breaker.record_fallback()

    stats = collector.tool_stats("docker__ps")
    assert stats["server"] == "docker" and stats["tool"] == "ps"
    assert stats["requests"] == {"success": 100, "failure": 0, "rejected": 0, "ignored": 0, "total": 100}
    assert stats["failures_by_type"]["slow"] == 1  # 1.0 s reaches slow_call_duration
    assert stats["fallback_activations"] == 1
    latency = stats["latency_seconds"]
    assert latency["samples"] == 100
    assert latency["p50"] == pytest.approx(0.50)
    assert latency["p95"] == pytest.approx(0.95)
    assert latency["p99"] == pytest.approx(0.99)
    assert latency["max"] == pytest.approx(1.0)
    assert latency["mean"] == pytest.approx(0.505)

    unknown = collector.tool_stats("nobody__nothing")
    assert unknown["requests"]["total"] == 0 and unknown["latency_seconds"]["p50"] is None
    assert "nobody__nothing" not in collector.names()


async def test_health_report_scores_each_breaker_each_server_as_the_mean_of_its_tools_and_overall() -> None:
    clock = FakeClock()
    registry = BreakerRegistry()
    collector = MetricsCollector(CollectorRegistry())
    collector.attach(registry)
    ps = registry.get_or_create("docker__ps", CircuitBreakerConfig(failure_threshold=3, jitter=0.0), clock=clock)
    logs = registry.get_or_create("docker__logs", CircuitBreakerConfig(failure_threshold=5), clock=clock)
    s3 = registry.get_or_create("s3__get", clock=clock)
    for name in ("docker__ps", "docker__logs", "s3__get"):
        server, tool = name.split("__")
        collector.bind(name, server=server, tool=tool)
    await trip(ps, clock)  # open: 0
    await logs.call(taking, clock, 0.01)
    with pytest.raises(Exception, match="said no"):
        await logs.call(taking, clock, 0.01, fail=True)  # 1 - 1/2 = 0.5
    await s3.call(taking, clock, 0.01)  # 1.0

    report = health_report(registry, collector.labels_for)
    scores = {(b["server"], b["tool"]): b["health_score"] for b in report["breakers"]}
    assert scores == {("docker", "logs"): pytest.approx(0.5), ("docker", "ps"): 0, ("s3", "get"): 1}
    servers = {s["server"]: s for s in report["servers"]}
    assert servers["docker"]["health_score"] == pytest.approx(0.25)
    assert servers["docker"]["open"] == ["ps"]
    assert servers["s3"]["health_score"] == 1
    assert report["overall"] == {"health_score": pytest.approx(0.5), "breakers": 3, "open": 1, "half_open": 0}
    assert health_report([])["overall"]["health_score"] == 1.0


def test_two_collectors_with_the_same_families_cannot_share_a_registry() -> None:
    registry = CollectorRegistry()
    MetricsCollector(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        MetricsCollector(registry)
