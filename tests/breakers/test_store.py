from __future__ import annotations

from typing import Any

import pytest

from circuitbox.breakers import BreakerRegistry, CircuitState, Rejection, StateTransition
from circuitbox.breakers.testing import FakeClock

from .conftest import Recorder, admit, make

S = CircuitState


class Store:
    """A store that records what the breaker tells it and admits probes while it has tokens."""

    def __init__(self, tokens: int = 0) -> None:
        self.tokens = tokens
        self.calls: list[tuple[Any, ...]] = []

    def attach(self, breaker: Any) -> None:
        self.calls.append(("attach", breaker.name))

    def detach(self, breaker: Any) -> None:
        self.calls.append(("detach", breaker.name))

    def on_transition(self, breaker: Any, source: S, target: S, reason: str) -> None:
        self.calls.append(("transition", source, target, reason))

    def admit_probe(self, breaker: Any) -> bool:
        self.calls.append(("admit",))
        if self.tokens:
            self.tokens -= 1
            return True
        return False

    def probe_done(self, breaker: Any) -> None:
        self.calls.append(("done",))

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == kind]


def test_the_store_hears_every_transition_the_breaker_makes_on_its_own(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, timeout=10)
    store = Store(tokens=1)
    breaker.attach_store(store)
    breaker.attach_store(store)  # attaching twice is one attachment
    admit(breaker.acquire()).failure("transport", "refused")
    clock.advance(10)
    admit(breaker.acquire()).failure("timeout")
    breaker.reset()
    assert store.of("attach") == [("attach", "svc")]
    assert store.of("transition") == [
        ("transition", S.CLOSED, S.OPEN, "1 consecutive failures"),
        ("transition", S.OPEN, S.HALF_OPEN, "open period elapsed"),
        ("transition", S.HALF_OPEN, S.OPEN, "probe failed (timeout)"),
        ("transition", S.OPEN, S.CLOSED, "reset by operator"),
    ]
    breaker.attach_store(None)
    assert store.of("detach") == [("detach", "svc")]
    breaker.force(S.FORCED_OPEN)
    assert len(store.of("transition")) == 4  # detached: it hears nothing more


def test_half_open_admits_a_probe_only_when_the_store_says_so_and_tells_it_when_the_probe_ends(
    clock: FakeClock,
) -> None:
    breaker = make(clock, failure_threshold=1, timeout=10, half_open_max_calls=3, success_threshold=3)
    store = Store(tokens=0)
    breaker.attach_store(store)
    admit(breaker.acquire()).failure("transport")
    clock.advance(10)
    refused = breaker.acquire()
    assert isinstance(refused, Rejection)
    assert refused.state is S.HALF_OPEN
    assert refused.retry_after == 1.0  # no probe in flight to wait for: ask again in a second
    store.tokens = 3
    probes = [admit(breaker.acquire()) for _ in range(3)]
    assert isinstance(breaker.acquire(), Rejection)  # the breaker's own limit is checked before the store
    assert len(store.of("admit")) == 4
    probes[0].success()
    probes[1].release()
    probes[2].ignored()
    assert len(store.of("done")) == 3
    assert breaker.state is S.HALF_OPEN


def test_a_probe_that_ends_after_its_state_changed_is_not_reported_to_the_store(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, timeout=10)
    store = Store(tokens=2)
    breaker.attach_store(store)
    admit(breaker.acquire()).failure("transport")
    clock.advance(10)
    first, second = admit(breaker.acquire()), admit(breaker.acquire())
    first.failure("timeout")  # reopens: the second probe's state has ended
    second.success()
    assert len(store.of("done")) == 1


def test_an_imposed_trip_opens_for_the_time_left_tells_listeners_and_not_the_store(clock: FakeClock) -> None:
    recorder = Recorder()
    breaker = make(clock, listener=recorder, timeout=60)
    store = Store()
    breaker.attach_store(store)
    assert breaker.impose(S.OPEN, reason="opened by replica b", open_for=7.5, period=60.0)
    assert breaker.state is S.OPEN
    assert breaker.open_remaining() == 7.5
    assert breaker.open_period == 60.0
    assert breaker.snapshot().opened_at == clock.now
    [event] = recorder.of(StateTransition)
    assert (event.from_state, event.to_state, event.reason) == (S.CLOSED, S.OPEN, "opened by replica b")
    assert store.of("transition") == []
    rejected = breaker.acquire()
    assert isinstance(rejected, Rejection)
    assert rejected.retry_after == 7.5


def test_imposing_the_state_it_is_in_only_moves_the_end_of_the_open_period(clock: FakeClock) -> None:
    recorder = Recorder()
    breaker = make(clock, listener=recorder)
    breaker.impose(S.OPEN, reason="remote", open_for=5)
    assert breaker.acquire().rejected
    assert not breaker.impose(S.OPEN, reason="remote", open_for=2)
    assert breaker.open_remaining() == 2
    decision = breaker.acquire()
    assert isinstance(decision, Rejection)
    assert decision.retry_after == 2  # the cached rejection was not kept
    assert breaker.impose(S.DISABLED, reason="operator elsewhere")
    assert not breaker.impose(S.DISABLED, reason="again")
    assert breaker.open_remaining() is None
    assert len(recorder.of(StateTransition)) == 2


@pytest.mark.parametrize(
    ("start", "target", "path"),
    [
        (S.CLOSED, S.HALF_OPEN, [S.OPEN, S.HALF_OPEN]),
        (S.FORCED_OPEN, S.OPEN, [S.CLOSED, S.OPEN]),
        (S.DISABLED, S.HALF_OPEN, [S.CLOSED, S.OPEN, S.HALF_OPEN]),
        (S.METRICS_ONLY, S.FORCED_OPEN, [S.FORCED_OPEN]),
        (S.OPEN, S.CLOSED, [S.CLOSED]),
    ],
)
def test_an_imposed_state_the_table_does_not_allow_is_reached_through_allowed_steps(
    clock: FakeClock, start: S, target: S, path: list[S]
) -> None:
    breaker = make(clock)
    if start is S.OPEN:
        breaker.impose(S.OPEN, reason="setup", open_for=10)
    elif start is not S.CLOSED:
        breaker.force(start)
    recorder = Recorder()
    breaker.add_listener(recorder)
    assert breaker.impose(target, reason="remote", open_for=3)
    assert [e.to_state for e in recorder.of(StateTransition)] == path
    assert breaker.state is target


def test_an_imposed_close_empties_the_window_and_resets_the_backoff(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=3, timeout=10)
    admit(breaker.acquire()).failure("transport")
    admit(breaker.acquire()).failure("transport")
    breaker.impose(S.OPEN, reason="remote", open_for=1, period=40.0)
    breaker.impose(S.CLOSED, reason="closed by replica b")
    snap = breaker.snapshot()
    assert (snap.state, snap.calls, snap.consecutive_failures, snap.opened_at) == (S.CLOSED, 0, 0, None)
    assert breaker.open_period == 0.0


def test_an_imposed_backoff_step_is_where_the_next_failed_probe_grows_from(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, timeout=10, timeout_multiplier=2, max_timeout=300)
    breaker.impose(S.OPEN, reason="remote", open_for=0, period=80.0)
    admit(breaker.acquire()).failure("timeout")  # the probe fails: 80 s doubled
    assert breaker.open_remaining() == 160.0


def test_the_registry_attaches_its_store_to_every_breaker_now_and_later_and_detaches_forgotten_ones() -> None:
    registry = BreakerRegistry(clock=FakeClock())
    registry.get_or_create("a")
    store = Store()
    registry.set_store(store)
    registry.get_or_create("b")
    assert registry.store is store
    assert store.of("attach") == [("attach", "a"), ("attach", "b")]
    registry.remove("a")
    registry.remove("nothing")
    assert store.of("detach") == [("detach", "a")]
    registry.set_store(None)
    assert store.of("detach") == [("detach", "a"), ("detach", "b")]
