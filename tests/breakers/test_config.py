from __future__ import annotations

import re
from typing import Any

import pydantic
import pytest

from circuitbox.breakers import CircuitBreakerConfig


def test_the_defaults_are_the_ones_design_md_lists() -> None:
    config = CircuitBreakerConfig()
    assert (config.name, config.failure_threshold, config.success_threshold, config.timeout) == (
        "default",
        5,
        3,
        60,
    )
    assert (config.half_open_max_calls, config.failure_rate_threshold, config.minimum_calls) == (3, 0.5, 10)
    assert (config.sliding_window_size, config.sliding_window_type, config.window_bucket_seconds) == (
        100,
        "count",
        1,
    )
    assert (config.slow_call_duration, config.slow_call_rate_threshold) == (None, 1.0)
    assert (config.timeout_multiplier, config.max_timeout, config.jitter) == (2.0, 300, 0.1)
    assert (config.half_open_timeout, config.call_timeout) == (None, 30)
    assert (config.excluded_exceptions, config.fallback) == ((), None)


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("failure_threshold", 0, "in [1, 100000]"),
        ("success_threshold", 0, "in [1, 100000]"),
        ("half_open_max_calls", -1, "in [1, 100000]"),
        ("minimum_calls", 0, "in [1, 100000]"),
        ("sliding_window_size", 0, "in [1, 100000]"),
        ("timeout", 0, "in (0, 604800]"),
        ("call_timeout", -1, "in (0, 604800]"),
        ("window_bucket_seconds", 0, "in (0, 604800]"),
        ("slow_call_duration", 0, "in (0, 604800]"),
        ("half_open_timeout", 0, "in (0, 604800]"),
        ("failure_rate_threshold", 0, "in (0, 1]"),
        ("failure_rate_threshold", 1.5, "in (0, 1]"),
        ("slow_call_rate_threshold", 0, "in (0, 1]"),
        ("timeout_multiplier", 0.5, "in [1, 100]"),
        ("jitter", 1, "in [0, 1)"),
        ("jitter", -0.1, "in [0, 1)"),
        ("timeout", float("nan"), "in (0, 604800]"),
    ],
)
def test_an_out_of_range_value_is_rejected_with_a_message_naming_the_field_and_the_range(
    field: str, value: float, allowed: str
) -> None:
    with pytest.raises(pydantic.ValidationError, match=rf"{field} must be {re.escape(allowed)}"):
        CircuitBreakerConfig(**{field: value})


def test_values_on_the_edge_of_their_range_are_accepted() -> None:
    config = CircuitBreakerConfig(
        failure_rate_threshold=1,
        slow_call_rate_threshold=1,
        jitter=0,
        timeout_multiplier=1,
        max_timeout=60,
        minimum_calls=100,
        slow_call_duration=0.001,
        half_open_timeout=0.5,
    )
    assert config.effective_half_open_timeout == 0.5


def test_a_max_timeout_below_timeout_is_rejected() -> None:
    with pytest.raises(pydantic.ValidationError, match=r"max_timeout must be >= timeout \(60\)"):
        CircuitBreakerConfig(max_timeout=10)


def test_a_count_window_must_hold_at_least_minimum_calls() -> None:
    with pytest.raises(pydantic.ValidationError, match="minimum_calls must be <= sliding_window_size"):
        CircuitBreakerConfig(minimum_calls=20, sliding_window_size=10)
    # a time window counts seconds, so the check does not apply
    assert CircuitBreakerConfig(minimum_calls=20, sliding_window_size=10, sliding_window_type="time")


def test_a_time_window_bucket_cannot_be_wider_than_the_window() -> None:
    with pytest.raises(pydantic.ValidationError, match=r"window_bucket_seconds must be in \(0, 10\]"):
        CircuitBreakerConfig(sliding_window_type="time", sliding_window_size=10, window_bucket_seconds=11)


@pytest.mark.parametrize("bad", [{"failure_treshold": 3}, {"sliding_window_type": "sliding"}])
def test_unknown_keys_and_unknown_window_types_are_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        CircuitBreakerConfig(**bad)


def test_the_config_is_frozen() -> None:
    config = CircuitBreakerConfig()
    with pytest.raises(pydantic.ValidationError):
        config.timeout = 5  # type: ignore[misc]


def test_optional_durations_accept_none() -> None:
    config = CircuitBreakerConfig(slow_call_duration=None, half_open_timeout=None)
    assert config.slow_call_duration is None and config.effective_half_open_timeout == 30


def test_half_open_timeout_defaults_to_call_timeout() -> None:
    assert CircuitBreakerConfig(call_timeout=7).effective_half_open_timeout == 7


def test_every_field_has_a_docstring_description() -> None:
    assert all(field.description for field in CircuitBreakerConfig.model_fields.values())


def test_excluded_exceptions_and_a_fallback_are_accepted() -> None:
    config = CircuitBreakerConfig(excluded_exceptions=(KeyError,), fallback=lambda: "cached")
    assert config.excluded_exceptions == (KeyError,)
    assert config.fallback is not None and config.fallback() == "cached"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failure_threshold", 10**9),
        ("success_threshold", 10**9),
        ("half_open_max_calls", 10**9),
        ("minimum_calls", 10**9),
        ("sliding_window_size", 10**9),
        ("timeout", 1e12),
        ("max_timeout", 1e12),
        ("call_timeout", 1e12),
        ("half_open_timeout", 1e12),
        ("slow_call_duration", 1e12),
        ("timeout_multiplier", 1e9),
        ("window_bucket_seconds", 1e12),
    ],
)
def test_every_numeric_field_has_an_upper_bound_named_in_the_error(field: str, value: float) -> None:
    # sliding_window_size=1e9 once took a proxy from 68 MB to 2.9 GB: a window is allocated for that many calls.
    with pytest.raises(pydantic.ValidationError, match=rf"{field} must be in [(\[]"):
        CircuitBreakerConfig(**{field: value})


def test_a_time_window_may_not_hold_more_buckets_than_a_count_window_holds_calls() -> None:
    with pytest.raises(pydantic.ValidationError, match="buckets"):
        CircuitBreakerConfig(sliding_window_type="time", sliding_window_size=86_400, window_bucket_seconds=0.001)
    CircuitBreakerConfig(sliding_window_type="time", sliding_window_size=86_400, window_bucket_seconds=1)
