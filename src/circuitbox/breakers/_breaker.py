"""`CircuitBreaker`: the state machine.

Every check-and-update is synchronous, so on one event loop no lock is needed and concurrent calls never
wait on each other.
"""

from __future__ import annotations

import inspect
import random

from circuitbox.breakers._call import AsyncCallMixin
from circuitbox.breakers._clock import Clock, monotonic
from circuitbox.breakers._config import CircuitBreakerConfig
from circuitbox.breakers._events import (
    CallFailed,
    CallIgnored,
    CallRejected,
    CallSucceeded,
    FallbackUsed,
    Listener,
    StateTransition,
    deliver,
)
from circuitbox.breakers._permit import FAILURE, IGNORED, SUCCESS, Permit, Rejection
from circuitbox.breakers._snapshot import BreakerSnapshot, health_score
from circuitbox.breakers._state import OPERATOR_STATES, CircuitState, check_transition
from circuitbox.breakers._window import CALL, FAILED, SLOW, CountWindow, TimeWindow, Window

_CLOSED, _OPEN, _HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
_FORCED_OPEN, _DISABLED, _METRICS_ONLY = (
    CircuitState.FORCED_OPEN,
    CircuitState.DISABLED,
    CircuitState.METRICS_ONLY,
)
_PASSING = frozenset({_CLOSED, _METRICS_ONLY, _DISABLED})
_shared_rng = random.Random()  # one Mersenne state (2.5 kB) for all breakers instead of one each


def _describe(error: BaseException | str | None) -> str | None:
    if error is None or isinstance(error, str):
        return error
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _make_window(config: CircuitBreakerConfig) -> Window:
    if config.sliding_window_type == "count":
        return CountWindow(config.sliding_window_size)
    return TimeWindow(config.sliding_window_size, config.window_bucket_seconds)


def _shape(config: CircuitBreakerConfig) -> tuple[str, int, float]:
    return config.sliding_window_type, config.sliding_window_size, config.window_bucket_seconds


class CircuitBreaker(AsyncCallMixin):
    """Guards one dependency. Use `acquire()` on hot paths, or `await breaker.call(fn, ...)` / `@breaker`."""

    __slots__ = (
        "_clock",
        "_consecutive",
        "_excluded",
        "_failure_threshold",
        "_fallback",
        "_fallback_async",
        "_fast_record",
        "_generation",
        "_half_open_max",
        "_hot",
        "_jitter",
        "_last_error",
        "_listeners",
        "_max_timeout",
        "_min_calls",
        "_multiplier",
        "_open_until",
        "_opened_at",
        "_passing",
        "_period",
        "_probe_successes",
        "_probes",
        "_rate",
        "_rejection",
        "_rng",
        "_slow",
        "_slow_rate",
        "_state",
        "_success_threshold",
        "_timed",
        "_timeout",
        "_window",
        "config",
        "name",
    )

    def __init__(
        self,
        config: CircuitBreakerConfig | None = None,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._clock: Clock = clock if clock is not None else monotonic
        self._rng = rng if rng is not None else _shared_rng
        self._state = _CLOSED
        self._generation = 0
        self._consecutive = 0
        self._last_error: str | None = None
        self._opened_at: float | None = None
        self._open_until = 0.0
        self._period = 0.0
        self._probes: dict[Permit, float] = {}  # in-flight half-open probes -> start time, oldest first
        self._probe_successes = 0
        self._rejection: Rejection | None = None  # reused while the state and its deadline stay the same
        self._listeners: tuple[Listener, ...] = ()
        self.config = config = config if config is not None else CircuitBreakerConfig()
        self._window: Window = _make_window(config)
        self._apply(config)

    def _apply(self, config: CircuitBreakerConfig) -> None:
        # Copied onto the breaker so the hot path reads slots, not a pydantic model.
        self.config = config
        self.name = config.name
        self._failure_threshold = config.failure_threshold
        self._success_threshold = config.success_threshold
        self._half_open_max = config.half_open_max_calls
        self._rate = config.failure_rate_threshold
        self._min_calls = config.minimum_calls
        self._slow = config.slow_call_duration
        self._slow_rate = config.slow_call_rate_threshold
        self._timeout = config.timeout
        self._multiplier = config.timeout_multiplier
        self._max_timeout = config.max_timeout
        self._jitter = config.jitter
        self._hot = config.effective_half_open_timeout
        self._excluded = config.excluded_exceptions
        self._fallback = config.fallback
        self._fallback_async = inspect.iscoroutinefunction(config.fallback)
        self._refresh()

    def _refresh(self) -> None:
        self._passing = self._state in _PASSING
        self._timed = bool(self._listeners) or self._slow is not None
        self._fast_record = self._state is _CLOSED and not self._timed and isinstance(self._window, CountWindow)

    # -- reading --------------------------------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state (pure: an elapsed open period is noticed by the next `acquire()`)."""
        return self._state

    @property
    def generation(self) -> int:
        """Bumped by every transition; permits from an earlier generation change no state."""
        return self._generation

    def snapshot(self) -> BreakerSnapshot:
        """State, window counts, rates and health now (an overdue probe is expired first)."""
        now = self._clock()
        if self._probes:
            self._expire_probes(now)
        window = self._window
        window.advance(now)
        calls, failures, slow = window.calls, window.failures, window.slow
        failure_rate = failures / calls if calls else 0.0
        slow_rate = slow / calls if calls else 0.0
        state = self._state
        retry_after = max(0.0, self._open_until - now) if state is _OPEN else None
        return BreakerSnapshot(
            self.name,
            state,
            calls,
            calls - failures,
            failures,
            slow,
            failure_rate,
            slow_rate,
            self._consecutive,
            self._last_error,
            self._opened_at,
            retry_after,
            self._generation,
            health_score(state, failure_rate, slow_rate),
        )

    # -- the permit protocol ---------------------------------------------------------------------------------

    def acquire(self) -> Permit | Rejection:
        """A `Permit` for one call, or a `Rejection` (test `.rejected`). Never blocks, never raises."""
        if self._passing:
            return Permit(self, self._generation, self._clock() if self._timed else None)
        now = self._clock()
        state = self._state
        if state is _OPEN:
            if now < self._open_until:
                rejection = self._rejection
                if rejection is not None and not self._listeners:
                    return rejection  # the common case, without a call
                return self._reject(now)
            self._transition(_HALF_OPEN, now, "open period elapsed")
        elif state is _FORCED_OPEN:
            return self._reject(now)
        probes = self._probes
        if (probes and self._expire_probes(now)) or len(probes) >= self._half_open_max:
            return self._reject(now)
        permit = Permit(self, self._generation, now)
        probes[permit] = now
        self._rejection = None  # the earliest free slot may have moved
        return permit

    def _reject(self, now: float) -> Rejection:
        rejection = self._rejection
        if rejection is None:
            state = self._state
            if state is _OPEN:
                retry_at: float | None = self._open_until
            elif state is _HALF_OPEN:  # full: a slot is free at the latest when the oldest probe expires
                retry_at = next(iter(self._probes.values())) + self._hot
            else:
                retry_at = None
            rejection = self._rejection = Rejection(self.name, state, self._last_error, retry_at, self._clock)
        if self._listeners:
            deliver(self._listeners, CallRejected(self.name, now, rejection.state, rejection.retry_after))
        return rejection

    def _expire_probes(self, now: float) -> bool:
        """Reopen if the oldest probe is past half_open_timeout; True if it did."""
        if now - next(iter(self._probes.values())) < self._hot:
            return False
        self._last_error = f"probe did not answer within half_open_timeout ({self._hot:g}s)"
        self._open(now, "probe timed out", backoff=True)
        return True

    def _settle(self, permit: Permit, outcome: int, kind: str, error: BaseException | str | None) -> None:
        """Apply one outcome (the general path; Permit.success handles the plain closed case itself)."""
        now = self._clock()
        start = permit._start
        duration = now - start if start is not None else 0.0
        limit = self._slow
        slow = limit is not None and outcome <= FAILURE and start is not None and duration >= limit
        message = _describe(error) if outcome == FAILURE else None
        listeners = self._listeners
        if listeners:
            if outcome == SUCCESS:
                deliver(listeners, CallSucceeded(self.name, now, duration, slow))
            elif outcome == FAILURE:
                deliver(listeners, CallFailed(self.name, now, duration, kind, message, slow))
            elif outcome == IGNORED:
                deliver(listeners, CallIgnored(self.name, now, duration))
        state = self._state
        if permit._generation != self._generation or state is _DISABLED:
            return  # stale (its state has ended) or disabled: nothing is recorded
        if state is _HALF_OPEN:
            del self._probes[permit]
            self._rejection = None
            if outcome == SUCCESS:
                self._probe_successes += 1
                if self._probe_successes >= self._success_threshold:
                    self._close(now, f"{self._probe_successes} probes succeeded")
            elif outcome == FAILURE:
                self._last_error = message
                self._open(now, f"probe failed ({kind})", backoff=True)
            return
        # closed or metrics_only (open and forced_open never issue permits)
        if outcome == SUCCESS:
            self._consecutive = 0
            if not slow:
                self._window.record(CALL, now)
                return  # a plain success never trips anything
            self._window.record(CALL | SLOW, now)
        elif outcome == FAILURE:
            self._consecutive += 1
            self._last_error = message
            self._window.record(CALL | FAILED | SLOW if slow else CALL | FAILED, now)
        else:
            return
        if state is _CLOSED:
            self._check_trip(now, outcome == FAILURE, slow, self._window)

    def _check_trip(self, now: float, failed: bool, slow: bool, window: Window) -> None:
        if failed and self._consecutive >= self._failure_threshold:
            self._open(now, f"{self._consecutive} consecutive failures")
            return
        calls = window.calls
        if calls < self._min_calls:
            return
        if failed and window.failures / calls >= self._rate:
            self._open(now, f"failure rate {window.failures / calls:.0%} over {calls} calls")
        elif slow and window.slow / calls >= self._slow_rate:
            self._open(now, f"slow call rate {window.slow / calls:.0%} over {calls} calls")

    # -- transitions -----------------------------------------------------------------------------------------

    def _transition(self, target: CircuitState, now: float, reason: str) -> None:
        source = self._state
        check_transition(source, target)
        self._state = target
        self._generation += 1
        self._rejection = None
        self._probes.clear()
        self._probe_successes = 0
        self._refresh()
        if self._listeners:
            deliver(self._listeners, StateTransition(self.name, now, source, target, self._generation, reason))

    def _open(self, now: float, reason: str, *, backoff: bool = False) -> None:
        period = min(self._period * self._multiplier, self._max_timeout) if backoff else self._timeout
        self._period = period
        if self._jitter:
            period *= 1.0 - self._jitter * self._rng.random()
        self._open_until = now + period
        self._opened_at = now
        self._transition(_OPEN, now, reason)

    def _close(self, now: float, reason: str) -> None:
        self._window.clear()
        self._consecutive = 0
        self._period = 0.0
        self._opened_at = None
        self._transition(_CLOSED, now, reason)

    # -- operator --------------------------------------------------------------------------------------------

    def force(self, state: CircuitState) -> None:
        """Hold the breaker in an operator state until `reset()`: forced_open, disabled or metrics_only.

        Raises:
            ValueError: `state` is not an operator state.
        """
        if state not in OPERATOR_STATES:
            raise ValueError(f"force() takes forced_open, disabled or metrics_only, not {state!s}")
        if state is self._state:
            return
        now = self._clock()
        self._opened_at = now if state is _FORCED_OPEN else None
        self._transition(state, now, "forced by operator")

    def reset(self) -> None:
        """Back to closed with an empty window and the open-period backoff reset."""
        if self._state is _CLOSED:
            self._window.clear()
            self._consecutive = 0
            self._period = 0.0
            return
        self._close(self._clock(), "reset by operator")

    def reconfigure(self, config: CircuitBreakerConfig) -> None:
        """New thresholds from now on; the window's contents are kept when its type and size are unchanged.

        The breaker keeps its name whatever `config.name` says.
        """
        if config.name != self.name:
            config = config.model_copy(update={"name": self.name})
        if _shape(config) != _shape(self.config):
            self._window = _make_window(config)
        self._apply(config)

    # -- listeners -------------------------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(event)` for every event of this breaker (see `BreakerEvent`)."""
        if listener not in self._listeners:
            self._listeners = (*self._listeners, listener)
            self._refresh()

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling `listener`; a listener that was never added is ignored."""
        self._listeners = tuple(fn for fn in self._listeners if fn != listener)
        self._refresh()

    def record_fallback(self) -> None:
        """Announce that a rejected call was answered by a fallback (emits FallbackUsed)."""
        if self._listeners:
            deliver(self._listeners, FallbackUsed(self.name, self._clock()))

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._state.value} gen={self._generation}>"
