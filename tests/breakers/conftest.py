from __future__ import annotations

from typing import Any

import pytest

from circuitbox.breakers import BreakerEvent, CircuitBreaker, CircuitBreakerConfig, Permit, Rejection
from circuitbox.breakers.testing import FakeClock


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class Recorder:
    """A listener that keeps every event."""

    def __init__(self) -> None:
        self.events: list[BreakerEvent] = []

    def __call__(self, event: BreakerEvent) -> None:
        self.events.append(event)

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def make(clock: FakeClock, *, listener: Recorder | None = None, **settings: Any) -> CircuitBreaker:
    """A breaker on `clock` with no jitter unless asked, so open periods are exact."""
    settings.setdefault("jitter", 0.0)
    breaker = CircuitBreaker(CircuitBreakerConfig(name="svc", **settings), clock=clock)
    if listener is not None:
        breaker.add_listener(listener)
    return breaker


def admit(decision: Permit | Rejection) -> Permit:
    """The permit of a call the breaker must admit (fails the test with the rejection otherwise)."""
    assert isinstance(decision, Permit), f"rejected: {decision}"
    return decision
