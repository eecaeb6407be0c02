from __future__ import annotations

import dataclasses
import json

import pytest

from circuitbox.breakers import BreakerSnapshot, CircuitState
from circuitbox.breakers._snapshot import health_score
from circuitbox.breakers.testing import FakeClock

from .conftest import admit, make

S = CircuitState


def test_a_snapshot_has_every_field_design_md_lists() -> None:
    assert [f.name for f in dataclasses.fields(BreakerSnapshot)] == [
        "name",
        "state",
        "calls",
        "successes",
        "failures",
        "slow_calls",
        "failure_rate",
        "slow_call_rate",
        "consecutive_failures",
        "last_error",
        "opened_at",
        "retry_after",
        "generation",
        "health_score",
    ]


def test_a_snapshot_counts_the_window_and_is_json_ready(clock: FakeClock) -> None:
    breaker = make(clock, slow_call_duration=1, failure_threshold=10)
    for seconds, ok in ((0.1, True), (2, True), (0.1, False), (3, False)):
        permit = admit(breaker.acquire())
        clock.advance(seconds)
        if ok:
            permit.success()
        else:
            permit.failure("tool_error", "quota exceeded")
    snap = breaker.snapshot()
    assert (snap.calls, snap.successes, snap.failures, snap.slow_calls) == (4, 2, 2, 2)
    assert (snap.failure_rate, snap.slow_call_rate, snap.consecutive_failures) == (0.5, 0.5, 2)
    assert snap.health_score == pytest.approx(0.5 * 0.75)
    data = json.loads(json.dumps(snap.to_dict()))
    assert data["state"] == "closed" and data["last_error"] == "quota exceeded"
    assert data["opened_at"] is None and data["retry_after"] is None and data["generation"] == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.calls = 0  # type: ignore[misc]


def test_an_empty_window_has_zero_rates_and_full_health(clock: FakeClock) -> None:
    snap = make(clock).snapshot()
    assert (snap.calls, snap.failure_rate, snap.slow_call_rate, snap.health_score) == (0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (S.CLOSED, 0.6 * 0.9),
        (S.METRICS_ONLY, 0.6 * 0.9),
        (S.DISABLED, 0.6 * 0.9),
        (S.HALF_OPEN, 0.6 * 0.9 / 2),
        (S.OPEN, 0.0),
        (S.FORCED_OPEN, 0.0),
    ],
)
def test_the_health_score_follows_the_metrics_formula(state: CircuitState, expected: float) -> None:
    assert health_score(state, failure_rate=0.4, slow_call_rate=0.2) == pytest.approx(expected)


def test_an_open_snapshot_has_opened_at_and_retry_after(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, timeout=30)
    clock.advance(100)
    admit(breaker.acquire()).failure()
    clock.advance(10)
    snap = breaker.snapshot()
    assert (snap.state, snap.opened_at, snap.retry_after, snap.health_score) == (S.OPEN, 100, 20, 0.0)
