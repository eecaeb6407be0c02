"""stdio front end details: answer malformed requests instead of dropping them.

The SDK's stdio transport hands a line that fails JSON-RPC validation to the session as an exception, and the
session only logs it, so a request with an id but (say) a string as `params` would never get an answer and the
agent would wait forever. pydantic's error carries the parsed message, so the id is recoverable: answer it with
-32600 right here. Only failing lines pay for this.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import mcp_types as types
from mcp.shared.message import SessionMessage
from pydantic import ValidationError


def request_id_of(error: ValidationError) -> types.RequestId | None:
    """The id of the request a validation error is about, if the line was a JSON object with an id and method."""
    for detail in error.errors():
        data = detail.get("input")
        if isinstance(data, Mapping) and "method" in data and isinstance(data.get("id"), str | int):
            request_id: types.RequestId = data["id"]
            return request_id
    return None


class AnswerMalformed:
    """Wraps the transport's read stream; malformed requests are answered on `write`, everything else passes."""

    def __init__(self, read: Any, write: Any) -> None:
        self._read = read
        self._write = write

    def __getattr__(self, name: str) -> Any:
        return getattr(self._read, name)

    async def receive(self) -> Any:
        while True:
            item = await self._read.receive()
            if isinstance(item, ValidationError) and (request_id := request_id_of(item)) is not None:
                problem = "; ".join(f"{'.'.join(map(str, d['loc'][1:]))}: {d['msg']}" for d in item.errors()[:2])
                error = types.ErrorData(code=types.INVALID_REQUEST, message=f"Invalid request: {problem}")
                await self._write.send(SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=request_id, error=error)))
                continue
            return item

    def __aiter__(self) -> AnswerMalformed:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> AnswerMalformed:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._read.aclose()
