"""The permit protocol: `acquire()` gives a `Permit` to report one call's outcome on, or a `Rejection`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

from circuitbox.breakers._clock import Clock
from circuitbox.breakers._errors import PermitError
from circuitbox.breakers._state import CircuitState

if TYPE_CHECKING:
    from circuitbox.breakers._protocol import BreakerProtocol

# Outcome codes handed to BreakerProtocol._settle.
SUCCESS, FAILURE, IGNORED, RELEASED = 0, 1, 2, 3


class Permit:
    """Leave to make one call. Report how it ended with exactly one of the four methods, exactly once.

    The permit remembers the breaker's generation: an outcome reported after the state it was issued in has
    ended is still announced to listeners but changes no state.
    """

    __slots__ = ("_breaker", "_generation", "_start")

    rejected: ClassVar[Literal[False]] = False  # Literal: `if d.rejected:` narrows Permit | Rejection for mypy

    def __init__(self, breaker: BreakerProtocol, generation: int, start: float | None) -> None:
        self._breaker: BreakerProtocol | None = breaker
        self._generation = generation
        self._start = start

    def success(self) -> None:
        """The call succeeded.

        Raises:
            PermitError: this permit's outcome was already reported.
        """
        b = self._breaker
        if b is None:
            raise PermitError("this permit's outcome was already reported")
        self._breaker = None
        fast = b._fast_window
        if fast is not None and self._generation == b._generation:
            # Closed, count window, nothing timed or observed: only the window and the streak change.
            b._consecutive = 0
            fast.success()
        else:
            b._settle(self._generation, self._start, self, SUCCESS, "", None)

    def failure(self, kind: str = "exception", error: BaseException | str | None = None) -> None:
        """The call failed; `kind` classifies it ("timeout", "transport", "protocol", "tool_error", ...).

        Raises:
            PermitError: this permit's outcome was already reported.
        """
        self._settle(FAILURE, kind, error)

    def ignored(self) -> None:
        """The call ended in a way that counts neither way (an excluded exception, a caller mistake).

        Raises:
            PermitError: this permit's outcome was already reported.
        """
        self._settle(IGNORED, "", None)

    def release(self) -> None:
        """The call was cancelled: free its half-open slot, count it neither way, announce nothing.

        Raises:
            PermitError: this permit's outcome was already reported.
        """
        self._settle(RELEASED, "", None)

    def _settle(self, outcome: int, kind: str, error: BaseException | str | None) -> None:
        b = self._breaker
        if b is None:
            raise PermitError("this permit's outcome was already reported")
        self._breaker = None
        b._settle(self._generation, self._start, self, outcome, kind, error)


@dataclass(frozen=True, slots=True)
class Rejection:
    """The breaker refused the call. `retry_after` is computed when read; None when forced open."""

    breaker: str
    state: CircuitState
    last_error: str | None
    retry_at: float | None
    """Clock time the next call may be admitted (None: only an operator can let calls through)."""
    clock: Clock = field(repr=False, compare=False)

    rejected: ClassVar[Literal[True]] = True

    @property
    def retry_after(self) -> float | None:
        """Seconds until the next call may be admitted, never negative; None when forced open."""
        at = self.retry_at
        if at is None:
            return None
        left = at - self.clock()
        return left if left > 0.0 else 0.0
