"""Random operation sequences against a small reference model of the breaker's state machine."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from circuitbox.breakers import (
    TRANSITIONS,
    BreakerEvent,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
    Permit,
    StateTransition,
)
from circuitbox.breakers.testing import FakeClock

S = CircuitState
OUTCOMES = ["failure", "success", "failure", "success", "ignored", "release"]
FAILURES, SUCCESSES, MAX_PROBES, TIMEOUT, MAX_TIMEOUT, PROBE_TIMEOUT = 2, 2, 2, 10.0, 40.0, 5.0
CONFIG = CircuitBreakerConfig(
    name="model",
    failure_threshold=FAILURES,
    success_threshold=SUCCESSES,
    half_open_max_calls=MAX_PROBES,
    timeout=TIMEOUT,
    timeout_multiplier=2,
    max_timeout=MAX_TIMEOUT,
    half_open_timeout=PROBE_TIMEOUT,
    jitter=0,
    failure_rate_threshold=1.0,  # keep the rate rule out of the model: the streak always trips first
    minimum_calls=100,
)


@dataclass
class Model:
    """What the breaker should do, written as plainly as possible."""

    state: S = S.CLOSED
    generation: int = 0
    streak: int = 0
    open_until: float = 0.0
    period: float = 0.0
    probes: dict[int, float] = field(default_factory=dict)  # token -> start
    probe_successes: int = 0

    def move(self, state: S) -> None:
        self.state = state
        self.generation += 1
        self.probes.clear()
        self.probe_successes = 0

    def open(self, now: float, *, backoff: bool) -> None:
        self.period = min(self.period * 2, MAX_TIMEOUT) if backoff else TIMEOUT
        self.open_until = now + self.period
        self.move(S.OPEN)

    def close(self) -> None:
        self.streak = 0
        self.period = 0.0
        self.move(S.CLOSED)

    def expire(self, now: float) -> bool:
        if self.state is S.HALF_OPEN and self.probes and now - min(self.probes.values()) >= PROBE_TIMEOUT:
            self.open(now, backoff=True)
            return True
        return False

    def acquire(self, now: float, token: int) -> bool:
        if self.state in (S.CLOSED, S.METRICS_ONLY, S.DISABLED):
            return True
        if self.state is S.FORCED_OPEN:
            return False
        if self.state is S.OPEN:
            if now < self.open_until:
                return False
            self.move(S.HALF_OPEN)
        if self.expire(now) or len(self.probes) >= MAX_PROBES:
            return False
        self.probes[token] = now
        return True

    def settle(self, now: float, token: int, generation: int, outcome: str) -> None:
        if generation != self.generation or self.state is S.DISABLED:
            return
        if self.state is S.HALF_OPEN:
            del self.probes[token]
            if outcome == "success":
                self.probe_successes += 1
                if self.probe_successes >= SUCCESSES:
                    self.close()
            elif outcome == "failure":
                self.open(now, backoff=True)
        elif outcome == "success":
            self.streak = 0
        elif outcome == "failure":
            self.streak += 1
            if self.state is S.CLOSED and self.streak >= FAILURES:
                self.open(now, backoff=False)

    def force(self, state: S) -> None:
        if state is not self.state:
            self.move(state)

    def reset(self) -> None:
        if self.state is S.CLOSED:
            self.streak = 0
            self.period = 0.0
        else:
            self.close()


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.breaker = CircuitBreaker(CONFIG, clock=self.clock)
        self.breaker.add_listener(self.on_event)
        self.model = Model()
        self.permits: list[tuple[Permit, int, int]] = []  # permit, model generation, token
        self.tokens = 0
        self.seen_generation = 0
        self.counted_successes = 0  # successes of current half-open probes, counted before they are reported

    def on_event(self, event: BreakerEvent) -> None:
        if not isinstance(event, StateTransition):
            return
        assert event.to_state in TRANSITIONS[event.from_state], event
        assert event.generation > self.seen_generation
        self.seen_generation = event.generation
        if event.from_state is S.HALF_OPEN and event.to_state is S.CLOSED and event.reason != "reset by operator":
            assert self.counted_successes >= SUCCESSES
        if event.to_state is S.HALF_OPEN:
            self.counted_successes = 0

    @rule()
    def acquire(self) -> None:
        self._acquire()

    @rule()
    def acquire_again(self) -> None:  # a second rule, so that acquiring is drawn more often than the rest
        self._acquire()

    def _acquire(self) -> bool:
        now = self.clock()
        was_open_early = self.model.state is S.OPEN and now < self.model.open_until
        self.tokens += 1
        admitted = self.model.acquire(now, self.tokens)
        decision = self.breaker.acquire()
        assert decision.rejected is not admitted
        if was_open_early:
            assert decision.rejected
        if isinstance(decision, Permit):
            self.permits.append((decision, self.model.generation, self.tokens))
        return admitted

    @rule(pick=st.integers(0, 7), outcome=st.sampled_from(OUTCOMES))
    def settle(self, pick: int, outcome: str) -> None:
        self._settle(pick, outcome)

    @rule()
    def burst_of_failures(self) -> None:
        for _ in range(FAILURES):
            self.call("failure")

    @rule(outcome=st.sampled_from(OUTCOMES))
    def call(self, outcome: str) -> None:
        """A call that ends before anything else happens."""
        if self._acquire():
            self._settle(0, outcome)

    def _settle(self, pick: int, outcome: str) -> None:
        if not self.permits:
            return
        permit, generation, token = self.permits.pop(-1 - pick % len(self.permits))  # newest first
        current_probe = self.model.state is S.HALF_OPEN and generation == self.model.generation
        if outcome == "success" and current_probe:
            self.counted_successes += 1
        self.model.settle(self.clock(), token, generation, outcome)
        if outcome == "failure":
            permit.failure("transport", "down")
        else:
            getattr(permit, outcome)()

    @rule(seconds=st.sampled_from([10.0, 5.0, 2.5, 20.0, 9.5, 1.0, 40.0, 0.5, 4.5]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: self.model.state is S.OPEN)
    @rule(short_by=st.sampled_from([0.0, 0.25]))
    def wait_out_the_open_period(self, short_by: float) -> None:
        self.clock.advance(max(0.0, self.model.open_until - short_by - self.clock()))

    @rule(state=st.sampled_from([S.FORCED_OPEN, S.DISABLED, S.METRICS_ONLY]), roll=st.integers(0, 5))
    def force(self, state: S, roll: int) -> None:
        if roll != 5:  # operators are rare: otherwise the automatic states are seldom reached
            return
        self.model.force(state)
        self.breaker.force(state)

    @rule()
    def reset(self) -> None:
        self.model.reset()
        self.breaker.reset()

    @rule()
    def snapshot(self) -> None:
        # A pure read (BreakerProtocol.snapshot): an overdue probe is acted on by the next acquire, not here, so the
        # model is not expired either; expiring it here disagreed with the breaker whenever a probe was overdue.
        snap = self.breaker.snapshot()
        assert snap.state is self.model.state and snap.consecutive_failures == self.model.streak
        if snap.state is S.OPEN:
            assert snap.retry_after == max(0.0, self.model.open_until - self.clock())

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert self.breaker.state is self.model.state
        assert self.breaker.generation == self.model.generation >= self.seen_generation
        assert len(self.breaker._probes) == len(self.model.probes) <= MAX_PROBES

    @invariant()
    def probes_in_flight_never_exceed_the_limit(self) -> None:
        in_flight = [p for p, gen, _ in self.permits if gen == self.model.generation]
        if self.model.state is S.HALF_OPEN:
            assert len(in_flight) <= MAX_PROBES


BreakerMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, derandomize=True, database=None, deadline=None
)
test_the_breaker_follows_its_reference_model = BreakerMachine.TestCase
