"""The breaker's state and everything that changes it outside a call: transitions, operator actions, listeners.

`BreakerCore` holds every slot; `_protocol.BreakerProtocol` adds the per-call decisions and `_breaker.CircuitBreaker`
the async API, so each module stays small while the hot path still reads plain slots.
"""

from __future__ import annotations

import inspect
import random

from circuitbox.breakers._clock import Clock, monotonic
from circuitbox.breakers._config import CircuitBreakerConfig
from circuitbox.breakers._events import FallbackUsed, Listener, StateTransition, deliver
from circuitbox.breakers._permit import Permit, Rejection
from circuitbox.breakers._state import OPERATOR_STATES, TRANSITIONS, CircuitState, check_transition
from circuitbox.breakers._store import StateStore
from circuitbox.breakers._window import CountWindow, TimeWindow, Window

_CLOSED, _OPEN, _HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
_FORCED_OPEN, _DISABLED, _METRICS_ONLY = (
    CircuitState.FORCED_OPEN,
    CircuitState.DISABLED,
    CircuitState.METRICS_ONLY,
)
_PASSING = frozenset({_CLOSED, _METRICS_ONLY, _DISABLED})
_shared_rng = random.Random()  # one Mersenne state (2.5 kB) for all breakers instead of one each


def _make_window(config: CircuitBreakerConfig) -> Window:
    if config.sliding_window_type == "count":
        return CountWindow(config.sliding_window_size)
    return TimeWindow(config.sliding_window_size, config.window_bucket_seconds)


def _shape(config: CircuitBreakerConfig) -> tuple[str, int, float]:
    return config.sliding_window_type, config.sliding_window_size, config.window_bucket_seconds


class BreakerCore:
    """State, configuration, transitions, operator actions and listeners of one breaker."""

    __slots__ = (
        "_clock",
        "_consecutive",
        "_excluded",
        "_failure_threshold",
        "_fallback",
        "_fallback_async",
        "_fast_window",
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
        "_store",
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
        self._store: StateStore | None = None
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
        # The window itself when an outcome may take the fast path (closed, count window, nothing timed or observed).
        window = self._window
        self._fast_window = (
            window if isinstance(window, CountWindow) and self._state is _CLOSED and not self._timed else None
        )

    # -- reading --------------------------------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state (pure: an elapsed open period is noticed by the next `acquire()`)."""
        return self._state

    @property
    def generation(self) -> int:
        """Bumped by every transition; permits from an earlier generation change no state."""
        return self._generation

    # -- transitions -----------------------------------------------------------------------------------------

    @property
    def open_period(self) -> float:
        """The open period before jitter (its backoff step); 0 while closed since the last close."""
        return self._period

    def open_remaining(self) -> float | None:
        """Seconds left of the open period while open, else None."""
        if self._state is not _OPEN:
            return None
        return max(0.0, self._open_until - self._clock())

    def _transition(self, target: CircuitState, now: float, reason: str, *, imposed: bool = False) -> None:
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
        if self._store is not None and not imposed:
            self._store.on_transition(self, source, target, reason)

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

    def probe_now(self, reason: str = "probe requested") -> bool:
        """End the open period early: an open breaker goes half-open, so its next calls are probes. For when the
        cause is known to be gone (the proxy reconnected to a server that had crashed). False in any other state.
        """
        if self._state is not _OPEN:
            return False
        self._transition(_HALF_OPEN, self._clock(), reason)
        return True

    def reconfigure(self, config: CircuitBreakerConfig) -> None:
        """New thresholds from now on; the window's contents are kept when its type and size are unchanged.

        The breaker keeps its name whatever `config.name` says.
        """
        if config.name != self.name:
            config = config.model_copy(update={"name": self.name})
        if _shape(config) != _shape(self.config):
            self._window = _make_window(config)
        self._rejection = None  # its deadline may depend on the old half_open_timeout
        self._apply(config)

    # -- the state store -------------------------------------------------------------------------------------

    def attach_store(self, store: StateStore | None) -> None:
        """Report transitions and half-open probes to `store` (None: to nobody); see `StateStore`."""
        old, self._store = self._store, store
        if old is not None and old is not store:
            old.detach(self)
        if store is not None and old is not store:
            store.attach(self)

    def impose(self, state: CircuitState, *, reason: str, open_for: float = 0.0, period: float | None = None) -> bool:
        """Take a state decided elsewhere (another replica of a fleet): listeners hear of it, the store does not.

        `open_for` is what is left of the open period (open only), `period` its backoff step. A state the
        transition table does not allow from the current one is reached through closed (or open, for half-open),
        each step a transition of its own. Already in `state`: only the open period is updated. True if the
        state changed.
        """
        now = self._clock()
        if period is not None:
            self._period = period
        if state is self._state:
            if state is _OPEN:
                self._open_until = now + open_for
                self._rejection = None
            return False
        if state not in TRANSITIONS[self._state]:
            # half-open only follows open; open only follows closed or half-open (an operator state: via reset)
            self.impose(_OPEN if state is _HALF_OPEN else _CLOSED, reason=reason, period=period)
        if state is _CLOSED:
            self._window.clear()
            self._consecutive = 0
            self._period = 0.0
            self._opened_at = None
        elif state is _OPEN:
            self._open_until = now + open_for
            self._opened_at = now
        elif state is _FORCED_OPEN:
            self._opened_at = now
        elif state is not _HALF_OPEN:
            self._opened_at = None
        self._transition(state, now, reason, imposed=True)
        return True

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
