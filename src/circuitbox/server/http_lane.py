"""The HTTP upstream's fast lane: a POST of one `tools/call` of a published tool, answered past the SDK's transport.

For every POST the SDK's streamable HTTP transport builds a request object, validates the body as a JSON-RPC
message, hands it to the session's message loop and opens an SSE response whose event it routes back through two
memory streams: about seven tasks a call (the response, sse-starlette's four, the writer, the dispatcher's handler)
and half of the proxy's CPU under load. For a call of a published downstream tool none of that is needed: the lane
runs it through `Proxy.call` (catalog, guard, downstream: breaker, limits, deadlines, fallback and metrics all stay)
in the request's own task and writes the SSE response itself, byte for byte as the SDK writes it (the same headers,
built by the same `EventSourceResponse`, one `message` event with the answer dumped and sieved as the SDK's server
does, then the end of the stream; keep-alive comments while a call runs longer than sse-starlette's ping interval).

Nothing is weaker than the SDK's path: the lane sits inside the session manager, after the access guard (Host,
Origin, token), the malformed-message answers, the body limit, the era routing by protocol-version header and the
manager's session lookup with its credential check; it then runs the transport's own header checks (DNS-rebinding
settings, Accept, Content-Type) and the SDK's message validation before it takes anything, and counts the request
in the session's bookkeeping (idle countdown suspended while it runs, so idle close and the session cap's eviction
see it). A client that hangs up mid-call cancels the call (the breaker counts a cancelled call neither way).

Taken, like the stdio lane (lane.py) and only what it is sure of: a session whose client initialized in a handshake
era version, declared none of sampling, elicitation and roots (no downstream question can need the call's stream:
a question routed to it is refused, as on the SDK's path, see callers.py) and reaches the tool's server on the
shared connection; params of only `name`, `arguments` and `_meta` with no progress token; traces off; the SDK's SSE
mode (not its JSON-response mode). Everything else goes to the SDK as before, with the body it was sent.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

import anyio
import mcp_types as types
import pydantic_core
from mcp.server.streamable_http import CONTENT_TYPE_SSE, MCP_SESSION_ID_HEADER, check_accept_headers
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from sse_starlette.event import ServerSentEvent, ensure_bytes
from starlette.requests import Request

from circuitbox.observability import traces
from circuitbox.server._sdk_private import client_connection, post_headers_pass, request_in_flight
from circuitbox.server.lane import WIRE_VERSIONS, Answer, answer_bytes, answer_call, published, takeable_call
from circuitbox.server.sessions import declares_client_features

if TYPE_CHECKING:
    from circuitbox.server.proxy import Proxy

logger = logging.getLogger("circuitbox.http_lane")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PING_INTERVAL = EventSourceResponse.DEFAULT_PING_INTERVAL
SEPARATOR = EventSourceResponse.DEFAULT_SEPARATOR
END = {"type": "http.response.body", "body": b"", "more_body": False}


class _Caller:
    """A lane call as the proxy's routing reads a request: its client's session (identity and capabilities, for
    callers.py and sessions.py), its id and its protocol version."""

    __slots__ = ("protocol_version", "request_id", "session")

    def __init__(self, session: Any, request_id: types.RequestId, protocol_version: str) -> None:
        self.session = session
        self.request_id = request_id
        self.protocol_version = protocol_version


class _NoEvents:
    """The content of the `EventSourceResponse` the lane builds only for its headers."""

    def __aiter__(self) -> AsyncIterator[Any]:  # pragma: no cover - never iterated
        raise NotImplementedError


class HTTPLane:
    """Answers the POSTs it is sure of (`serve`); learns each session's client from the SDK's server (`observe`)."""

    def __init__(self, proxy: Proxy) -> None:
        self._proxy = proxy
        # HTTP session id -> a ServerSession of its client and the client's connection (forgotten at its end)
        self._sessions: dict[str, tuple[Any, Any]] = {}
        self._headers: WeakKeyDictionary[Any, list[tuple[bytes, bytes]]] = WeakKeyDictionary()
        self.enabled = True  # off: every request goes to the SDK (tests compare the two paths with it)
        self.taken = 0  # calls answered here (for tests and benchmarks)

    async def observe(self, ctx: Any, call_next: Any) -> Any:
        """Server middleware: remembers the client of each handshake-era HTTP session from its first message that
        reaches the SDK's server (its initialize), until the session ends."""
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            connection = client_connection(ctx.session)
            session_id = getattr(connection, "session_id", None)
            if connection is not None and session_id is not None and session_id not in self._sessions:
                self._sessions[session_id] = (ctx.session, connection)

                async def forget() -> None:
                    self._sessions.pop(session_id, None)

                connection.exit_stack.push_async_callback(forget)
        return await call_next(ctx)

    async def serve(self, transport: Any, scope: Message, receive: Receive, send: Send) -> Receive | None:
        """Answer a POST on the open session of `transport` when it is a call the lane takes, and return None; else
        return the `receive` the SDK must read the request from (the body, when the lane read it, replayed)."""
        client = self._client(transport)
        if client is None:
            return receive
        session, version = client
        request = Request(scope, receive)
        has_json, has_sse = check_accept_headers(request)
        if not (has_json and has_sse) or not await post_headers_pass(transport, request):
            return receive
        message = await receive()
        replay = _replayed(message, receive)
        if message["type"] != "http.request" or message.get("more_body", False):
            return replay
        taken = self._take(message.get("body", b""), session, version)
        if taken is None:
            return replay
        self.taken += 1
        with request_in_flight(transport):
            await self._answer(transport, receive, send, version, *taken)
        return None

    def _client(self, transport: Any) -> tuple[Any, str] | None:
        """(session, negotiated version) of the session's client when the lane may serve it, else None."""
        if not self.enabled or transport.is_json_response_enabled or transport.is_terminated or traces.active():
            return None
        idle = transport.idle_scope
        if idle is not None and idle.cancel_called:  # idled out: the SDK answers it as terminated
            return None
        known = self._sessions.get(transport.mcp_session_id)
        if known is None:
            return None
        session, connection = known
        version = connection.protocol_version
        if not connection.initialized.is_set() or version not in HANDSHAKE_PROTOCOL_VERSIONS:
            return None
        if declares_client_features(connection.client_capabilities):  # its calls' streams may carry questions
            return None
        return session, version

    def _take(self, body: bytes, session: Any, version: str) -> tuple[Any, ...] | None:
        """(server, caller, name, arguments, meta) of a call the lane answers, else None."""
        try:
            raw = pydantic_core.from_json(body)
        except ValueError:
            return None
        if not isinstance(raw, dict) or raw.get("method") != "tools/call":
            return None
        try:  # exactly as the transport validates a body
            message = types.jsonrpc_message_adapter.validate_python(raw, by_name=False)
        except ValidationError:
            return None
        if not isinstance(message, types.JSONRPCRequest):
            return None
        taken = takeable_call(message.params)
        if taken is None:
            return None
        name, arguments, meta = taken
        proxy = self._proxy
        if (meta and "progressToken" in meta) or not published(proxy, name):
            return None
        server = proxy.catalog.tools[name][0].server
        caller = _Caller(session, message.id, version)
        if proxy._has_own_link(server, caller):  # a connection of its own (sessions.py): the SDK's path opens it
            return None
        return server, caller, name, arguments, meta

    async def _answer(
        self,
        transport: Any,
        receive: Receive,
        send: Send,
        version: str,
        server: str,
        caller: _Caller,
        name: str,
        arguments: dict[str, Any] | None,
        meta: dict[str, Any] | None,
    ) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self._sse_headers(transport)})
        answer: Answer | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(_keep_alive, receive, send, tg.cancel_scope)
            # Known as the server's caller while it runs: a question the server sends meanwhile is refused (the client
            # declared none), and never routed to another client that has a call in flight there.
            with self._proxy.callers.calling(server, caller):
                answer = await answer_call(
                    self._proxy, caller.request_id, name, arguments, meta, version, wire=version in WIRE_VERSIONS
                )
            tg.cancel_scope.cancel()
        if answer is None:  # the client hung up: nothing more is sent, as sse-starlette sends nothing then
            return
        if not transport.is_terminated:  # a DELETE meanwhile ends the SDK's streams without their answers too
            event = ensure_bytes({"event": "message", "data": answer_bytes(answer).decode()}, SEPARATOR)
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send(END)

    def _sse_headers(self, transport: Any) -> list[tuple[bytes, bytes]]:
        """The headers of the transport's SSE answer to a POST: its own set, completed by sse-starlette as it does."""
        headers = self._headers.get(transport)
        if headers is None:
            own = {
                "Cache-Control": "no-cache, no-transform",
                "Connection": "keep-alive",
                "Content-Type": CONTENT_TYPE_SSE,
                MCP_SESSION_ID_HEADER: transport.mcp_session_id,
            }
            headers = self._headers[transport] = EventSourceResponse(content=_NoEvents(), headers=own).raw_headers
        return headers


async def _keep_alive(receive: Receive, send: Send, call: anyio.CancelScope) -> None:
    """While the call runs: a disconnect cancels it; a keep-alive comment goes out every ping interval, as
    sse-starlette sends them."""
    while True:
        with anyio.move_on_after(PING_INTERVAL):
            while (await receive())["type"] != "http.disconnect":
                pass
            call.cancel()
            return
        ping = ServerSentEvent(comment=f"ping - {datetime.now(UTC)}", sep=SEPARATOR)
        await send({"type": "http.response.body", "body": ensure_bytes(ping, SEPARATOR), "more_body": True})


def _replayed(first: Message, receive: Receive) -> Receive:
    """`receive`, with `first` (already read) given again first."""
    pending = [first]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay
