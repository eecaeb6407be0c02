"""Errors of the breaker engine.

BreakerError
├── CircuitOpenError        a call was rejected (raised only by `call()` / `@breaker` without a fallback)
├── IllegalTransitionError  a state change outside TRANSITIONS (always a bug)
└── PermitError             a permit was settled twice
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from circuitbox.breakers._state import CircuitState


class BreakerError(Exception):
    """Base class of the errors the engine raises."""


class CircuitOpenError(BreakerError):
    """The breaker rejected the call; `retry_after` says when the next probe may pass (None: forced open)."""

    # A fresh instance per rejection (never a stored one re-raised, so tracebacks never pile up), and a cheap
    # one: the facts live in `args` (set by BaseException.__new__), read back through properties.
    def __init__(
        self, breaker: str, state: CircuitState, retry_after: float | None, last_error: str | None = None
    ) -> None:
        if len(self.args) != 4:  # some were given by keyword or defaulted: __new__ kept only the positional ones
            self.args = (breaker, state, retry_after, last_error)

    @property
    def breaker(self) -> str:
        """The name of the breaker that rejected the call."""
        name: str = self.args[0]
        return name

    @property
    def state(self) -> CircuitState:
        """Its state at the time (open, half_open or forced_open)."""
        state: CircuitState = self.args[1]
        return state

    @property
    def retry_after(self) -> float | None:
        """Seconds until the next probe may pass; None when forced open."""
        seconds: float | None = self.args[2]
        return seconds

    @property
    def last_error(self) -> str | None:
        """The last failure the breaker recorded, if any."""
        error: str | None = self.args[3]
        return error

    def __str__(self) -> str:
        when = f"retry in {self.retry_after:.3g}s" if self.retry_after is not None else "forced open"
        last = f"; last error: {self.last_error}" if self.last_error else ""
        return f"circuit {self.breaker!r} is {self.state.value} ({when}){last}"


class IllegalTransitionError(BreakerError):
    """A state change that the transition table does not allow."""


class PermitError(BreakerError):
    """A permit's outcome was reported more than once."""
