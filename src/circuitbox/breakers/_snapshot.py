"""`BreakerSnapshot`: a frozen picture of one breaker, and the health score formula."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from circuitbox.breakers._state import CircuitState


def health_score(state: CircuitState, failure_rate: float, slow_call_rate: float) -> float:
    """0 when (forced) open; else (1 - failure_rate) * (1 - 0.5 * slow_rate), halved in half-open."""
    if state is CircuitState.OPEN or state is CircuitState.FORCED_OPEN:
        return 0.0
    score = (1.0 - failure_rate) * (1.0 - 0.5 * slow_call_rate)
    return score / 2 if state is CircuitState.HALF_OPEN else score


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """One breaker at one moment. Counts and rates are over the sliding window."""

    name: str
    state: CircuitState
    calls: int
    successes: int
    failures: int
    slow_calls: int
    failure_rate: float
    slow_call_rate: float
    consecutive_failures: int
    last_error: str | None
    opened_at: float | None
    """Clock time the circuit last opened (None unless open, half-open or forced open)."""
    retry_after: float | None
    """Seconds until the next probe may pass (open only)."""
    generation: int
    health_score: float

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (the state as its string value)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["state"] = self.state.value
        return data
