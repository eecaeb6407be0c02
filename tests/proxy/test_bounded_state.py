"""State that grows with use is bounded: run-time overrides, the policy memo, forgotten breakers' names."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from circuitbox.breakers import BreakerRegistry, CircuitBreaker, CircuitBreakerConfig
from circuitbox.config.load import parse_config
from circuitbox.observability.collector import MetricsCollector
from circuitbox.server.guard import Guard


def test_repeated_run_time_changes_of_one_scope_keep_one_override_each() -> None:
    guard = Guard(parse_config({"mcpServers": {"s": {"command": "x"}}}), BreakerRegistry())
    for threshold in range(1, 1001):
        guard.configure("s", "*", {"failure_threshold": threshold})
        guard.configure("s", "a*", {"timeout": float(threshold)})
    guard.configure("s", "*", {"failure_threshold": 7, "timeout": 9.0})
    assert guard.override_count() == 1  # the last "*" change supersedes every earlier one, "a*" included
    policy = guard.breaker("s", "abc")[1]
    assert (policy.breaker.failure_threshold, policy.breaker.timeout) == (7, 9.0)


def test_an_override_that_a_later_one_only_partly_supersedes_keeps_the_rest() -> None:
    guard = Guard(parse_config({"mcpServers": {"s": {"command": "x"}}}), BreakerRegistry())
    guard.configure("s", "a*", {"timeout": 11.0, "failure_threshold": 2})
    guard.configure("s", "*", {"failure_threshold": 4})
    policy = guard.breaker("s", "abc")[1]
    assert (policy.breaker.failure_threshold, policy.breaker.timeout) == (4, 11.0)
    assert guard.override_count() == 2


def test_the_policy_memo_of_a_config_is_capped() -> None:
    config = parse_config({"mcpServers": {"s": {"command": "x"}}})
    for i in range(20_000):
        config.policy("s", f"tool{i}")
    assert len(config._memo) <= 4096
    assert config.policy("s", "tool1").breaker.name == "s__tool1"


def test_names_of_forgotten_breakers_are_capped() -> None:
    collector = MetricsCollector(CollectorRegistry())
    for i in range(20_000):
        breaker = CircuitBreaker(CircuitBreakerConfig(name=f"b{i}"))
        collector.attach(breaker)
        collector.forget(breaker.name)
    assert len(collector._forgotten) <= 4096
