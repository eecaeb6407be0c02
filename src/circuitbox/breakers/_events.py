"""What a breaker tells its listeners: one frozen event per outcome, rejection, fallback or transition.

Events are built only when a breaker has listeners, so an unobserved breaker pays nothing for them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from circuitbox.breakers._state import CircuitState

logger = logging.getLogger("circuitbox.breakers")


@dataclass(frozen=True, slots=True)
class StateTransition:
    """The breaker moved from one state to another; `generation` is the new one."""

    breaker: str
    at: float
    from_state: CircuitState
    to_state: CircuitState
    generation: int
    reason: str


@dataclass(frozen=True, slots=True)
class CallSucceeded:
    """A call succeeded after `duration` seconds (`slow`: it reached `slow_call_duration`)."""

    breaker: str
    at: float
    duration: float
    slow: bool


@dataclass(frozen=True, slots=True)
class CallFailed:
    """A call failed; `kind` is "timeout", "transport", "protocol", "tool_error", "exception", ..."""

    breaker: str
    at: float
    duration: float
    kind: str
    error: str | None
    slow: bool


@dataclass(frozen=True, slots=True)
class CallRejected:
    """The breaker refused a call; `retry_after` is None when forced open."""

    breaker: str
    at: float
    state: CircuitState
    retry_after: float | None


@dataclass(frozen=True, slots=True)
class CallIgnored:
    """A call ended in a way that counts neither way (an excluded exception, a caller mistake)."""

    breaker: str
    at: float
    duration: float


@dataclass(frozen=True, slots=True)
class FallbackUsed:
    """A rejected call was answered by the fallback."""

    breaker: str
    at: float


BreakerEvent = StateTransition | CallSucceeded | CallFailed | CallRejected | CallIgnored | FallbackUsed
Listener = Callable[[BreakerEvent], None]


def deliver(listeners: Iterable[Listener], event: BreakerEvent) -> None:
    """Hand `event` to every listener; one that raises is logged and the others still get it."""
    for listener in listeners:
        try:
            listener(event)
        except Exception:
            logger.exception(
                "listener %r raised on %s of breaker %r", listener, type(event).__name__, event.breaker
            )
