from __future__ import annotations

from circuitbox.breakers import CircuitBreakerConfig, CircuitState
from circuitbox.breakers._window import CALL, FAILED, SLOW, CountWindow, TimeWindow
from circuitbox.breakers.testing import FakeClock

from .conftest import admit, make


def counts(window: CountWindow | TimeWindow) -> tuple[int, int, int]:
    return window.calls, window.failures, window.slow


def test_a_count_window_keeps_the_last_n_calls_and_subtracts_what_it_evicts() -> None:
    window = CountWindow(3)
    window.record(CALL | FAILED, 0)
    window.record(CALL | SLOW, 0)
    window.success()
    assert counts(window) == (3, 1, 1)
    window.success()  # evicts the failure
    assert counts(window) == (3, 0, 1)
    window.record(CALL | FAILED | SLOW, 0)  # evicts the slow success
    assert counts(window) == (3, 1, 1)
    window.success()  # evicts a plain success: nothing to subtract
    window.success()
    window.success()  # evicts the slow failure
    assert counts(window) == (3, 0, 0)
    window.record(CALL | FAILED, 0)  # evicts a plain success
    assert counts(window) == (3, 1, 0)


def test_a_fast_path_success_evicts_a_failure_and_a_slow_call() -> None:
    window = CountWindow(1)
    window.record(CALL | FAILED | SLOW, 0)
    window.success()
    assert counts(window) == (1, 0, 0)


def test_recording_over_a_failure_subtracts_it() -> None:
    window = CountWindow(1)
    window.record(CALL | FAILED, 0)
    window.record(CALL | SLOW, 0)
    assert counts(window) == (1, 0, 1)
    window.success()
    window.record(CALL | FAILED | SLOW, 0)
    window.success()
    window.record(CALL | FAILED, 0)
    window.success()
    assert counts(window) == (1, 0, 0)


def test_a_fast_path_success_over_a_slow_success_subtracts_it() -> None:
    window = CountWindow(1)
    window.record(CALL | SLOW, 0)
    window.success()
    assert counts(window) == (1, 0, 0)


def test_clearing_a_count_window_empties_it() -> None:
    window = CountWindow(2)
    window.record(CALL | FAILED, 0)
    window.clear()
    assert counts(window) == (0, 0, 0)
    window.success()
    assert counts(window) == (1, 0, 0)


def test_advancing_a_count_window_changes_nothing() -> None:
    window = CountWindow(2)
    window.record(CALL | FAILED, 0)
    window.advance(1e9)
    assert counts(window) == (1, 1, 0)


def test_a_time_window_evicts_whole_buckets_as_time_moves() -> None:
    window = TimeWindow(3, 1.0)  # three one-second buckets
    window.record(CALL | FAILED, 0.2)
    window.record(CALL, 1.5)
    window.record(CALL | SLOW, 2.9)
    assert counts(window) == (3, 1, 1)
    window.advance(3.0)  # bucket [0, 1) ages out
    assert counts(window) == (2, 0, 1)
    window.advance(3.5)  # same bucket: nothing moves
    assert counts(window) == (2, 0, 1)
    window.advance(4.0)  # [1, 2) ages out; [2,3) (slow) and [3, 4) remain
    assert counts(window) == (1, 0, 1)
    window.record(CALL | FAILED, 4.1)
    assert counts(window) == (2, 1, 1)


def test_a_long_idle_gap_empties_a_time_window_in_one_pass() -> None:
    window = TimeWindow(10, 0.5)
    for i in range(20):
        window.record(CALL | FAILED, i * 0.5)
    assert counts(window) == (20, 20, 0)
    window.advance(1e12)  # would be two trillion bucket steps if evicted one at a time
    assert counts(window) == (0, 0, 0)
    window.record(CALL, 1e12)
    assert counts(window) == (1, 0, 0)
    window.advance(1e12 + 1e6)  # an empty gap costs nothing
    assert counts(window) == (0, 0, 0)


def test_a_time_window_bucket_count_rounds_up() -> None:
    window = TimeWindow(10, 3)  # 4 buckets of 3 s cover at least 10 s
    window.record(CALL, 0)
    window.advance(11.9)  # bucket 3 (9..12): bucket 0 is still within four buckets
    assert window.calls == 1
    window.advance(12)
    assert window.calls == 0


def test_a_breaker_with_a_time_window_forgets_old_failures(clock: FakeClock) -> None:
    breaker = make(clock, sliding_window_type="time", sliding_window_size=10, minimum_calls=4, failure_threshold=100)
    for _ in range(3):
        admit(breaker.acquire()).failure()
    clock.advance(10)  # those three age out before the fourth call
    admit(breaker.acquire()).failure()
    snap = breaker.snapshot()
    assert (snap.state, snap.calls, snap.failures) == (CircuitState.CLOSED, 1, 1)
    for _ in range(3):
        admit(breaker.acquire()).failure()
    assert breaker.state is CircuitState.OPEN


def test_a_snapshot_reads_a_time_window_as_of_now(clock: FakeClock) -> None:
    breaker = make(clock, sliding_window_type="time", sliding_window_size=5)
    admit(breaker.acquire()).success()
    assert breaker.snapshot().calls == 1
    clock.advance(5)
    assert breaker.snapshot().calls == 0


def test_reconfigure_keeps_the_window_when_its_shape_is_unchanged(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=10, minimum_calls=5)
    for _ in range(3):
        admit(breaker.acquire()).failure()
    breaker.reconfigure(CircuitBreakerConfig(name="other", failure_threshold=4, minimum_calls=5, jitter=0))
    assert breaker.name == "svc" and breaker.config.name == "svc"
    assert breaker.config.failure_threshold == 4
    assert breaker.snapshot().calls == 3
    admit(breaker.acquire()).failure()  # the fourth consecutive failure now trips
    assert breaker.state is CircuitState.OPEN


def test_reconfigure_starts_a_new_window_when_its_shape_changes(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=10)
    admit(breaker.acquire()).failure()
    breaker.reconfigure(CircuitBreakerConfig(name="svc", sliding_window_size=50, failure_threshold=10))
    assert breaker.snapshot().calls == 0
    assert breaker.snapshot().consecutive_failures == 1  # the streak is not part of the window
    breaker.reconfigure(CircuitBreakerConfig(name="svc", sliding_window_type="time", sliding_window_size=50))
    admit(breaker.acquire()).success()
    assert breaker.snapshot().calls == 1
