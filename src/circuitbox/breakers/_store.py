"""The state-store hook: how something outside the breaker (a fleet of replicas sharing Redis) follows it.

The breaker stays synchronous and pure. A store is told, synchronously and without awaiting anything, about every
transition the breaker makes on its own, and is asked before each half-open probe; it may later impose a state
decided elsewhere with `CircuitBreaker.impose()`. A store that needs I/O queues the work and does it in its own
task, so no call ever waits on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from circuitbox.breakers._state import CircuitState

if TYPE_CHECKING:
    from circuitbox.breakers._core import BreakerCore


class StateStore(Protocol):
    """What a breaker tells the store it is attached to (`attach_store`). Every method must return at once."""

    def attach(self, breaker: BreakerCore) -> None:
        """The breaker now reports to this store."""

    def detach(self, breaker: BreakerCore) -> None:
        """The breaker no longer reports to this store (its registry forgot it)."""

    def on_transition(self, breaker: BreakerCore, source: CircuitState, target: CircuitState, reason: str) -> None:
        """The breaker moved on its own (never called for a state the store imposed)."""

    def admit_probe(self, breaker: BreakerCore) -> bool:
        """May one more half-open probe start now? (the breaker's own `half_open_max_calls` is checked first)."""

    def probe_done(self, breaker: BreakerCore) -> None:
        """A probe admitted by `admit_probe` has ended (success, failure, ignored or released) in its state."""
