"""`CircuitBreaker`: guards one dependency. The async API (`call()`, `@breaker`, fallbacks) on the permit protocol."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from types import CoroutineType
from typing import Any, ParamSpec, TypeVar

from circuitbox.breakers._core import _OPEN
from circuitbox.breakers._errors import CircuitOpenError
from circuitbox.breakers._permit import FAILURE, IGNORED, RELEASED, SUCCESS, Permit, Rejection
from circuitbox.breakers._protocol import BreakerProtocol

P = ParamSpec("P")
R = TypeVar("R")


class CircuitBreaker(BreakerProtocol):
    """Guards one dependency. Use `acquire()` on hot paths, or `await breaker.call(fn, ...)` / `@breaker`.

    `clock` is any () -> float of monotonic seconds (default `time.monotonic`); `rng` draws the jitter of open
    periods (pass `random.Random(seed)` for repeatable runs).
    """

    __slots__ = ()

    async def call(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await `fn(*args, **kwargs)` through the breaker and return its result.

        An exception of `excluded_exceptions` is recorded as ignored, any other `Exception` as a failure
        ("timeout" for TimeoutError, else "exception"); cancellation and other BaseExceptions release the
        permit. Every exception is re-raised.

        Raises:
            CircuitOpenError: the call was rejected and the config has no fallback (the fallback's result is
                returned otherwise).
        """
        permit: Permit | None = None
        if self._passing:
            # Same decision as acquire(), without building a Permit: this one never leaves this frame.
            generation = self._generation
            start = self._clock() if self._timed else None
        else:
            decision: Permit | Rejection | None = self._rejection
            # Open with its rejection already built and nobody listening: acquire() without the call.
            if decision is None or self._state is not _OPEN or self._listeners or self._clock() >= self._open_until:
                decision = self.acquire()
            if isinstance(decision, Rejection):
                # Inlined rather than a helper coroutine: a rejection must stay cheaper than a call.
                fallback = self._fallback
                if fallback is None:
                    raise CircuitOpenError(self.name, decision.state, decision.retry_after, decision.last_error)
                if self._listeners:
                    self.record_fallback()
                answer = fallback()
                # Cheaper than inspect.isawaitable (100+ ns on a plain value): known async, or a coroutine.
                if self._fallback_async or type(answer) is CoroutineType:
                    answer = await answer
                return answer  # type: ignore[no-any-return]
            permit = decision
            generation, start = permit._generation, permit._start
        try:
            result = await fn(*args, **kwargs)
        except self._excluded:
            self._settle(generation, start, permit, IGNORED, "", None)
            raise
        except Exception as exc:
            kind = "timeout" if isinstance(exc, TimeoutError) else "exception"
            self._settle(generation, start, permit, FAILURE, kind, exc)
            raise
        except BaseException:
            self._settle(generation, start, permit, RELEASED, "", None)
            raise
        fast = self._fast_window
        if fast is not None and generation == self._generation:
            self._consecutive = 0
            fast.success()
        else:
            self._settle(generation, start, permit, SUCCESS, "", None)
        return result

    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        """Use the breaker as a decorator on an async function.

        Raises:
            TypeError: `fn` is not an async function.
        """
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@breaker guards async functions; {fn!r} is not one")
        call = self.call

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            return await call(fn, *args, **kwargs)

        return guarded
