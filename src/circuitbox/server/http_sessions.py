"""The HTTP upstream's sessions: the SDK's session manager, except that a client is never locked out by others'
idle sessions.

The SDK answers 503 to a new client while `max_sessions` sessions are open, however long they have been idle, so a
loop of clients that never close their sessions locks everyone out until the idle timeout. Here, past the cap, the
session idle the longest (no request in flight and no stream open, for the longest time) is closed to admit the new
one; 503 remains only while every open session is busy. The SDK offers no public hook for admission, so this
overrides its `_admit_session` and reads its session table (`tests/proxy/test_http_sessions.py` fails when a
release changes them).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.routing import Route

from circuitbox.config.model import MAX_MESSAGE_BYTES
from circuitbox.server._sdk_private import session_transport
from circuitbox.server.http_lane import HTTPLane

logger = logging.getLogger("circuitbox.http")


class EvictingSessionManager(StreamableHTTPSessionManager):
    """`StreamableHTTPSessionManager` that closes the longest-idle session instead of refusing a new client, and
    lets the HTTP lane (http_lane.py) answer the POSTs of open sessions it is sure of."""

    lane: HTTPLane | None = None

    async def _handle_stateful_request(self, scope: Any, receive: Any, send: Any) -> None:
        lane = self.lane
        if lane is not None and scope["method"] == "POST":
            transport = self._open_session(scope)
            if transport is not None:
                receive = await lane.serve(transport, scope, receive, send)
                if receive is None:
                    return
        await super()._handle_stateful_request(scope, receive, send)

    def _open_session(self, scope: Any) -> Any | None:
        """The transport of the request's session when it is open and was opened with the request's credential."""
        header = MCP_SESSION_ID_HEADER.encode()
        session_id = next((v.decode("latin-1") for k, v in scope["headers"] if k == header), None)
        if session_id is None:
            return None
        user = scope.get("user")
        requestor = authorization_context(user) if isinstance(user, AuthenticatedUser) else None
        return session_transport(self, session_id, requestor)

    def _admit_session(self, requestor: Any) -> Any:
        if self.max_sessions is not None and len(self._server_instances) >= self.max_sessions:
            self._evict_longest_idle()
        return super()._admit_session(requestor)

    def _evict_longest_idle(self) -> None:
        # An idle session's scope has a finite deadline (when it would idle out); a busy one's is infinite.
        idle = [
            (transport.idle_scope.deadline, session_id)
            for session_id, transport in self._server_instances.items()
            if transport.idle_scope is not None
            and transport.idle_scope.deadline != math.inf
            and not transport.idle_scope.cancel_called
        ]
        if not idle:
            return
        _, session_id = min(idle)
        transport = self._server_instances.pop(session_id)
        self._session_owners.pop(session_id, None)
        logger.warning(
            "%d HTTP sessions open (http.max_sessions): closed the longest-idle one to admit a new client",
            self.max_sessions,
        )
        assert transport.idle_scope is not None
        transport.idle_scope.cancel()  # its server task ends and terminates the transport: its id answers 404


def mcp_http_app(
    server: Server[Any],
    *,
    path: str,
    security: TransportSecuritySettings,
    max_sessions: int,
    session_idle_timeout: float,
    max_request_body_size: int = MAX_MESSAGE_BYTES,
    lane: HTTPLane | None = None,
) -> Starlette:
    """What `Server.streamable_http_app()` builds (without auth, which circuitbox does itself), on our manager;
    with `lane`, the calls it is sure of are answered past the SDK's transport."""
    manager = EvictingSessionManager(
        app=server,
        security_settings=security,
        max_sessions=max_sessions,
        session_idle_timeout=session_idle_timeout,
        max_request_body_size=max_request_body_size,  # the SDK's default is 4 MiB: ours is max_message_bytes
    )
    if lane is not None:
        manager.lane = lane
        server.middleware.insert(0, lane.observe)  # outermost: it sees every session's first message
    return Starlette(routes=[Route(path, endpoint=StreamableHTTPASGIApp(manager))], lifespan=lambda _: manager.run())
