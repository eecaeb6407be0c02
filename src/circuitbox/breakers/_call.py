"""The async API on top of the permit protocol: `await breaker.call(fn, ...)`, `@breaker`, fallbacks."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from types import CoroutineType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from circuitbox.breakers._errors import CircuitOpenError
from circuitbox.breakers._permit import Permit, Rejection

if TYPE_CHECKING:
    from circuitbox.breakers._clock import Clock
    from circuitbox.breakers._window import Window

P = ParamSpec("P")
R = TypeVar("R")


class AsyncCallMixin:
    """`call()` and the decorator; mixed into CircuitBreaker (kept apart to keep modules small)."""

    __slots__ = ()

    if TYPE_CHECKING:
        name: str
        _clock: Clock
        _consecutive: int
        _excluded: tuple[type[BaseException], ...]
        _fallback: Callable[[], Any] | None
        _fallback_async: bool
        _listeners: tuple[Callable[[Any], None], ...]
        _fast_record: bool
        _generation: int
        _passing: bool
        _timed: bool
        _window: Window

        def acquire(self) -> Permit | Rejection: ...
        def record_fallback(self) -> None: ...

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
            # Same decisions as acquire(), but the Permit is only built if the outcome needs the general path.
            generation = self._generation
            start = self._clock() if self._timed else None
        else:
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
            (permit or Permit(self, generation, start)).ignored()  # type: ignore[arg-type]
            raise
        except Exception as exc:
            kind = "timeout" if isinstance(exc, TimeoutError) else "exception"
            (permit or Permit(self, generation, start)).failure(kind, exc)  # type: ignore[arg-type]
            raise
        except BaseException:
            (permit or Permit(self, generation, start)).release()  # type: ignore[arg-type]
            raise
        if permit is None and self._fast_record and generation == self._generation:
            self._consecutive = 0  # type: ignore[misc]  # a slot of CircuitBreaker
            self._window.success()
        else:
            (permit or Permit(self, generation, start)).success()  # type: ignore[arg-type]
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
