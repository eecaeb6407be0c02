"""The Prometheus collector: breaker events in, the circuit_breaker_* families out.

Counters and the histogram are event-driven: each event does a dict lookup and a few integer updates on
a `Series` (no prometheus_client metric objects, no locks on the hot path). Families are built only when
scraped.

The two gauges that describe *current* condition (state and health score) are read from the breakers the
collector knows at scrape time: the state from `breaker.state` (a plain read, never a transition) and the
health score from `breaker.snapshot()`. Health changes with every call through the sliding window, so an
event-driven gauge would need a snapshot per call; one per breaker per scrape is cheaper and always exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from circuitbox.breakers import (
    BreakerEvent,
    BreakerRegistry,
    CallFailed,
    CallIgnored,
    CallRejected,
    CallSucceeded,
    CircuitBreaker,
    FallbackUsed,
    StateTransition,
)

from ._series import Series, failure_type

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

# States in which the circuit does not pass calls normally: the "open for too long" clock runs through them.
_UNAVAILABLE = frozenset({"open", "forced_open", "half_open"})


FORGOTTEN_CAP = 4096
"""Names of forgotten breakers kept to ignore their late events; tools come and go, so the set is capped."""


class MetricsCollector:
    """All circuit_breaker_* families for the breakers it hears about, registered on `registry`.

    Feed it with `attach(breaker_registry_or_breaker)` (or `add_listener(collector.on_event)` yourself,
    which gives everything but the health gauge). Label a breaker with `bind(name, server=..., tool=...)`;
    an unbound breaker named X is `server="X", tool=""`. `forget(name)` drops every series of a breaker
    that is gone.

    Without a `registry`, one of its own is made when first asked for (the first scrape): counting needs no
    prometheus_client, and importing it is a good part of a stdio proxy's start.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._registry = registry
        self._on_registry: list[Callable[[CollectorRegistry], object]] = []
        self._clock = clock
        self._series: dict[str, Series] = {}
        self._bindings: dict[str, tuple[str, str]] = {}
        # Names forgotten and not bound again: a late outcome of an in-flight call must not resurrect them
        # (under an unbound label, which would leak a series per removed tool).
        self._forgotten: dict[str, None] = {}  # an ordered set, capped at FORGOTTEN_CAP (oldest dropped)
        self._registries: list[BreakerRegistry] = []
        self._breakers: dict[str, CircuitBreaker] = {}
        if registry is not None:
            registry.register(self)

    @property
    def registry(self) -> CollectorRegistry:
        """The Prometheus registry it is on (made, with prometheus_client imported, on first use)."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry

            self._registry = CollectorRegistry()
            self._registry.register(self)
            for register in self._on_registry:
                register(self._registry)
        return self._registry

    def on_registry(self, register: Callable[[CollectorRegistry], object]) -> None:
        """Put other collectors on the same registry: `register(registry)` once it exists (at once if it does)."""
        if self._registry is None:
            self._on_registry.append(register)
        else:
            register(self._registry)

    # -- feeding --

    def on_event(self, event: BreakerEvent) -> None:
        """Breaker listener: count one event (a few integer updates; no snapshot, no lock)."""
        s = self._series.get(event.breaker)
        if s is None:
            if event.breaker in self._forgotten:
                return
            s = self._series[event.breaker] = Series(*self.labels_for(event.breaker))
        # Ordered by frequency: successes dominate, then rejections while a circuit is open.
        if isinstance(event, CallSucceeded):
            s.requests["success"] += 1
            s.observe(event.duration)
            if event.slow:
                s.failures["slow"] += 1
        elif isinstance(event, CallRejected):
            s.requests["rejected"] += 1
        elif isinstance(event, CallFailed):
            s.requests["failure"] += 1
            s.failures[failure_type(event.kind)] += 1
            s.observe(event.duration)
            if event.slow:  # a slow failure counts under its kind and under "slow", as the engine records it
                s.failures["slow"] += 1
        elif isinstance(event, CallIgnored):
            s.requests["ignored"] += 1
            s.observe(event.duration)
        elif isinstance(event, FallbackUsed):
            s.fallbacks += 1
        elif isinstance(event, StateTransition):
            self._on_transition(s, event)

    def _on_transition(self, s: Series, e: StateTransition) -> None:
        key = (e.from_state.value, e.to_state.value)
        s.transitions[key] = s.transitions.get(key, 0) + 1
        s.state = key[1]
        # The "open for too long" clock starts when the circuit stops passing calls and runs through
        # open <-> half_open flips until it closes (or an operator disables it / makes it metrics_only).
        if key[1] in _UNAVAILABLE:
            if s.unavailable_since is None:
                s.unavailable_since = self._clock()
        else:
            s.unavailable_since = None

    def count(self, breaker_name: str, what: str) -> None:
        """One retry (`what` "retries") or stale answer ("stale_answers") of a breaker's tool, told by the proxy."""
        s = self._series.get(breaker_name)
        if s is None:
            if breaker_name in self._forgotten:
                return
            s = self._series[breaker_name] = Series(*self.labels_for(breaker_name))
        if what == "retries":
            s.retries += 1
        elif what == "stale_answers":
            s.stale_answers += 1

    def attach(self, target: BreakerRegistry | CircuitBreaker) -> None:
        """Listen to a registry (its breakers now and later) or to one breaker, and read gauges from it."""
        if isinstance(target, CircuitBreaker):
            self._breakers[target.name] = target
            breakers: Iterable[CircuitBreaker] = [target]
        else:
            self._registries.append(target)
            breakers = list(target)
        for breaker in breakers:
            self._ensure(breaker.name)
        target.add_listener(self.on_event)

    def bind(self, breaker_name: str, *, server: str, tool: str) -> None:
        """Give a breaker its `server`/`tool` labels (and create its series at zero)."""
        self._bindings[breaker_name] = (server, tool)
        self._forgotten.pop(breaker_name, None)
        series = self._ensure(breaker_name)
        series.server, series.tool = server, tool

    def forget(self, breaker_name: str) -> None:
        """Remove every series of a breaker (its tool is gone); `bind` it again to count it again."""
        self._series.pop(breaker_name, None)
        self._bindings.pop(breaker_name, None)
        self._breakers.pop(breaker_name, None)
        self._forgotten[breaker_name] = None
        if len(self._forgotten) > FORGOTTEN_CAP:  # late events of a long-forgotten breaker only recreate a series
            del self._forgotten[next(iter(self._forgotten))]

    def labels_for(self, breaker_name: str) -> tuple[str, str]:
        """The (server, tool) label pair of a breaker: its binding, else (name, "")."""
        return self._bindings.get(breaker_name, (breaker_name, ""))

    def names(self) -> list[str]:
        """The breakers that currently have series."""
        return list(self._series)

    def _ensure(self, name: str) -> Series:
        series = self._series.get(name)
        if series is None:
            series = self._series[name] = Series(*self.labels_for(name))
        return series

    def _breaker(self, name: str) -> CircuitBreaker | None:
        breaker = self._breakers.get(name)
        if breaker is None:
            for registry in self._registries:
                breaker = registry.get(name)
                if breaker is not None:
                    break
        return breaker

    # -- reading --

    def tool_stats(self, breaker_name: str) -> dict[str, Any]:
        """Counters, recent latency percentiles and fallback count of one breaker, JSON-ready.

        A name without series (never called, or forgotten) gets zeros; no series is created for it.
        """
        s = self._series.get(breaker_name) or Series(*self.labels_for(breaker_name))
        return {
            "breaker": breaker_name,
            "server": s.server,
            "tool": s.tool,
            "requests": {**s.requests, "total": sum(s.requests.values())},
            "failures_by_type": dict(s.failures),
            "fallback_activations": s.fallbacks,
            "retries": s.retries,
            "stale_answers": s.stale_answers,
            "state_transitions": sum(s.transitions.values()),
            "latency_seconds": {
                **s.percentiles(),
                "mean": s.duration_sum / s.duration_count if s.duration_count else None,
            },
        }

    def describe(self) -> Iterator[Metric]:
        # Family names without samples: lets the registry refuse a second collector with the same names.
        from ._families import Families  # prometheus_client's families: once a registry exists, not before

        yield from Families()

    def collect(self) -> Iterator[Metric]:
        from ._families import Families

        families = Families()
        now = self._clock()
        for name, s in list(self._series.items()):
            breaker = self._breaker(name)
            state = breaker.state.value if breaker is not None else s.state
            if state not in _UNAVAILABLE:
                s.unavailable_since = None
            elif s.unavailable_since is None:  # first seen while open (attached late): count from now
                s.unavailable_since = now
            open_for = 0.0 if s.unavailable_since is None else now - s.unavailable_since
            if breaker is None:
                families.add(s, state, open_for)
            else:
                families.add(s, state, open_for, breaker.snapshot().health_score, breaker.config.timeout)
        yield from families
