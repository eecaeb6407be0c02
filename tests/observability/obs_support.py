"""Helpers for the observability tests: a scripted breaker, serving and scraping /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import httpx2
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from circuitbox.breakers import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError
from circuitbox.breakers.testing import FakeClock
from circuitbox.observability import MetricsCollector, start_metrics_server


class Boom(Exception):
    """The guarded operation failed."""


def make_breaker(name: str, clock: FakeClock, **overrides: Any) -> CircuitBreaker:
    settings: dict[str, Any] = {
        "failure_threshold": 3,
        "timeout": 10,
        "slow_call_duration": 1.0,
        "minimum_calls": 100,
        "jitter": 0.0,
        **overrides,
    }
    return CircuitBreaker(CircuitBreakerConfig(name=name, **settings), clock=clock)


async def taking(clock: FakeClock, seconds: float, *, fail: bool = False) -> str:
    clock.advance(seconds)
    if fail:
        raise Boom("downstream said no")
    return "ok"


async def trip(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """3 successes (one slow), 1 ignored, 3 failures (timeout, transport, exception) -> open, 2 rejections.

    Durations: 0.02, 0.3, 2.0 (slow), 0.001 (ignored), 0.04 x 3 (failures).
    """
    for seconds in (0.02, 0.3, 2.0):
        assert await breaker.call(taking, clock, seconds) == "ok"
    permit = breaker.acquire()
    assert not permit.rejected
    clock.advance(0.001)
    permit.ignored()
    for kind in ("timeout", "transport"):
        permit = breaker.acquire()
        assert not permit.rejected
        clock.advance(0.04)
        permit.failure(kind, "it broke")
    with suppress(Boom):
        await breaker.call(taking, clock, 0.04, fail=True)
    assert str(breaker.state) == "open"
    for _ in range(2):
        with pytest.raises(CircuitOpenError):  # an open circuit must not let the call through
            await breaker.call(taking, clock, 0.01)


@asynccontextmanager
async def serving(registry: CollectorRegistry) -> AsyncIterator[str]:
    """Serve `registry` on a free loopback port for the block; yields the /metrics URL."""
    async with anyio.create_task_group() as tg:
        port = await tg.start(start_metrics_server, registry, "127.0.0.1", 0)
        try:
            yield f"http://127.0.0.1:{port}/metrics"
        finally:
            tg.cancel_scope.cancel()


async def scrape(url: str, accept: str | None = None) -> httpx2.Response:
    headers = {"Accept": accept} if accept else {}
    async with httpx2.AsyncClient(timeout=10) as client:
        response = await client.get(url, headers=headers)
    response.raise_for_status()
    return response


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a text exposition, keyed by (sample name, labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def collector_with(*breakers: CircuitBreaker) -> MetricsCollector:
    collector = MetricsCollector(CollectorRegistry())
    for breaker in breakers:
        collector.attach(breaker)
    return collector
