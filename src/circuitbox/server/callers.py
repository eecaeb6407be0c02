"""Which upstream client a downstream's own request (sampling, elicitation, roots) belongs to.

A downstream over a shared connection does not say which call its request serves (stdio has no per-request
channel), so it goes to the only upstream client with a call in flight to that server, on that call's own channel
(over HTTP, the stream of the POST that carries the call). With no such client, or several, the downstream gets an
error and the reason is logged: a question must never reach a client that did not cause it.

A URL-mode elicitation ends later with `notifications/elicitation/complete`, outside any call: it goes to the client
that was asked, remembered by the elicitation's id (the most recent 1,024 per proxy, so ids that never complete
cannot grow without bound).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import mcp_types as types
from mcp import MCPError
from mcp.shared.message import ServerMessageMetadata

from circuitbox.server._sdk_private import client_connection
from circuitbox.server.relay import send_to_client
from circuitbox.server.sessions import undeclared

logger = logging.getLogger("circuitbox.callers")

MAX_PENDING_URL_ELICITATIONS = 1024

_RESULTS: dict[type[Any], type[Any]] = {
    types.CreateMessageRequest: types.CreateMessageResult,
    types.ElicitRequest: types.ElicitResult,
    types.ListRootsRequest: types.ListRootsResult,
}


class Callers:
    """The upstream requests in flight per downstream server, by the client connection they came on."""

    def __init__(self) -> None:
        self._in_flight: dict[str, list[Any]] = {}
        self._url_elicitations: OrderedDict[tuple[str, str], Any] = OrderedDict()

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
            refused = undeclared(only_client.client_capabilities, server, request)
            if refused is not None:
                return refused
            self._remember_url_elicitation(server, request, only_client)
            return await _ask_connection(only_client, server, request)
        if ctx is None:
            count = len(self._in_flight.get(server, []))
            reason = "no client has a call in flight to it" if not count else "several clients have calls in flight"
            logger.warning("server %r sent %s, which cannot be routed: %s", server, request.method, reason)
            return types.ErrorData(
                code=types.INTERNAL_ERROR,
                message=f"circuitbox cannot route {request.method} to a client: {reason}",
            )
        refused = undeclared(ctx.session.client_capabilities, server, request)
        if refused is not None:
            return refused
        self._remember_url_elicitation(server, request, client_connection(ctx.session))
        try:
            return await ctx.session.send_request(
                request, _RESULTS[type(request)], metadata=ServerMessageMetadata(related_request_id=ctx.request_id)
            )
        except MCPError as exc:
            return exc.error
        except Exception as exc:
            logger.warning("relaying %s from server %r failed: %s", request.method, server, exc)
            return types.ErrorData(code=types.INTERNAL_ERROR, message=f"relaying {request.method} failed: {exc}")

    def _remember_url_elicitation(self, server: str, request: Any, connection: Any) -> None:
        params = getattr(request, "params", None)
        if isinstance(params, types.ElicitRequestURLParams) and params.elicitation_id and connection is not None:
            self._url_elicitations[(server, params.elicitation_id)] = connection
            while len(self._url_elicitations) > MAX_PENDING_URL_ELICITATIONS:
                self._url_elicitations.popitem(last=False)

    async def elicitation_complete(self, server: str, params: dict[str, Any]) -> None:
        """A URL elicitation finished out of band: tell the client that was asked, and only that one."""
        connection = self._url_elicitations.pop((server, str(params.get("elicitationId"))), None)
        if connection is None:
            logger.warning(
                "server %r sent notifications/elicitation/complete for %r, which no client was asked: dropped",
                server,
                params.get("elicitationId"),
            )
            return
        await send_to_client(connection, "notifications/elicitation/complete", params)


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
