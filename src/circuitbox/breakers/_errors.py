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

    # Fresh instance per rejection (never a stored one re-raised), so tracebacks never accumulate.
    def __init__(
        self, breaker: str, state: CircuitState, retry_after: float | None, last_error: str | None = None
    ) -> None:
        self.breaker = breaker
        self.state = state
        self.retry_after = retry_after
        self.last_error = last_error
        super().__init__(breaker, state, retry_after, last_error)

    def __str__(self) -> str:
        when = f"retry in {self.retry_after:.3g}s" if self.retry_after is not None else "forced open"
        last = f"; last error: {self.last_error}" if self.last_error else ""
        return f"circuit {self.breaker!r} is {self.state.value} ({when}){last}"


class IllegalTransitionError(BreakerError):
    """A state change that the transition table does not allow."""


class PermitError(BreakerError):
    """A permit's outcome was reported more than once."""
