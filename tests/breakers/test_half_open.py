from __future__ import annotations

import random
from typing import Any

import pytest

from circuitbox.breakers import (
    CallFailed,
    CallIgnored,
    CallRejected,
    CallSucceeded,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
    Permit,
    Rejection,
    StateTransition,
)
from circuitbox.breakers.testing import FakeClock

from .conftest import Recorder, admit, make

S = CircuitState


def reject(decision: Permit | Rejection) -> Rejection:
    assert isinstance(decision, Rejection), "admitted"
    return decision


def tripped(clock: FakeClock, **settings: Any) -> CircuitBreaker:
    """A breaker that has just opened (failure_threshold 1, timeout 10 unless told otherwise)."""
    settings.setdefault("failure_threshold", 1)
    settings.setdefault("timeout", 10)
    breaker = make(clock, **settings)
    admit(breaker.acquire()).failure("transport", "refused")
    assert breaker.state is S.OPEN
    return breaker


def test_an_open_circuit_rejects_until_the_period_ends_then_lets_a_probe_through(clock: FakeClock) -> None:
    breaker = tripped(clock)
    clock.advance(9.99)
    rejection = reject(breaker.acquire())
    assert rejection.state is S.OPEN and rejection.retry_after == pytest.approx(0.01)
    assert rejection.last_error == "refused" and rejection.breaker == "svc"
    clock.advance(0.01)
    admit(breaker.acquire())
    assert breaker.state is S.HALF_OPEN


def test_a_rejection_is_reused_but_its_retry_after_is_always_current(clock: FakeClock) -> None:
    breaker = tripped(clock)
    first = reject(breaker.acquire())
    clock.advance(4)
    second = reject(breaker.acquire())
    assert first is second  # no allocation per rejection
    assert second.retry_after == 6
    clock.advance(100)
    assert first.retry_after == 0  # never negative


def test_half_open_admits_at_most_half_open_max_calls_probes_at_once(clock: FakeClock) -> None:
    events = Recorder()
    breaker = tripped(clock, half_open_max_calls=2, success_threshold=3, half_open_timeout=5)
    breaker.add_listener(events)
    clock.advance(10)
    probes = [admit(breaker.acquire()), admit(breaker.acquire())]
    clock.advance(1)
    rejection = reject(breaker.acquire())
    assert rejection.state is S.HALF_OPEN
    assert rejection.retry_after == 4  # the oldest probe's deadline frees a slot at the latest
    assert events.of(CallRejected)[-1].retry_after == 4
    probes[0].success()
    probes.append(admit(breaker.acquire()))  # a finished probe frees its slot
    reject(breaker.acquire())
    probes[1].success()
    assert breaker.state is S.HALF_OPEN
    probes[2].success()
    assert breaker.state is S.CLOSED


def test_success_threshold_successful_probes_close_the_circuit_and_clear_the_window(clock: FakeClock) -> None:
    breaker = tripped(clock, success_threshold=2, half_open_max_calls=1)
    clock.advance(10)
    admit(breaker.acquire()).success()
    assert breaker.state is S.HALF_OPEN
    admit(breaker.acquire()).success()
    snap = breaker.snapshot()
    assert (snap.state, snap.calls, snap.consecutive_failures, snap.opened_at) == (S.CLOSED, 0, 0, None)
    assert snap.last_error == "refused"  # history, for the operator


def test_any_probe_failure_reopens_with_a_longer_open_period(clock: FakeClock) -> None:
    events = Recorder()
    breaker = tripped(clock, timeout=10, timeout_multiplier=3, max_timeout=100, half_open_max_calls=3)
    breaker.add_listener(events)
    periods = []
    for _ in range(4):
        clock.advance(breaker.snapshot().retry_after or 0)
        first = admit(breaker.acquire())
        admit(breaker.acquire()).success()
        first.failure("timeout", "no answer")
        assert breaker.state is S.OPEN
        periods.append(breaker.snapshot().retry_after)
    assert periods == [30, 90, 100, 100]  # x3 each time, capped at max_timeout
    assert events.of(StateTransition)[-1].reason == "probe failed (timeout)"


def test_the_open_period_resets_to_timeout_once_the_circuit_closes(clock: FakeClock) -> None:
    breaker = tripped(clock, success_threshold=1)
    clock.advance(10)
    admit(breaker.acquire()).failure()
    assert breaker.snapshot().retry_after == 20
    clock.advance(20)
    admit(breaker.acquire()).success()
    assert breaker.state is S.CLOSED
    admit(breaker.acquire()).failure()
    assert breaker.snapshot().retry_after == 10


def test_jitter_shortens_the_open_period_by_at_most_its_fraction_and_is_seedable(clock: FakeClock) -> None:
    def periods(seed: int) -> list[float]:
        config = CircuitBreakerConfig(failure_threshold=1, timeout=100, jitter=0.5, max_timeout=1000)
        breaker = CircuitBreaker(config, clock=clock, rng=random.Random(seed))
        out = []
        for _ in range(20):
            admit(breaker.acquire()).failure()
            out.append(breaker.snapshot().retry_after or 0.0)
            breaker.reset()
        return out

    first = periods(7)
    assert first == periods(7)  # same seed, same periods
    assert all(50 <= p <= 100 for p in first) and len(set(first)) > 1


def test_a_probe_past_half_open_timeout_counts_as_failed_on_the_next_acquire(clock: FakeClock) -> None:
    events = Recorder()
    breaker = tripped(clock, half_open_timeout=5, half_open_max_calls=1)
    breaker.add_listener(events)
    clock.advance(10)
    hung = admit(breaker.acquire())
    clock.advance(4.9)
    reject(breaker.acquire())
    clock.advance(0.1)
    rejection = reject(breaker.acquire())  # the hung probe is noticed here: reopened, with backoff
    assert rejection.state is S.OPEN and rejection.retry_after == 20
    assert breaker.snapshot().last_error == "probe did not answer within half_open_timeout (5s)"
    assert events.of(StateTransition)[-1].reason == "probe timed out"
    hung.success()  # answers at last: announced, but from an earlier generation
    assert breaker.state is S.OPEN
    assert len(events.of(CallSucceeded)) == 1


def test_a_snapshot_never_makes_a_transition(clock: FakeClock) -> None:
    # A metrics scrape takes snapshots: reading must not reopen a half-open circuit or half-open an open one.
    events = Recorder()
    breaker = tripped(clock, half_open_timeout=5)
    breaker.add_listener(events)
    clock.advance(10)  # open period over: the next acquire (not a snapshot) half-opens it
    snap = breaker.snapshot()
    assert (snap.state, snap.retry_after, breaker.generation) == (S.OPEN, 0.0, 1)
    admit(breaker.acquire())
    clock.advance(5)  # the probe is overdue: the next acquire (not a snapshot) reopens it
    generation = breaker.generation
    assert breaker.snapshot().state is S.HALF_OPEN and breaker.generation == generation
    assert [e.to_state for e in events.of(StateTransition)] == [S.HALF_OPEN]
    assert reject(breaker.acquire()).retry_after == 20
    assert breaker.state is S.OPEN


def test_half_open_timeout_defaults_to_call_timeout(clock: FakeClock) -> None:
    breaker = tripped(clock, call_timeout=3)
    clock.advance(10)
    admit(breaker.acquire())
    clock.advance(3)
    assert reject(breaker.acquire()).state is S.OPEN


def test_a_cancelled_probe_frees_its_slot_and_counts_neither_way(clock: FakeClock) -> None:
    events = Recorder()
    breaker = tripped(clock, half_open_max_calls=1, success_threshold=1)
    breaker.add_listener(events)
    clock.advance(10)
    admit(breaker.acquire()).release()
    assert breaker.state is S.HALF_OPEN  # not closed by the cancellation (fabfuel's bug)
    probe = admit(breaker.acquire())  # the slot is free again
    assert not [e for e in events.events if isinstance(e, CallSucceeded | CallFailed | CallIgnored)]
    probe.success()
    assert breaker.state is S.CLOSED


def test_an_ignored_probe_frees_its_slot_without_closing_or_reopening(clock: FakeClock) -> None:
    breaker = tripped(clock, half_open_max_calls=1, success_threshold=1)
    clock.advance(10)
    admit(breaker.acquire()).ignored()
    assert breaker.state is S.HALF_OPEN
    admit(breaker.acquire())


def test_an_outcome_from_an_earlier_generation_changes_no_state_but_is_announced(clock: FakeClock) -> None:
    events = Recorder()
    breaker = make(clock, listener=events, failure_threshold=2, timeout=10, success_threshold=1)
    late_failure = admit(breaker.acquire())
    late_success = admit(breaker.acquire())
    admit(breaker.acquire()).failure()
    admit(breaker.acquire()).failure()
    assert breaker.state is S.OPEN
    late_success.success()  # started while closed: must not count towards anything now
    late_failure.failure("timeout", "late")
    clock.advance(10)
    probe = admit(breaker.acquire())
    generation = breaker.generation
    probe.success()
    assert breaker.state is S.CLOSED and breaker.generation == generation + 1
    snap = breaker.snapshot()
    assert snap.calls == 0 and snap.last_error is None  # nothing stale reached the window
    assert len(events.of(CallSucceeded)) == 2 and len(events.of(CallFailed)) == 3


def test_a_late_failure_cannot_reopen_a_circuit_that_closed_meanwhile(clock: FakeClock) -> None:
    breaker = tripped(clock, half_open_max_calls=2, success_threshold=1)
    clock.advance(10)
    slow_probe = admit(breaker.acquire())
    admit(breaker.acquire()).success()
    assert breaker.state is S.CLOSED
    slow_probe.failure("timeout")
    assert breaker.state is S.CLOSED and breaker.snapshot().calls == 0


def test_probes_in_half_open_record_their_duration(clock: FakeClock) -> None:
    events = Recorder()
    breaker = tripped(clock, success_threshold=1)
    breaker.add_listener(events)
    clock.advance(10)
    probe = admit(breaker.acquire())
    clock.advance(0.25)
    probe.success()
    assert events.of(CallSucceeded)[0].duration == 0.25


def test_rejections_are_announced_with_state_and_retry_after(clock: FakeClock) -> None:
    events = Recorder()
    breaker = tripped(clock)
    breaker.add_listener(events)
    clock.advance(3)
    reject(breaker.acquire())
    assert events.of(CallRejected) == [CallRejected("svc", 3, S.OPEN, 7)]


def test_reconfiguring_half_open_timeout_moves_the_retry_after_of_a_full_half_open(clock: FakeClock) -> None:
    breaker = tripped(clock, half_open_max_calls=1, half_open_timeout=5)
    clock.advance(10)
    admit(breaker.acquire())
    assert reject(breaker.acquire()).retry_after == 5
    breaker.reconfigure(breaker.config.model_copy(update={"half_open_timeout": 8.0}))
    assert reject(breaker.acquire()).retry_after == 8


def test_probe_now_ends_the_open_period_early_and_the_next_calls_are_probes(clock: FakeClock) -> None:
    breaker = tripped(clock, timeout=200)
    assert breaker.probe_now("server reconnected")
    assert breaker.state is S.HALF_OPEN
    admit(breaker.acquire()).success()
    assert breaker.state is S.HALF_OPEN  # still a probe: success_threshold decides, as after the period


@pytest.mark.parametrize("state", [S.CLOSED, S.FORCED_OPEN, S.DISABLED])
def test_probe_now_changes_nothing_unless_the_breaker_is_open(clock: FakeClock, state: CircuitState) -> None:
    breaker = make(clock)
    if state is not S.CLOSED:
        breaker.force(state)
    assert not breaker.probe_now()
    assert breaker.state is state
