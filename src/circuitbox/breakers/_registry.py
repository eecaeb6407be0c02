"""`BreakerRegistry`: named breakers, get-or-create, and their summary; plus the process-wide one."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

from circuitbox.breakers._breaker import CircuitBreaker
from circuitbox.breakers._clock import Clock
from circuitbox.breakers._config import CircuitBreakerConfig
from circuitbox.breakers._events import Listener
from circuitbox.breakers._state import CircuitState
from circuitbox.breakers._store import StateStore

_OPEN_STATES = frozenset({CircuitState.OPEN, CircuitState.FORCED_OPEN})


class BreakerRegistry:
    """Breakers by name. Iterating yields the breakers; `in` and `get` take names.

    `clock` and `rng` are the defaults for the breakers it creates.
    """

    __slots__ = ("_breakers", "_clock", "_listeners", "_rng", "_store")

    def __init__(self, *, clock: Clock | None = None, rng: random.Random | None = None) -> None:
        self._breakers: dict[str, CircuitBreaker] = {}
        self._listeners: list[Listener] = []
        self._clock = clock
        self._rng = rng
        self._store: StateStore | None = None

    def get_or_create(
        self, name: str, config: CircuitBreakerConfig | None = None, *, clock: Clock | None = None
    ) -> CircuitBreaker:
        """The breaker called `name`; created from `config` (renamed to `name`) if there is none yet.

        An existing breaker is returned as it is: use `reconfigure()` to change its policy.
        """
        breaker = self._breakers.get(name)
        if breaker is None:
            config = config if config is not None else CircuitBreakerConfig()
            if config.name != name:
                config = config.model_copy(update={"name": name})
            breaker = CircuitBreaker(config, clock=clock if clock is not None else self._clock, rng=self._rng)
            for listener in self._listeners:
                breaker.add_listener(listener)
            self._breakers[name] = breaker
            if self._store is not None:
                breaker.attach_store(self._store)
        return breaker

    def get(self, name: str) -> CircuitBreaker | None:
        """The breaker called `name`, or None."""
        return self._breakers.get(name)

    def remove(self, name: str) -> None:
        """Forget the breaker called `name` (nothing happens if there is none)."""
        breaker = self._breakers.pop(name, None)
        if breaker is not None:
            breaker.attach_store(None)

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(list(self._breakers.values()))

    def __len__(self) -> int:
        return len(self._breakers)

    def __contains__(self, name: object) -> bool:
        return name in self._breakers

    def add_listener(self, listener: Listener) -> None:
        """Listen to every breaker of the registry, now and later."""
        if listener not in self._listeners:
            self._listeners.append(listener)
        for breaker in self._breakers.values():
            breaker.add_listener(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop listening to the registry's breakers."""
        if listener in self._listeners:
            self._listeners.remove(listener)
        for breaker in self._breakers.values():
            breaker.remove_listener(listener)

    def set_store(self, store: StateStore | None) -> None:
        """Attach `store` to every breaker of the registry, now and later (see `StateStore`); None detaches."""
        self._store = store
        for breaker in self._breakers.values():
            breaker.attach_store(store)

    @property
    def store(self) -> StateStore | None:
        """The store attached to the registry's breakers, if any."""
        return self._store

    def summary(self) -> dict[str, Any]:
        """`total`, `by_state` {state: count}, `open` [names], `health_score` (mean, 1.0 if empty), `healthy`.

        `healthy` is true when no breaker is open or forced open.
        """
        by_state = {state.value: 0 for state in CircuitState}
        opened: list[str] = []
        total_health = 0.0
        for name, breaker in self._breakers.items():
            snap = breaker.snapshot()
            by_state[snap.state.value] += 1
            total_health += snap.health_score
            if snap.state in _OPEN_STATES:
                opened.append(name)
        count = len(self._breakers)
        return {
            "total": count,
            "by_state": by_state,
            "open": opened,
            "health_score": total_health / count if count else 1.0,
            "healthy": not opened,
        }

    def export_json(self, *, indent: int | None = 2) -> str:
        """The summary and every breaker's snapshot as JSON: {"summary": ..., "breakers": [...]}."""
        breakers = [breaker.snapshot().to_dict() for breaker in self._breakers.values()]
        return json.dumps({"summary": self.summary(), "breakers": breakers}, indent=indent)


_manager = BreakerRegistry()


def get_circuit_breaker_manager() -> BreakerRegistry:
    """The process-wide registry."""
    return _manager
