from __future__ import annotations

import pytest

from circuitbox.breakers import (
    TRANSITIONS,
    CallFailed,
    CallRejected,
    CallSucceeded,
    CircuitState,
    IllegalTransitionError,
    PermitError,
    Rejection,
    StateTransition,
)
from circuitbox.breakers._state import check_transition
from circuitbox.breakers.testing import FakeClock

from .conftest import Recorder, admit, make

S = CircuitState


def test_state_values_are_the_lowercase_strings_used_everywhere() -> None:
    assert [s.value for s in S] == ["closed", "open", "half_open", "forced_open", "disabled", "metrics_only"]
    assert S("half_open") is S.HALF_OPEN and str(S.FORCED_OPEN) == "forced_open"


def test_the_transition_table_covers_every_state_and_never_loops_on_itself() -> None:
    assert set(TRANSITIONS) == set(S)
    assert all(source not in targets for source, targets in TRANSITIONS.items())
    assert S.HALF_OPEN not in TRANSITIONS[S.CLOSED]  # closed never skips open
    assert S.OPEN not in TRANSITIONS[S.FORCED_OPEN]  # only reset leaves an operator state
    assert TRANSITIONS[S.OPEN] >= {S.HALF_OPEN, S.CLOSED}


@pytest.mark.parametrize(("source", "target"), [(S.CLOSED, S.HALF_OPEN), (S.FORCED_OPEN, S.OPEN), (S.OPEN, S.OPEN)])
def test_a_transition_outside_the_table_raises(source: CircuitState, target: CircuitState) -> None:
    with pytest.raises(IllegalTransitionError, match=f"{source.value} -> {target.value}"):
        check_transition(source, target)


def test_the_breaker_refuses_an_illegal_transition_and_keeps_its_state(clock: FakeClock) -> None:
    breaker = make(clock)
    with pytest.raises(IllegalTransitionError):
        breaker._transition(S.HALF_OPEN, clock(), "bug")
    assert breaker.state is S.CLOSED and breaker.generation == 0


def test_forced_open_rejects_everything_with_no_retry_after_until_reset(clock: FakeClock) -> None:
    events = Recorder()
    breaker = make(clock, listener=events)
    breaker.force(S.FORCED_OPEN)
    clock.advance(10_000)
    rejection = breaker.acquire()
    assert isinstance(rejection, Rejection) and rejection.rejected
    assert rejection.state is S.FORCED_OPEN and rejection.retry_after is None
    assert breaker.snapshot().opened_at == 0 and breaker.snapshot().health_score == 0
    breaker.reset()
    assert breaker.state is S.CLOSED and not breaker.acquire().rejected
    assert [(t.from_state, t.to_state) for t in events.of(StateTransition)] == [
        (S.CLOSED, S.FORCED_OPEN),
        (S.FORCED_OPEN, S.CLOSED),
    ]


def test_disabled_passes_every_call_and_records_nothing(clock: FakeClock) -> None:
    events = Recorder()
    breaker = make(clock, listener=events, failure_threshold=1)
    breaker.force(S.DISABLED)
    for _ in range(50):
        admit(breaker.acquire()).failure("transport", "down")
    snap = breaker.snapshot()
    assert breaker.state is S.DISABLED and snap.calls == 0 and snap.consecutive_failures == 0
    assert snap.last_error is None
    assert len(events.of(CallFailed)) == 50  # metrics still see the traffic


def test_metrics_only_records_but_never_rejects_or_transitions(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=2, minimum_calls=2)
    breaker.force(S.METRICS_ONLY)
    generation = breaker.generation
    for _ in range(20):
        admit(breaker.acquire()).failure("timeout", "slow downstream")
    snap = breaker.snapshot()
    assert snap.state is S.METRICS_ONLY and snap.generation == generation
    assert (snap.calls, snap.failures, snap.consecutive_failures) == (20, 20, 20)
    assert snap.last_error == "slow downstream" and snap.health_score == 0.0


def test_forcing_the_current_state_again_changes_nothing(clock: FakeClock) -> None:
    breaker = make(clock)
    breaker.force(S.DISABLED)
    generation = breaker.generation
    breaker.force(S.DISABLED)
    assert breaker.generation == generation


def test_force_takes_only_operator_states(clock: FakeClock) -> None:
    breaker = make(clock)
    with pytest.raises(ValueError, match="forced_open, disabled or metrics_only"):
        breaker.force(S.OPEN)


def test_operator_states_switch_between_each_other(clock: FakeClock) -> None:
    breaker = make(clock)
    for state in (S.METRICS_ONLY, S.DISABLED, S.FORCED_OPEN, S.METRICS_ONLY):
        breaker.force(state)
        assert breaker.state is state
    assert breaker.generation == 4


def test_reset_closes_clears_the_window_and_the_backoff(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, timeout=10)
    admit(breaker.acquire()).failure()
    clock.advance(10)
    admit(breaker.acquire()).failure()  # the probe fails: next open period is 20 s
    assert breaker.snapshot().retry_after == 20
    breaker.reset()
    snap = breaker.snapshot()
    assert (snap.state, snap.calls, snap.consecutive_failures, snap.opened_at) == (S.CLOSED, 0, 0, None)
    admit(breaker.acquire()).failure()
    assert breaker.snapshot().retry_after == 10  # back to `timeout`


def test_reset_of_a_closed_breaker_clears_its_window_without_a_transition(clock: FakeClock) -> None:
    breaker = make(clock)
    admit(breaker.acquire()).failure()
    admit(breaker.acquire()).success()
    breaker.reset()
    snap = breaker.snapshot()
    assert (snap.calls, snap.consecutive_failures, snap.generation) == (0, 0, 0)


def test_a_permit_reports_exactly_once(clock: FakeClock) -> None:
    breaker = make(clock)
    permit = admit(breaker.acquire())
    permit.success()
    for report in (permit.success, permit.failure, permit.ignored, permit.release):
        with pytest.raises(PermitError):
            report()
    assert breaker.snapshot().calls == 1


def test_permit_and_rejection_say_which_they_are(clock: FakeClock) -> None:
    breaker = make(clock)
    assert breaker.acquire().rejected is False
    breaker.force(S.FORCED_OPEN)
    assert breaker.acquire().rejected is True


def test_the_generation_bumps_on_every_transition_and_only_then(clock: FakeClock) -> None:
    events = Recorder()
    breaker = make(clock, listener=events, failure_threshold=1, success_threshold=1, timeout=1)
    admit(breaker.acquire()).success()
    assert breaker.generation == 0
    admit(breaker.acquire()).failure()
    clock.advance(1)
    admit(breaker.acquire()).success()
    assert breaker.generation == 3
    assert [t.generation for t in events.of(StateTransition)] == [1, 2, 3]
    assert len(events.of(CallSucceeded)) == 2


def test_reading_the_state_does_not_move_open_to_half_open(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, timeout=5)
    admit(breaker.acquire()).failure()
    clock.advance(100)
    assert breaker.state is S.OPEN and breaker.snapshot().state is S.OPEN
    assert breaker.snapshot().retry_after == 0
    admit(breaker.acquire())
    assert breaker.state is S.HALF_OPEN


def test_rejection_answers_only_what_acquire_would_refuse_without_a_transition(clock: FakeClock) -> None:
    events = Recorder()
    breaker = make(clock, listener=events, failure_threshold=1, timeout=5, half_open_max_calls=1)
    assert breaker.rejection() is None  # closed: acquire admits
    admit(breaker.acquire()).failure()
    clock.advance(2)
    refused = breaker.rejection()
    assert isinstance(refused, Rejection) and refused.state is S.OPEN and refused.retry_after == 3
    assert len(events.of(CallRejected)) == 1  # the same event acquire's refusal delivers
    acquired = breaker.acquire()
    assert isinstance(acquired, Rejection) and acquired.retry_at == refused.retry_at
    clock.advance(3)
    assert breaker.rejection() is None and breaker.state is S.OPEN  # elapsed: acquire makes the transition
    admit(breaker.acquire())
    assert breaker.state is S.HALF_OPEN and breaker.rejection() is None  # probe slots are acquire's to judge
    assert isinstance(breaker.acquire(), Rejection)  # the one probe slot is taken
    breaker.force(S.FORCED_OPEN)
    forced = breaker.rejection()
    assert isinstance(forced, Rejection) and forced.retry_after is None
    assert len(events.of(CallRejected)) == 4  # open twice (rejection, acquire), half-open full, forced


def test_repr_names_the_breaker_its_state_and_generation(clock: FakeClock) -> None:
    assert repr(make(clock)) == "<CircuitBreaker 'svc' closed gen=0>"
