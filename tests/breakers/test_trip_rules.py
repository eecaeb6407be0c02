from __future__ import annotations

from circuitbox.breakers import CallFailed, CallSucceeded, CircuitState, StateTransition
from circuitbox.breakers.testing import FakeClock

from .conftest import Recorder, admit, make

S = CircuitState


def test_failure_threshold_consecutive_failures_open_the_circuit(clock: FakeClock) -> None:
    events = Recorder()
    breaker = make(clock, listener=events, failure_threshold=3)
    for _ in range(2):
        admit(breaker.acquire()).failure("transport", "connection refused")
    assert breaker.state is S.CLOSED
    admit(breaker.acquire()).failure("transport", "connection refused")
    assert breaker.state is S.OPEN
    [transition] = events.of(StateTransition)
    assert transition.reason == "3 consecutive failures" and transition.to_state is S.OPEN


def test_a_success_breaks_the_streak_of_failures(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=3, failure_rate_threshold=1)
    for _ in range(10):
        admit(breaker.acquire()).failure()
        admit(breaker.acquire()).failure()
        admit(breaker.acquire()).success()
    assert breaker.state is S.CLOSED
    assert breaker.snapshot().consecutive_failures == 0


def test_the_failure_rate_opens_the_circuit_only_once_minimum_calls_are_in_the_window(
    clock: FakeClock,
) -> None:
    breaker = make(clock, failure_threshold=100, failure_rate_threshold=0.5, minimum_calls=6)
    for _ in range(2):
        admit(breaker.acquire()).failure()
        admit(breaker.acquire()).success()
    admit(breaker.acquire()).failure()
    assert breaker.state is S.CLOSED  # 3 of 5 failed, but only 5 calls
    admit(breaker.acquire()).success()
    assert breaker.state is S.CLOSED  # 3 of 6 is the threshold, but a success never trips
    admit(breaker.acquire()).failure()
    assert breaker.state is S.OPEN  # 4 of 7


def test_a_failure_rate_exactly_at_the_threshold_opens_the_circuit(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=100, failure_rate_threshold=0.7, minimum_calls=10)
    for _ in range(3):
        admit(breaker.acquire()).success()
    for _ in range(7):
        admit(breaker.acquire()).failure()
    assert breaker.state is S.OPEN  # 7/10 >= 0.7, with no floating point surprise


def test_the_slow_call_rate_opens_the_circuit(clock: FakeClock) -> None:
    events = Recorder()
    breaker = make(clock, listener=events, slow_call_duration=2, slow_call_rate_threshold=0.5, minimum_calls=4)
    for seconds in (0.1, 3, 0.1):
        permit = admit(breaker.acquire())
        clock.advance(seconds)
        permit.success()
    assert breaker.state is S.CLOSED
    permit = admit(breaker.acquire())
    clock.advance(2)  # exactly slow_call_duration counts as slow
    permit.success()
    assert breaker.state is S.OPEN
    assert events.of(StateTransition)[0].reason == "slow call rate 50% over 4 calls"
    assert [e.slow for e in events.of(CallSucceeded)] == [False, True, False, True]


def test_a_slow_failure_counts_as_failed_and_slow(clock: FakeClock) -> None:
    events = Recorder()
    breaker = make(clock, listener=events, slow_call_duration=1, failure_threshold=5)
    permit = admit(breaker.acquire())
    clock.advance(1.5)
    permit.failure("timeout", TimeoutError())
    [failed] = events.of(CallFailed)
    assert failed.slow and failed.kind == "timeout" and failed.duration == 1.5 and failed.error == "TimeoutError"
    snap = breaker.snapshot()
    assert (snap.failures, snap.slow_calls) == (1, 1)


def test_slow_calls_are_not_counted_without_slow_call_duration(clock: FakeClock) -> None:
    breaker = make(clock)
    permit = admit(breaker.acquire())
    clock.advance(10_000)
    permit.success()
    assert breaker.snapshot().slow_calls == 0


def test_a_slow_success_does_not_trip_below_minimum_calls(clock: FakeClock) -> None:
    breaker = make(clock, slow_call_duration=1, slow_call_rate_threshold=0.1, minimum_calls=3)
    permit = admit(breaker.acquire())
    clock.advance(5)
    permit.success()
    assert breaker.state is S.CLOSED


def test_a_fast_failure_with_slow_tracking_trips_on_rates_only_when_over_threshold(clock: FakeClock) -> None:
    breaker = make(
        clock, slow_call_duration=1, slow_call_rate_threshold=0.5, failure_rate_threshold=0.9, minimum_calls=2
    )
    admit(breaker.acquire()).success()
    admit(breaker.acquire()).failure()  # 1/2 failed (< 0.9), not slow
    assert breaker.state is S.CLOSED


def test_last_error_describes_exceptions_strings_and_bare_types(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=10)
    admit(breaker.acquire()).failure("exception", ValueError("bad value"))
    assert breaker.snapshot().last_error == "ValueError: bad value"
    admit(breaker.acquire()).failure("tool_error", "disk full")
    assert breaker.snapshot().last_error == "disk full"
    admit(breaker.acquire()).failure("timeout", TimeoutError())
    assert breaker.snapshot().last_error == "TimeoutError"
    admit(breaker.acquire()).failure()
    assert breaker.snapshot().last_error is None


def test_ignored_and_released_calls_count_neither_way_in_closed(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=2)
    admit(breaker.acquire()).failure()
    admit(breaker.acquire()).ignored()
    admit(breaker.acquire()).release()
    snap = breaker.snapshot()
    assert (snap.calls, snap.consecutive_failures) == (1, 1)
    admit(breaker.acquire()).failure()
    assert breaker.state is S.OPEN  # the streak was not broken by the ignored and released calls
