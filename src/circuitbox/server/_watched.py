"""A read stream that tells its owner when the connection behind it has ended.

The SDK's session ends its receive loop quietly when a transport reaches EOF (a stdio child died, an HTTP stream
closed): pending requests fail, but nothing wakes the task that owns the connection. Wrapping the transport's read
stream lets the owner wait on an event instead of polling, at no cost per message beyond one method call.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import anyio


class WatchedStream:
    """Delegates to `inner`; sets `ended` once the stream is exhausted, closed or broken."""

    def __init__(self, inner: Any, ended: anyio.Event) -> None:
        self._inner = inner
        self._ended = ended

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._ended.set()
            raise

    def __aiter__(self) -> WatchedStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self._ended.set()
        await self._inner.aclose()

    async def __aenter__(self) -> WatchedStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
