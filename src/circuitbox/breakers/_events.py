"""What a breaker tells its listeners: one frozen event per outcome, rejection, fallback or transition.

Events are built only when a breaker has listeners, so an unobserved breaker pays nothing for them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from circuitbox.breakers._state import CircuitState

logger = logging.getLogger("circuitbox.breakers")
T = TypeVar("T")


def _quick_init(cls: type[T]) -> type[T]:
    """Replace a frozen slots dataclass's __init__ by one that sets the slots directly.

    The generated one calls object.__setattr__ per field and costs twice as much; events are built per call.
    """
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    namespace: dict[str, Any] = {f"_set_{name}": getattr(cls, name).__set__ for name in names}
    body = "".join(f"    _set_{name}(self, {name})\n" for name in names)
    exec(f"def __init__(self, {', '.join(names)}):\n{body}", namespace)  # code made of field names only
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


@_quick_init
@dataclass(frozen=True, slots=True)
class StateTransition:
    """The breaker moved from one state to another; `generation` is the new one."""

    breaker: str
    at: float
    from_state: CircuitState
    to_state: CircuitState
    generation: int
    reason: str


@_quick_init
@dataclass(frozen=True, slots=True)
class CallSucceeded:
    """A call succeeded after `duration` seconds (`slow`: it reached `slow_call_duration`)."""

    breaker: str
    at: float
    duration: float
    slow: bool


@_quick_init
@dataclass(frozen=True, slots=True)
class CallFailed:
    """A call failed; `kind` is "timeout", "transport", "protocol", "tool_error", "exception", ..."""

    breaker: str
    at: float
    duration: float
    kind: str
    error: str | None
    slow: bool


@_quick_init
@dataclass(frozen=True, slots=True)
class CallRejected:
    """The breaker refused a call; `retry_after` is None when forced open."""

    breaker: str
    at: float
    state: CircuitState
    retry_after: float | None


@_quick_init
@dataclass(frozen=True, slots=True)
class CallIgnored:
    """A call ended in a way that counts neither way (an excluded exception, a caller mistake)."""

    breaker: str
    at: float
    duration: float


@_quick_init
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
            logger.exception("listener %r raised on %s of breaker %r", listener, type(event).__name__, event.breaker)
