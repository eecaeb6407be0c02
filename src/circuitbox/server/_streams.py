"""Wrappers around the SDK transports' read streams: the two places where the proxy needs more than the SDK gives.

- `WatchedStream` (downstream side): the SDK's session ends its receive loop quietly when a transport reaches EOF
  (a stdio child died, an HTTP stream closed); pending requests fail, but nothing wakes the task that owns the
  connection. The wrapper sets an event instead, so the owner waits rather than polls.
- `AnswerMalformed` (upstream stdio side): the SDK hands a line that fails JSON-RPC validation to the session as an
  exception and the session only logs it, so a request with an id but (say) a string as `params` would never be
  answered. pydantic's error carries the parsed message, so the id is recoverable and answered here with -32600.

Each costs one extra method call per message; only failing lines pay for more.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

import anyio
import mcp_types as types
from mcp.shared.message import SessionMessage
from pydantic import ValidationError


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


def request_id_of(error: ValidationError) -> types.RequestId | None:
    """The id of the request a validation error is about, if the line was a JSON object with an id and method."""
    for detail in error.errors():
        data = detail.get("input")
        if isinstance(data, Mapping) and "method" in data and isinstance(data.get("id"), str | int):
            request_id: types.RequestId = data["id"]
            return request_id
    return None


class AnswerMalformed(_ReadStreamWrapper):
    """Malformed requests are answered on `write` with -32600; everything else passes."""

    def __init__(self, inner: Any, write: Any) -> None:
        super().__init__(inner)
        self._write = write

    async def receive(self) -> Any:
        while True:
            item = await self._inner.receive()
            if isinstance(item, ValidationError) and (request_id := request_id_of(item)) is not None:
                problem = "; ".join(f"{'.'.join(map(str, d['loc'][1:]))}: {d['msg']}" for d in item.errors()[:2])
                error = types.ErrorData(code=types.INVALID_REQUEST, message=f"Invalid request: {problem}")
                await self._write.send(SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=request_id, error=error)))
                continue
            return item
