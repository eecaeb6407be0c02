"""`CircuitBreakerConfig`: one breaker's policy, validated once at construction."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_COUNT = 100_000
"""Upper bound of every count (thresholds, probes, window calls, time-window buckets): a window holds this many
entries in memory, so an unbounded value is a memory bomb (sliding_window_size=1e9 once took 2.9 GB)."""
MAX_SECONDS = 7 * 86_400.0
"""Upper bound of every duration: a week."""
MAX_MULTIPLIER = 100.0


def _range(
    field: str,
    value: float,
    *,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    bad = value != value or value < low or (low_open and value == low) or value > high or (high_open and value == high)
    if bad:
        if high == math.inf:
            allowed = f"{'>' if low_open else '>='} {low:g}"
        else:
            allowed = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{field} must be {allowed}, got {value!r}")


class CircuitBreakerConfig(BaseModel):
    """The policy of one circuit breaker. Durations are seconds; every range is checked at construction.

    Raises:
        pydantic.ValidationError: a value is out of range (the message names the field and the allowed range),
            an unknown key was given, or two fields contradict each other.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str = Field(
        "default",
        description="The breaker's name (the registry replaces it by the name it is registered under).",
    )
    failure_threshold: int = Field(
        5,
        description="Consecutive failures that open the circuit (1 to 100000, like every count).",
    )
    success_threshold: int = Field(3, description="Successful probes in half-open that close it (>= 1).")
    timeout: float = Field(
        60.0,
        description="Seconds the circuit stays open before it lets probes "
        "through (> 0, at most a week, like every duration).",
    )
    half_open_max_calls: int = Field(
        3,
        description="Probes allowed in flight at once in half-open (>= 1); the rest are rejected at once.",
    )
    failure_rate_threshold: float = Field(
        0.5,
        description="Failure fraction of the window that opens the "
        "circuit once `minimum_calls` are in it (0 < x <= 1).",
    )
    minimum_calls: int = Field(10, description="Calls in the window before the failure and slow rates count (>= 1).")
    sliding_window_size: int = Field(
        100,
        description="Calls (count window) or seconds (time window) the rates are computed over (>= 1).",
    )
    sliding_window_type: Literal["count", "time"] = Field(
        "count",
        description="`count`: the last N calls; `time`: the calls of the last N seconds.",
    )
    window_bucket_seconds: float = Field(
        1.0,
        description="Bucket width of a time window (> 0, <= sliding_window_size); calls age out one bucket at a time.",
    )
    slow_call_duration: float | None = Field(
        None,
        description="A call that takes at least this long is slow (> 0); None: no call is slow.",
    )
    slow_call_rate_threshold: float = Field(
        1.0,
        description="Slow fraction of the window that opens the circuit "
        "(0 < x <= 1; 1.0: only when every call is slow).",
    )
    timeout_multiplier: float = Field(
        2.0,
        description="Factor the open period grows by each time a probe fails (1 to 100).",
    )
    max_timeout: float = Field(300.0, description="Cap of the open period (>= timeout).")
    jitter: float = Field(
        0.1,
        description="The open period is drawn uniformly from [p * (1 - "
        "jitter), p] (0 <= x < 1), so probes do not align.",
    )
    half_open_timeout: float | None = Field(
        None,
        description="A probe that has not answered after this long counts as failed (> 0); None: `call_timeout`.",
    )
    call_timeout: float = Field(
        30.0,
        description="Per-call deadline the proxy applies (> 0); also the default `half_open_timeout`.",
    )
    excluded_exceptions: tuple[type[BaseException], ...] = Field(
        (),
        description="Exception types that count neither way (re-raised, recorded as ignored).",
    )
    fallback: Callable[[], Any] | None = Field(
        None,
        description="Called instead of raising `CircuitOpenError` when a "
        "call is rejected: a sync callable, an async function,\n"
        "or a sync callable that returns a coroutine (awaited).",
    )

    @field_validator(
        "failure_threshold",
        "success_threshold",
        "half_open_max_calls",
        "minimum_calls",
        "sliding_window_size",
    )
    @classmethod
    def _at_least_one(cls, value: int, info: Any) -> int:
        _range(info.field_name, value, low=1, high=MAX_COUNT)
        return value

    @field_validator("timeout", "max_timeout", "call_timeout", "window_bucket_seconds")
    @classmethod
    def _positive(cls, value: float, info: Any) -> float:
        _range(info.field_name, value, low=0, high=MAX_SECONDS, low_open=True)
        return value

    @field_validator("slow_call_duration", "half_open_timeout")
    @classmethod
    def _positive_or_none(cls, value: float | None, info: Any) -> float | None:
        if value is not None:
            _range(info.field_name, value, low=0, high=MAX_SECONDS, low_open=True)
        return value

    @field_validator("failure_rate_threshold", "slow_call_rate_threshold")
    @classmethod
    def _fraction(cls, value: float, info: Any) -> float:
        _range(info.field_name, value, low=0, high=1, low_open=True)
        return value

    @field_validator("timeout_multiplier")
    @classmethod
    def _multiplier(cls, value: float) -> float:
        _range("timeout_multiplier", value, low=1, high=MAX_MULTIPLIER)
        return value

    @field_validator("jitter")
    @classmethod
    def _jitter(cls, value: float) -> float:
        _range("jitter", value, low=0, high=1, high_open=True)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CircuitBreakerConfig:
        if not self.max_timeout >= self.timeout:
            raise ValueError(f"max_timeout must be >= timeout ({self.timeout:g}), got {self.max_timeout!r}")
        if self.sliding_window_type == "count" and self.minimum_calls > self.sliding_window_size:
            raise ValueError(
                f"minimum_calls must be <= sliding_window_size ({self.sliding_window_size}) for a count "
                f"window, got {self.minimum_calls}"
            )
        if self.sliding_window_type == "time":
            _range(
                "window_bucket_seconds",
                self.window_bucket_seconds,
                low=0,
                high=self.sliding_window_size,
                low_open=True,
            )
            if self.sliding_window_size / self.window_bucket_seconds > MAX_COUNT:
                raise ValueError(
                    f"a time window of {self.sliding_window_size}s in buckets of {self.window_bucket_seconds:g}s "
                    f"holds more than {MAX_COUNT} buckets; widen window_bucket_seconds"
                )
        return self

    @property
    def effective_half_open_timeout(self) -> float:
        """`half_open_timeout`, or `call_timeout` when it is None."""
        return self.call_timeout if self.half_open_timeout is None else self.half_open_timeout
