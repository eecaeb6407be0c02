"""Which upstream client a downstream's own request (sampling, elicitation, roots) belongs to.

A downstream over a shared connection does not say which call its request serves (stdio has no per-request
channel), so it goes to the only upstream client with a call in flight to that server, on that call's own channel
(over HTTP, the stream of the POST that carries the call). With no such client, or several, the downstream gets an
error and the reason is logged: a question must never reach a client that did not cause it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import mcp_types as types
from mcp import MCPError
from mcp.shared.message import ServerMessageMetadata

from circuitbox.server._sdk_private import client_connection

logger = logging.getLogger("circuitbox.callers")

_RESULTS: dict[type[Any], type[Any]] = {
    types.CreateMessageRequest: types.CreateMessageResult,
    types.ElicitRequest: types.ElicitResult,
    types.ListRootsRequest: types.ListRootsResult,
}


class Callers:
    """The upstream requests in flight per downstream server, by the client connection they came on."""

    def __init__(self) -> None:
        self._in_flight: dict[str, list[Any]] = {}

    @contextmanager
    def calling(self, server: str, ctx: Any) -> Iterator[None]:
        calls = self._in_flight.setdefault(server, [])
        calls.append(ctx)
        try:
            yield
        finally:
            calls.remove(ctx)
            if not calls:
                del self._in_flight[server]

    def caller(self, server: str) -> Any | None:
        """The one call whose client may answer, or None when no client or several have calls in flight."""
        calls = self._in_flight.get(server, [])
        clients = {id(client_connection(ctx.session) or ctx.session) for ctx in calls}
        return calls[-1] if len(clients) == 1 else None

    async def relay(self, server: str, request: Any, only_client: Any = None) -> Any:
        """Ask the calling client; with no call in flight, `only_client` (a connection) when it is the only one."""
        ctx = self.caller(server)
        if ctx is None and only_client is not None and server not in self._in_flight:
            return await _ask_connection(only_client, server, request)
        if ctx is None:
            count = len(self._in_flight.get(server, []))
            reason = "no client has a call in flight to it" if not count else "several clients have calls in flight"
            logger.warning("server %r sent %s, which cannot be routed: %s", server, request.method, reason)
            return types.ErrorData(
                code=types.INTERNAL_ERROR,
                message=f"circuitbox cannot route {request.method} to a client: {reason}",
            )
        try:
            return await ctx.session.send_request(
                request, _RESULTS[type(request)], metadata=ServerMessageMetadata(related_request_id=ctx.request_id)
            )
        except MCPError as exc:
            return exc.error
        except Exception as exc:
            logger.warning("relaying %s from server %r failed: %s", request.method, server, exc)
            return types.ErrorData(code=types.INTERNAL_ERROR, message=f"relaying {request.method} failed: {exc}")


async def _ask_connection(connection: Any, server: str, request: Any) -> Any:
    data = request.model_dump(by_alias=True, mode="json", exclude_none=True)
    try:
        raw = await connection.outbound.send_raw_request(data["method"], data.get("params"), None)
        return _RESULTS[type(request)].model_validate(raw, by_name=False)
    except MCPError as exc:
        return exc.error
    except Exception as exc:
        logger.warning("relaying %s from server %r failed: %s", request.method, server, exc)
        return types.ErrorData(code=types.INTERNAL_ERROR, message=f"relaying {request.method} failed: {exc}")
