"""Sliding windows of call outcomes: the last N calls, or the calls of the last N seconds.

Both keep running totals and subtract what they evict, so recording and reading are O(1); neither allocates
per call.
"""

from __future__ import annotations

import math

# One byte per call in a count window: 0 = empty slot, else CALL | FAILED? | SLOW?.
CALL, FAILED, SLOW = 1, 2, 4


class CountWindow:
    """The outcomes of the last `size` calls in a bytearray ring (one byte per call)."""

    __slots__ = ("_pos", "_ring", "_size", "calls", "failures", "slow")

    def __init__(self, size: int) -> None:
        self._ring = bytearray(size)
        self._size = size
        self._pos = 0
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def advance(self, now: float) -> None:
        """Nothing ages out of a count window with time."""

    def success(self) -> None:
        """Record a plain (not slow) success: the hot path, so it is `record` specialised."""
        pos = self._pos
        ring = self._ring
        old = ring[pos]
        if old != CALL:
            if old:
                if old & FAILED:
                    self.failures -= 1
                if old & SLOW:
                    self.slow -= 1
                ring[pos] = CALL
            else:
                self.calls += 1
                ring[pos] = CALL
        pos += 1
        self._pos = 0 if pos == self._size else pos

    def record(self, code: int, now: float) -> None:
        """Record one call; `code` is CALL with FAILED and/or SLOW or-ed in."""
        pos = self._pos
        ring = self._ring
        old = ring[pos]
        if old:
            if old & FAILED:
                self.failures -= 1
            if old & SLOW:
                self.slow -= 1
        else:
            self.calls += 1
        ring[pos] = code
        if code & FAILED:
            self.failures += 1
        if code & SLOW:
            self.slow += 1
        pos += 1
        self._pos = 0 if pos == self._size else pos

    def clear(self) -> None:
        """Forget every call."""
        self._ring = bytearray(self._size)
        self._pos = self.calls = self.failures = self.slow = 0


class TimeWindow:
    """The outcomes of the last `seconds` in a ring of buckets `width` seconds wide, on the breaker's clock.

    The window spans the current bucket and the ones before it: between `seconds - width` and `seconds` of
    history. Buckets are evicted lazily when time moves past them; a gap longer than the window costs one pass
    over the ring.
    """

    __slots__ = ("_b_calls", "_b_failures", "_b_slow", "_head", "_n", "_width", "calls", "failures", "slow")

    def __init__(self, seconds: float, width: float) -> None:
        self._width = width
        self._n = max(1, math.ceil(seconds / width - 1e-9))
        self._b_calls = [0] * self._n
        self._b_failures = [0] * self._n
        self._b_slow = [0] * self._n
        self._head: int | None = None  # absolute index (now // width) of the newest bucket
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def advance(self, now: float) -> None:
        """Evict the buckets that time has moved past."""
        idx = int(now // self._width)
        head = self._head
        if head is None or idx - head >= self._n:
            if self.calls:
                self.clear()
            self._head = idx
            return
        if idx <= head:
            return
        b_calls, b_failures, b_slow, n = self._b_calls, self._b_failures, self._b_slow, self._n
        for k in range(head + 1, idx + 1):
            j = k % n
            if b_calls[j]:
                self.calls -= b_calls[j]
                self.failures -= b_failures[j]
                self.slow -= b_slow[j]
                b_calls[j] = b_failures[j] = b_slow[j] = 0
        self._head = idx

    def record(self, code: int, now: float) -> None:
        """Record one call that ended at `now`; `code` is CALL with FAILED and/or SLOW or-ed in."""
        self.advance(now)
        j = int(now // self._width) % self._n
        self._b_calls[j] += 1
        self.calls += 1
        if code & FAILED:
            self._b_failures[j] += 1
            self.failures += 1
        if code & SLOW:
            self._b_slow[j] += 1
            self.slow += 1

    def clear(self) -> None:
        """Forget every call (one pass over the ring)."""
        for ring in (self._b_calls, self._b_failures, self._b_slow):
            ring[:] = [0] * self._n
        self.calls = self.failures = self.slow = 0


Window = CountWindow | TimeWindow
