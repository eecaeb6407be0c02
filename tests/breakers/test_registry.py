from __future__ import annotations

import json

import pytest

from circuitbox.breakers import (
    BreakerRegistry,
    CircuitBreakerConfig,
    CircuitState,
    Permit,
    StateTransition,
    get_circuit_breaker_manager,
)
from circuitbox.breakers.testing import FakeClock

from .conftest import Recorder

S = CircuitState


def fail(registry: BreakerRegistry, name: str, times: int = 1) -> None:
    breaker = registry.get(name)
    assert breaker is not None
    for _ in range(times):
        permit = breaker.acquire()
        assert isinstance(permit, Permit)
        permit.failure("transport", "refused")


def test_get_or_create_returns_the_same_breaker_for_the_same_name(clock: FakeClock) -> None:
    registry = BreakerRegistry(clock=clock)
    config = CircuitBreakerConfig(name="ignored", failure_threshold=2)
    first = registry.get_or_create("docker__ps", config)
    assert first.name == "docker__ps" and first.config.failure_threshold == 2
    assert registry.get_or_create("docker__ps") is first
    assert registry.get_or_create("docker__ps", CircuitBreakerConfig(failure_threshold=9)) is first
    assert first.config.failure_threshold == 2  # an existing breaker is returned as it is
    assert registry.get_or_create("plain").config.name == "plain"
    named = CircuitBreakerConfig(name="same")
    assert registry.get_or_create("same", named).config is named  # nothing to rename


def test_lookup_iteration_membership_and_removal(clock: FakeClock) -> None:
    registry = BreakerRegistry(clock=clock)
    a = registry.get_or_create("a")
    b = registry.get_or_create("b", clock=FakeClock(100))
    assert list(registry) == [a, b] and len(registry) == 2
    assert "a" in registry and "c" not in registry
    assert registry.get("a") is a and registry.get("c") is None
    registry.remove("a")
    registry.remove("a")  # removing twice is harmless
    assert list(registry) == [b]
    assert b.snapshot().opened_at is None


def test_a_registry_listener_hears_existing_and_future_breakers(clock: FakeClock) -> None:
    events = Recorder()
    registry = BreakerRegistry(clock=clock)
    registry.get_or_create("old", CircuitBreakerConfig(failure_threshold=1))
    registry.add_listener(events)
    registry.add_listener(events)
    registry.get_or_create("new", CircuitBreakerConfig(failure_threshold=1))
    fail(registry, "old")
    fail(registry, "new")
    assert [t.breaker for t in events.of(StateTransition)] == ["old", "new"]
    registry.remove_listener(events)
    registry.remove_listener(events)
    registry.get("old").reset()  # type: ignore[union-attr]
    assert len(events.of(StateTransition)) == 2


def test_summary_counts_states_names_the_open_ones_and_averages_health(clock: FakeClock) -> None:
    registry = BreakerRegistry(clock=clock)
    for name in ("a", "b", "c", "d"):
        registry.get_or_create(name, CircuitBreakerConfig(failure_threshold=2, jitter=0))
    fail(registry, "a", 2)  # open: health 0
    fail(registry, "b")  # one failure in one call (below minimum_calls): failure rate 1, health 0
    registry.get("c").force(S.FORCED_OPEN)  # type: ignore[union-attr]
    summary = registry.summary()
    assert summary["total"] == 4
    assert summary["by_state"] == {
        "closed": 2,
        "open": 1,
        "half_open": 0,
        "forced_open": 1,
        "disabled": 0,
        "metrics_only": 0,
    }
    assert summary["open"] == ["a", "c"]
    assert summary["health_score"] == pytest.approx(0.25)  # only d is healthy
    assert summary["healthy"] is False


def test_an_empty_registry_is_healthy() -> None:
    assert BreakerRegistry().summary() == {
        "total": 0,
        "by_state": {s.value: 0 for s in S},
        "open": [],
        "health_score": 1.0,
        "healthy": True,
    }


def test_export_json_holds_the_summary_and_every_snapshot(clock: FakeClock) -> None:
    registry = BreakerRegistry(clock=clock)
    registry.get_or_create("a", CircuitBreakerConfig(failure_threshold=1, jitter=0))
    registry.get_or_create("b")
    fail(registry, "a")
    data = json.loads(registry.export_json())
    assert data["summary"]["open"] == ["a"]
    [a, b] = data["breakers"]
    assert (a["name"], a["state"], a["last_error"], a["retry_after"]) == ("a", "open", "refused", 60)
    assert (b["name"], b["state"], b["health_score"]) == ("b", "closed", 1.0)
    assert "\n" not in registry.export_json(indent=None)


def test_the_process_wide_manager_is_one_registry() -> None:
    manager = get_circuit_breaker_manager()
    assert isinstance(manager, BreakerRegistry) and manager is get_circuit_breaker_manager()


def test_the_seed_imports_work_from_the_package() -> None:
    import circuitbox.breakers as breakers

    assert set(breakers.__all__) >= {
        "CircuitBreaker",
        "CircuitBreakerConfig",
        "CircuitOpenError",
        "CircuitState",
        "BreakerRegistry",
        "get_circuit_breaker_manager",
        "profile",
    }
    assert all(hasattr(breakers, name) for name in breakers.__all__)


def test_ten_thousand_named_breakers_with_count_windows_of_100_fit_in_20_mb() -> None:
    import gc
    import tracemalloc

    config = CircuitBreakerConfig(sliding_window_size=100)
    gc.collect()
    tracemalloc.start()
    try:
        registry = BreakerRegistry()
        for i in range(10_000):
            registry.get_or_create(f"server{i // 20}__tool{i % 20}", config)
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(registry) == 10_000
    assert used < 20_000_000, f"{used / 1e6:.1f} MB"
