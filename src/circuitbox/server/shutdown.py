"""Shutdown without loss: the calls in flight, so that SIGTERM / SIGINT can let them finish and answer the rest.

`Drain.track()` wraps every call that reaches a downstream. `Drain.close(timeout)` refuses new calls (each is
answered with an error at once), waits up to `timeout` for the calls in flight, then cancels what is left; each
cancelled call is still answered, with an error saying why, before the front end stops.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import anyio

SHUTTING_DOWN = "circuitbox is shutting down: the call was not made"
ANSWER_GRACE = 2.0  # after cancelling the calls left, how long they get to send their error answers


class Drain:
    """The calls in flight of one proxy."""

    def __init__(self) -> None:
        self.closing = False
        self._scopes: set[anyio.CancelScope] = set()
        self._idle = anyio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return len(self._scopes)

    @contextmanager
    def track(self) -> Iterator[anyio.CancelScope]:
        """Run one call; the scope yielded is cancelled if shutdown cuts it short (`cancelled_caught` then)."""
        scope = anyio.CancelScope()
        if not self._scopes:
            self._idle = anyio.Event()
        self._scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._scopes.discard(scope)
            if not self._scopes:
                self._idle.set()

    async def close(self, timeout: float) -> int:
        """Refuse new calls, let those in flight finish for up to `timeout` seconds, then cancel the rest and give
        them `ANSWER_GRACE` to answer. Returns how many were cancelled."""
        self.closing = True
        with anyio.move_on_after(timeout):
            await self._idle.wait()
        left = list(self._scopes)
        for scope in left:
            scope.cancel()
        with anyio.move_on_after(ANSWER_GRACE):
            await self._idle.wait()
        return len(left)
