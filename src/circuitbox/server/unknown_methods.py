"""Methods circuitbox does not know, from the client: forwarded as they came when they can be routed.

A request or notification whose method is neither in the MCP spec nor handled by circuitbox (a newer method, an
extension's) carries no name to route it by, so it can go only where there is no choice: to the one server
circuitbox fronts. That server's own answer comes back, result or error, as directly. With several servers a
request gets the JSON-RPC error for an unknown method (-32601) and a notification is dropped with a warning; neither
is ever dropped silently.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, cast

import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp_types.methods import SPEC_CLIENT_METHODS, SPEC_CLIENT_NOTIFICATION_METHODS
from pydantic import BaseModel, ConfigDict

from circuitbox.server import request_meta

logger = logging.getLogger("circuitbox.unknown_methods")

SPEC_METHODS = frozenset(SPEC_CLIENT_METHODS) | frozenset(SPEC_CLIENT_NOTIFICATION_METHODS)


class ForwardedResult(BaseModel):
    """Whatever the server answered, every field kept."""

    model_config = ConfigDict(extra="allow")


Forward = Callable[[str, Any, type[ForwardedResult], Any], Coroutine[Any, Any, ForwardedResult]]


class ForwardUnknownMethods:
    """`Server.middleware` that sends unknown methods on to the only server, if there is one.

    `only_server` names that server (None when there are several); `forward` sends a request to it, bounded, and
    raises its error as `MCPError`; `session_of` is its live session, for notifications; `ready` waits (bounded)
    until every server's first connection attempt has ended, as the proxy's other requests do.
    """

    def __init__(
        self,
        server: Any,
        only_server: Callable[[], str | None],
        forward: Forward,
        session_of: Callable[[str], Any],
        ready: Callable[[], Awaitable[None]],
    ) -> None:
        self._ready = ready
        self._server = server
        self._only_server = only_server
        self._forward = forward
        self._session_of = session_of

    def _known(self, method: str, notification: bool) -> bool:
        if method in SPEC_METHODS:  # first: the hot path is tools/call
            return True
        find = self._server.get_notification_handler if notification else self._server.get_request_handler
        return find(method) is not None

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        notification = ctx.request_id is None
        if self._known(ctx.method, notification):
            return await call_next(ctx)
        target = self._only_server()
        if target is not None:
            await self._ready()  # a client may send it before the server is up, as it may call a tool
        if notification:
            session = self._session_of(target) if target is not None else None
            if session is None:
                logger.warning("dropped the client's %s: no single connected server to send it to", ctx.method)
                return None
            message = types.Notification[Any, str](method=ctx.method, params=_for_the_connection(ctx.params))
            await session.send_notification(cast(Any, message))
            return None
        if target is None:
            return await call_next(ctx)  # the SDK's -32601: nowhere to route it
        request = types.Request[Any, str](method=ctx.method, params=_for_the_connection(ctx.params))
        result = await self._forward(target, request, ForwardedResult, ctx)
        return result.model_dump(by_alias=True, mode="json", exclude_none=True)


def _for_the_connection(params: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The params for circuitbox's handshake-era connection to the server: a 2026-era client's envelope (protocol
    version, client info and capabilities in `_meta`) is its own hop's, and such a connection refuses any request
    that carries it (-32600) where the server, asked directly, would answer for the method itself."""
    if params is None or "_meta" not in params:
        return None if params is None else dict(params)
    kept = {key: value for key, value in params.items() if key != "_meta"}
    meta = request_meta.forwarded(params["_meta"] if isinstance(params["_meta"], Mapping) else None)
    return kept | ({"_meta": meta} if meta else {})
