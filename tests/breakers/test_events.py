from __future__ import annotations

import dataclasses

import pytest

from circuitbox.breakers import (
    CallFailed,
    CallIgnored,
    CallRejected,
    CallSucceeded,
    CircuitState,
    FallbackUsed,
    StateTransition,
)


def test_events_are_frozen_slotted_dataclasses_built_by_position_or_keyword() -> None:
    by_position = CallFailed("svc", 1.0, 0.5, "timeout", "slow", True)
    by_keyword = CallFailed(breaker="svc", at=1.0, duration=0.5, kind="timeout", error="slow", slow=True)
    assert by_position == by_keyword and hash(by_position) == hash(by_keyword)
    assert repr(by_position) == (
        "CallFailed(breaker='svc', at=1.0, duration=0.5, kind='timeout', error='slow', slow=True)"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        by_position.kind = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        CallFailed("svc", 1.0)  # type: ignore[call-arg]
    assert not hasattr(by_position, "__dict__")


@pytest.mark.parametrize(
    "event",
    [
        StateTransition("svc", 0.0, CircuitState.CLOSED, CircuitState.OPEN, 1, "5 consecutive failures"),
        CallSucceeded("svc", 0.0, 0.1, False),
        CallRejected("svc", 0.0, CircuitState.OPEN, 3.0),
        CallIgnored("svc", 0.0, 0.1),
        FallbackUsed("svc", 0.0),
    ],
)
def test_every_event_names_its_breaker_and_time(event: object) -> None:
    assert dataclasses.is_dataclass(event)
    assert dataclasses.fields(event)[0].name == "breaker" and dataclasses.fields(event)[1].name == "at"
    assert type(event).__init__.__qualname__ == f"{type(event).__name__}.__init__"
