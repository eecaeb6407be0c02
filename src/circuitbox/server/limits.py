"""Bulkheads and rate limits: what a call waits for before it reaches its breaker.

`Slots` caps the calls in flight (a tool's `max_concurrent`, a server's `server_max_concurrent`), handing a freed
slot straight to the longest waiter; `TokenBucket` is a tool's `rate_limit`. A call that cannot have its slot or
token within `queue_timeout` is answered "busy" or "rate limited" with `retry_after`: neither is the downstream's
failure, so neither moves a breaker. Decisions are synchronous (no `await` between checking and taking); only the
waiting awaits.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import anyio

from circuitbox.config.policy import RateLimitPolicy

Clock = Callable[[], float]

BUSY = "busy"
RATE_LIMITED = "rate_limited"
REASONS = (BUSY, RATE_LIMITED)

_EWMA = 0.2  # weight of the newest call in the mean call duration that a "busy" answer's retry_after is based on


class Slots:
    """At most `limit` holders at once; waiters are served first come, first served."""

    __slots__ = ("_waiters", "inflight", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inflight = 0
        self._waiters: deque[anyio.Event] = deque()

    def try_take(self) -> bool:
        if self.inflight < self.limit and not self._waiters:
            self.inflight += 1
            return True
        return False

    async def take(self, timeout: float) -> bool:
        """A slot within `timeout` seconds (False: none freed in time)."""
        if self.try_take():
            return True
        if timeout <= 0:
            return False
        event = anyio.Event()
        self._waiters.append(event)
        waited = False
        try:
            with anyio.move_on_after(timeout):
                await event.wait()
            waited = True
        finally:
            if not event.is_set():
                self._waiters.remove(event)
            elif not waited:  # handed a slot, but cancelled before it could use it: the slot goes on
                self.release()
        return event.is_set()

    def resize(self, limit: int) -> None:
        """A new cap; room it makes goes to waiters at once (holders over a lowered cap finish first)."""
        self.limit = limit
        while self._waiters and self.inflight < self.limit:
            self.inflight += 1
            self._hand_over()

    def _hand_over(self) -> None:
        """Give one taken slot to the first waiter (`inflight` stays); a waiter leaves the queue when it is handed a
        slot or gives up, so every one in it is still waiting."""
        self._waiters.popleft().set()

    def release(self) -> None:
        if not self._waiters or self.inflight > self.limit:  # nobody waits, or the cap was lowered meanwhile
            self.inflight -= 1
        else:
            self._hand_over()

    @property
    def waiting(self) -> int:
        return len(self._waiters)


class TokenBucket:
    """`calls` tokens per `per` seconds, at most `burst` saved up; a token can be reserved ahead of time."""

    __slots__ = ("_clock", "_rate", "_stamp", "capacity", "tokens")

    def __init__(self, limit: RateLimitPolicy, clock: Clock) -> None:
        self._rate = limit.calls / limit.per
        self.capacity = float(limit.burst)
        self.tokens = self.capacity
        self._clock = clock
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def try_take(self) -> bool:
        """A token now, if there is one (the hot path: no tuple, no wait computed)."""
        now = self._clock()
        tokens = self.tokens + (now - self._stamp) * self._rate
        if tokens > self.capacity:
            tokens = self.capacity
        self._stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False

    def take(self, max_wait: float) -> tuple[bool, float]:
        """(True, wait): a token is yours once `wait` seconds have passed (0: now); (False, retry_after): none
        within `max_wait`, and when the next one comes."""
        self._refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True, 0.0
        wait = (1.0 - self.tokens) / self._rate
        if wait <= max_wait:
            self.tokens -= 1.0  # reserved: later callers queue behind it
            return True, wait
        return False, wait

    def refund(self) -> None:
        """Give back a token whose call never reached the downstream (its circuit rejected it)."""
        self.tokens = min(self.capacity, self.tokens + 1.0)


class ToolLimits:
    """The limits of one (server, tool), its in-flight count and how often it was limited, for the metrics."""

    __slots__ = (
        "bucket",
        "gated",
        "inflight",
        "limited",
        "mean_duration",
        "queue_timeout",
        "rate",
        "server_slots",
        "slots",
    )

    def __init__(self) -> None:
        self.slots: Slots | None = None
        self.bucket: TokenBucket | None = None
        self.rate: RateLimitPolicy | None = None
        self.server_slots: Slots | None = None
        self.queue_timeout = 0.0
        self.gated = False
        """Whether a call waits for anything (a slot, a token) before its breaker; set by the guard."""
        self.inflight = 0
        self.limited = dict.fromkeys(REASONS, 0)
        self.mean_duration: float | None = None

    def busy_retry_after(self) -> float:
        """When a slot is likely free again: the mean duration of this tool's recent calls (1 s before any)."""
        return self.mean_duration if self.mean_duration is not None else 1.0

    def finished(self, duration: float) -> None:
        mean = self.mean_duration
        self.mean_duration = duration if mean is None else mean + _EWMA * (duration - mean)
