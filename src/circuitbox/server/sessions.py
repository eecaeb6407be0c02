"""Per-client downstream connections (`"session": "per_client"`, or `"auto"` when it calls for one).

An upstream HTTP session that gets one has a downstream connection of its own to that server, opened on its first
request there and closed when the upstream session ends: the SDK unwinds the upstream connection's exit stack when
its session is deleted, idles out or breaks. What that downstream asks (sampling, elicitation, roots) and tells
(log messages, resource updates) reaches that client only, and what the client sets there (log level,
subscriptions) stays on its own connection. It is offered exactly the capabilities the client declared. Breakers
stay per (server, tool), shared by every client. At most `max_sessions` such connections per server.

`"auto"` gives one to a stdio downstream's clients that declare sampling, elicitation or roots: a stdio server cannot
say which call its question belongs to, so over a shared connection it could reach the wrong client. The stdio
upstream (one client) and 2026-era requests (no session) always use the shared connection.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import mcp_types as types
from mcp import MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from circuitbox.config.model import MAX_MESSAGE_BYTES
from circuitbox.server._sdk_private import client_connection
from circuitbox.server.downstream import Backoff, Downstream

if TYPE_CHECKING:
    from circuitbox.config.load import ServerConfig

logger = logging.getLogger("circuitbox.sessions")

_RESULTS: dict[type[Any], type[Any]] = {
    types.CreateMessageRequest: types.CreateMessageResult,
    types.ElicitRequest: types.ElicitResult,
    types.ListRootsRequest: types.ListRootsResult,
}


class SessionLimitError(Exception):
    """A server already has `max_sessions` per-client connections open."""

    def __init__(self, server: str, limit: int) -> None:
        super().__init__(
            f"server '{server}' already has {limit} per-client connections open (its max_sessions); "
            "retry once another client has disconnected, or raise max_sessions"
        )


def declares_client_features(capabilities: types.ClientCapabilities | None) -> bool:
    """Whether a client declared anything a downstream may ask it for (sampling, elicitation, roots)."""
    return capabilities is not None and any(
        c is not None for c in (capabilities.sampling, capabilities.elicitation, capabilities.roots)
    )


def undeclared(capabilities: types.ClientCapabilities | None, server: str, request: Any) -> types.ErrorData | None:
    """The error a downstream gets when the client it would ask did not declare what it asks for (a shared
    connection is offered sampling, elicitation and roots before any client arrives), else None."""
    wanted = {
        types.CreateMessageRequest: "sampling",
        types.ElicitRequest: "elicitation",
        types.ListRootsRequest: "roots",
    }[type(request)]
    declared = capabilities is not None and getattr(capabilities, wanted) is not None
    if declared and isinstance(request.params, types.ElicitRequestURLParams):
        assert capabilities is not None and capabilities.elicitation is not None
        wanted = "URL elicitation"  # an elicitation capability without `url` means form mode only
        declared = capabilities.elicitation.url is not None
    if declared:
        return None
    logger.warning(
        "server %r sent %s, but the client it would reach did not declare %s", server, request.method, wanted
    )
    return types.ErrorData(
        code=types.METHOD_NOT_FOUND, message=f"the client circuitbox would ask did not declare {wanted}"
    )


def own_connection_of(server: ServerConfig, ctx: Any) -> Any | None:
    """The upstream connection that gets a connection of its own to `server`, or None: the shared one serves it."""
    if server.session == "shared" or ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        return None
    connection = client_connection(ctx.session)
    if connection is None:
        return None
    auto_shared = server.transport != "stdio" or not declares_client_features(connection.client_capabilities)
    return None if server.session == "auto" and auto_shared else connection


@dataclass(eq=False)
class ClientLink:
    """One upstream client's own connection to one server."""

    server: str
    connection: Any
    downstream: Downstream
    scope: anyio.CancelScope
    calls: list[Any] = field(default_factory=list)
    """Request contexts of the client's requests in flight on it, newest last."""

    @contextmanager
    def calling(self, ctx: Any) -> Iterator[None]:
        self.calls.append(ctx)
        try:
            yield
        finally:
            self.calls.remove(ctx)


class ClientSessions:
    """The per-client connections of every server, keyed by the upstream connection they serve."""

    def __init__(
        self,
        backoff: Callable[[], Backoff] | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        on_task_status: Callable[[Downstream, types.TaskStatusNotificationParams], Awaitable[None]] | None = None,
        relate_task: Callable[[Downstream, Any], Any] | None = None,
        on_client_task: Callable[[Downstream, Any, str, dict[str, Any]], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self._on_task_status = on_task_status  # the task relay (tasks.py), for every connection's task statuses
        self._relate_task = relate_task  # and the task ids in its requests' and notifications' _meta
        self._on_client_task = on_client_task  # and its requests about its client's own tasks (client_tasks.py)
        self._links: dict[str, dict[int, ClientLink]] = {}
        self._backoff = backoff
        self._max_message_bytes = max_message_bytes
        self._tg: anyio.abc.TaskGroup | None = None

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg

    def count(self, server: str) -> int:
        return len(self._links.get(server, {}))

    def find(self, server: str, connection: Any) -> ClientLink | None:
        return self._links.get(server, {}).get(id(connection))

    def links_of(self, connection: Any) -> list[ClientLink]:
        return [links[id(connection)] for links in self._links.values() if id(connection) in links]

    def has_link(self, server: str, connection: Any) -> bool:
        return self.find(server, connection) is not None

    async def link(self, server: ServerConfig, connection: Any) -> ClientLink:
        """The client's connection to `server`, opened now if it has none; returns once it is up or has failed
        its first attempt (within `startup_timeout`).

        Raises:
            SessionLimitError: the server has `max_sessions` per-client connections open already.
        """
        link = self.find(server.name, connection)
        if link is None:
            links = self._links.setdefault(server.name, {})
            if len(links) >= server.max_sessions:
                logger.warning(
                    "server %r: refused a per-client connection: %d open (max_sessions)", server.name, len(links)
                )
                raise SessionLimitError(server.name, server.max_sessions)
            link = self._open(server, connection)
            links[id(connection)] = link
        with anyio.move_on_after(server.startup_timeout):
            await link.downstream.first_attempt_done.wait()
        return link

    def _open(self, server: ServerConfig, connection: Any) -> ClientLink:
        assert self._tg is not None, "start() first"
        scope = anyio.CancelScope()
        link: ClientLink

        async def ask(_: Downstream, request: Any) -> Any:
            return await _ask(link, request)

        async def tell(_: Downstream, message: types.ServerNotification) -> None:
            await _tell(link, server.namespace, message)

        client_task = None
        if self._on_client_task is not None:
            relay = self._on_client_task

            async def client_task(downstream: Downstream, method: str, params: dict[str, Any]) -> dict[str, Any]:
                return await relay(downstream, connection, method, params)

        downstream = Downstream(
            server,
            backoff=self._backoff() if self._backoff else None,
            on_notification=tell,
            on_server_request=ask,
            offer=connection.client_capabilities or types.ClientCapabilities(),
            max_message_bytes=self._max_message_bytes,
            on_task_status=self._on_task_status,
            relate_task=self._relate_task,
            on_client_task=client_task,
        )
        link = ClientLink(server.name, connection, downstream, scope)

        async def own() -> None:
            with scope:
                await downstream.run()

        async def closed() -> None:  # the upstream session ended
            self._close(link)

        connection.exit_stack.push_async_callback(closed)
        self._tg.start_soon(own, name=f"downstream {server.name} (per client)")
        logger.info("server %r: opened a per-client connection (%d open)", server.name, self.count(server.name) + 1)
        return link

    def _close(self, link: ClientLink) -> None:
        links = self._links.get(link.server, {})
        if links.get(id(link.connection)) is link:
            del links[id(link.connection)]
            if not links:
                del self._links[link.server]
        link.scope.cancel()  # ends its child's whole process group

    def close_server(self, server: str) -> None:
        """Close every per-client connection of `server` (removed, or its connection settings changed): each
        client opens a new one on its next request."""
        for link in list(self._links.get(server, {}).values()):
            self._close(link)


async def _ask(link: ClientLink, request: Any) -> Any:
    """The downstream's question, to its own client: on the channel of the client's latest request in flight
    there (over HTTP, that POST's stream), else on the client's standalone channel."""
    refused = undeclared(link.connection.client_capabilities, link.server, request)
    if refused is not None:  # the SDK offers URL elicitation with form: a form-only client is not asked for it
        return refused
    ctx = link.calls[-1] if link.calls else None
    try:
        if ctx is not None:
            return await ctx.session.send_request(
                request, _RESULTS[type(request)], metadata=ServerMessageMetadata(related_request_id=ctx.request_id)
            )
        data = request.model_dump(by_alias=True, mode="json", exclude_none=True)
        raw = await link.connection.outbound.send_raw_request(data["method"], data.get("params"), None)
        return _RESULTS[type(request)].model_validate(raw, by_name=False)
    except MCPError as exc:
        return exc.error
    except Exception as exc:
        logger.warning("relaying %s from server %r failed: %s", request.method, link.server, exc)
        return types.ErrorData(code=types.INTERNAL_ERROR, message=f"relaying {request.method} failed: {exc}")


async def _tell(link: ClientLink, namespace: str, message: types.ServerNotification) -> None:
    """A log message (its logger prefixed with the namespace) or a resource update, to the link's client only: the
    downstream already applied that client's own level and subscriptions."""
    params = message.params.model_dump(by_alias=True, mode="json", exclude_none=True)  # type: ignore[union-attr]
    if isinstance(message, types.LoggingMessageNotification) and namespace:
        source = params.get("logger")
        params["logger"] = f"{namespace}__{source}" if source else namespace
    try:
        # Bounded: a client that stopped reading must not stall the downstream relaying this.
        with anyio.move_on_after(1):
            await link.connection.outbound.notify(message.method, params)
    except Exception as exc:
        logger.debug("could not relay %s to a client: %s", message.method, exc)
