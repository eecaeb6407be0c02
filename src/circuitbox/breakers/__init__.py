"""circuitbox.breakers: circuit breakers for async Python, on their own or behind the circuitbox proxy."""

from circuitbox.breakers._breaker import CircuitBreaker
from circuitbox.breakers._clock import Clock
from circuitbox.breakers._config import CircuitBreakerConfig
from circuitbox.breakers._errors import BreakerError, CircuitOpenError, IllegalTransitionError, PermitError
from circuitbox.breakers._events import (
    BreakerEvent,
    CallFailed,
    CallIgnored,
    CallRejected,
    CallSucceeded,
    FallbackUsed,
    Listener,
    StateTransition,
)
from circuitbox.breakers._permit import Permit, Rejection
from circuitbox.breakers._registry import BreakerRegistry, get_circuit_breaker_manager
from circuitbox.breakers._snapshot import BreakerSnapshot
from circuitbox.breakers._state import TRANSITIONS, CircuitState
from circuitbox.breakers._store import StateStore
from circuitbox.breakers.profiles import profile

__all__ = [
    "TRANSITIONS",
    "BreakerError",
    "BreakerEvent",
    "BreakerRegistry",
    "BreakerSnapshot",
    "CallFailed",
    "CallIgnored",
    "CallRejected",
    "CallSucceeded",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitOpenError",
    "CircuitState",
    "Clock",
    "FallbackUsed",
    "IllegalTransitionError",
    "Listener",
    "Permit",
    "PermitError",
    "Rejection",
    "StateStore",
    "StateTransition",
    "get_circuit_breaker_manager",
    "profile",
]
