"""Circuit states and the one table of the transitions between them."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from circuitbox.breakers._errors import IllegalTransitionError


class CircuitState(StrEnum):
    """Where a breaker is. The last three are set only by an operator (`force`) and left only by `reset()`."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"
    METRICS_ONLY = "metrics_only"


_S = CircuitState
_OPERATOR = frozenset({_S.FORCED_OPEN, _S.DISABLED, _S.METRICS_ONLY})

TRANSITIONS: Mapping[CircuitState, frozenset[CircuitState]] = MappingProxyType(
    {
        _S.CLOSED: frozenset({_S.OPEN}) | _OPERATOR,
        _S.OPEN: frozenset({_S.HALF_OPEN, _S.CLOSED}) | _OPERATOR,
        _S.HALF_OPEN: frozenset({_S.CLOSED, _S.OPEN}) | _OPERATOR,
        _S.FORCED_OPEN: frozenset({_S.CLOSED}) | (_OPERATOR - {_S.FORCED_OPEN}),
        _S.DISABLED: frozenset({_S.CLOSED}) | (_OPERATOR - {_S.DISABLED}),
        _S.METRICS_ONLY: frozenset({_S.CLOSED}) | (_OPERATOR - {_S.METRICS_ONLY}),
    }
)
"""Every allowed (from, to) pair. OPEN/FORCED_OPEN/DISABLED/METRICS_ONLY -> CLOSED is `reset()`."""

OPERATOR_STATES = _OPERATOR


def check_transition(source: CircuitState, target: CircuitState) -> None:
    """Allow `source -> target` or raise.

    Raises:
        IllegalTransitionError: the pair is not in TRANSITIONS.
    """
    if target not in TRANSITIONS[source]:
        raise IllegalTransitionError(f"illegal transition {source.value} -> {target.value}")
