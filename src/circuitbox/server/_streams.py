"""Wrappers around the SDK transports' read streams: the two places where the proxy needs more than the SDK gives.

- `WatchedStream` (downstream side): the SDK's session ends its receive loop quietly when a transport reaches EOF
  (a stdio child died, an HTTP stream closed); pending requests fail, but nothing wakes the task that owns the
  connection. The wrapper sets an event instead, so the owner waits rather than polls.
- `AnswerMalformed` (upstream stdio side): the SDK hands a line that fails JSON-RPC validation to the session as an
  exception and the session only logs it, so a request with an id but (say) a string as `params` would never be
  answered: it gets the spec's error here (-32700 or -32600, by `server/malformed.py`).

Each costs one extra method call per message; only failing lines pay for more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Self

import anyio
from mcp.shared.message import SessionMessage

from circuitbox.server.malformed import describe

logger = logging.getLogger("circuitbox")


def offer_to(hook: Callable[[Any], bool] | None, item: Any, log: logging.Logger, failure: str) -> bool:
    """Whether a reader's hook (a lane's `intercept`, `intercept_line`) took `item`. A hook that raises is logged
    with `failure` and the item goes on as usual: a bug in a hook must not end the reader."""
    if hook is None:
        return False
    try:
        return hook(item)
    except Exception:
        log.exception(failure)
        return False


class _ReadStreamWrapper:
    """Delegates everything to `inner`; subclasses override `receive`."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def receive(self) -> Any:
        return await self._inner.receive()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class WatchedStream(_ReadStreamWrapper):
    """Sets `ended` once the stream is exhausted, closed or broken."""

    def __init__(self, inner: Any, ended: anyio.Event) -> None:
        super().__init__(inner)
        self._ended = ended

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._ended.set()
            raise

    async def aclose(self) -> None:
        self._ended.set()
        await self._inner.aclose()


class AnswerMalformed(_ReadStreamWrapper):
    """Malformed upstream messages get the spec's JSON-RPC error on `write` (server/malformed.py says which);
    those the spec answers not (a broken notification or response) are dropped with a warning."""

    def __init__(self, inner: Any, write: Any) -> None:
        super().__init__(inner)
        self._write = write

    async def receive(self) -> Any:
        while True:
            item = await self._inner.receive()
            refusal = describe(item)
            if refusal is None:
                return item
            if refusal.answer is None:
                logger.warning("stdio: %s", refusal.reason)
                continue
            logger.warning("stdio: answered a malformed message with %d: %s", refusal.answer.error.code, refusal.reason)
            await self._write.send(SessionMessage(refusal.answer))
