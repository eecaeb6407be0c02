"""Safe retries: which tools may be tried again, how long to wait, and the budget that stops a retry storm.

A retry is safe only for a tool that says it has no side effects (`readOnlyHint`) or that repeating it changes
nothing more (`idempotentHint`), or that the config declares `idempotent`; and only after a timeout or a transport
error, where the downstream may never have acted. Each attempt goes through the breaker like any call, so an open
circuit stops the retries.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import mcp_types as types

from circuitbox.config.policy import RetryPolicy, ToolPolicy

RETRYABLE = frozenset({"timeout", "transport"})
"""Failure kinds after which the downstream may not have acted at all."""

BUDGET_WINDOW = 10
"""Seconds over which the budget compares retries with calls (one bucket per second)."""

BUDGET_FLOOR = 3
"""Retries allowed per window whatever the traffic: a tool called rarely may still retry."""


def may_retry(policy: ToolPolicy, tool: types.Tool | None) -> RetryPolicy | None:
    """The retry policy of a call of `tool`, or None when it must not be retried."""
    retry = policy.retry
    if retry is None or retry.attempts < 2:
        return None
    if policy.idempotent:
        return retry
    hints = tool.annotations if tool is not None else None
    if hints is not None and (hints.read_only_hint or hints.idempotent_hint):
        return retry
    return None


def is_read_only(tool: types.Tool | None) -> bool:
    return bool(tool is not None and tool.annotations is not None and tool.annotations.read_only_hint)


def backoff(retry: RetryPolicy, retry_number: int, rng: Callable[[float, float], float] | None = None) -> float:
    """Seconds to wait before retry `retry_number` (1 for the first): full jitter, uniformly 0 up to
    `backoff` x 2^(n-1), capped at `max_backoff`."""
    return (rng or random.uniform)(0.0, min(retry.max_backoff, retry.backoff * 2 ** (retry_number - 1)))


class RetryBudget:
    """Retries of one tool in the last `BUDGET_WINDOW` seconds stay at most `ratio` x its calls there plus
    `BUDGET_FLOOR`. Counts live in one-second buckets: O(1) memory, O(window) per check."""

    __slots__ = ("_calls", "_clock", "_retries", "_stamps", "ratio")

    def __init__(self, ratio: float, clock: Callable[[], float]) -> None:
        self.ratio = ratio
        self._clock = clock
        self._calls = [0] * BUDGET_WINDOW
        self._retries = [0] * BUDGET_WINDOW
        self._stamps = [-1] * BUDGET_WINDOW

    def _slot(self) -> int:
        second = math.floor(self._clock())
        slot = second % BUDGET_WINDOW
        if self._stamps[slot] != second:  # a bucket from an older window: start it afresh
            self._stamps[slot], self._calls[slot], self._retries[slot] = second, 0, 0
        return slot

    def _totals(self) -> tuple[int, int]:
        oldest = math.floor(self._clock()) - BUDGET_WINDOW
        live = [i for i, stamp in enumerate(self._stamps) if stamp > oldest]
        return sum(self._calls[i] for i in live), sum(self._retries[i] for i in live)

    def called(self) -> None:
        """A call arrived (its first attempt)."""
        self._calls[self._slot()] += 1

    def allows(self) -> bool:
        """Whether one more retry stays within the budget."""
        self._slot()
        calls, retries = self._totals()
        return retries + 1 <= self.ratio * calls + BUDGET_FLOOR

    def spent(self) -> None:
        """A retry was sent."""
        self._retries[self._slot()] += 1
