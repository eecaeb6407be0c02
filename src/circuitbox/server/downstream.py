"""One downstream MCP server, owned by one long-lived task.

The owner task connects (stdio, streamable HTTP or SSE), initializes, fetches the tool, prompt and resource lists,
then waits until the connection ends and reconnects with backoff; a dead stdio child is respawned that way. The SDK
requires the task that entered a transport's context managers to exit them too, so nothing but `run()` ever enters
or leaves them. Callers only borrow `session` while it is connected.
"""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import mcp_types as types
from mcp import ClientSession, MCPError
from mcp.client.extension import NotificationBinding
from mcp.client.session import IncomingMessage
from mcp.shared.dispatcher import ProgressFnT
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

from circuitbox.config.model import MAX_MESSAGE_BYTES
from circuitbox.observability import traces
from circuitbox.server import modern_lane
from circuitbox.server._sdk_private import TaskOfferingSession, send_unvalidated
from circuitbox.server._streams import WatchedStream
from circuitbox.server.direct_calls import DirectCalls
from circuitbox.server.http_calls import HttpCalls, http_link
from circuitbox.server.modern_stdio import ChildRecord
from circuitbox.server.stdio_child import BurstLog, ChildOutput
from circuitbox.server.transports import open_transport

if TYPE_CHECKING:
    from circuitbox.config.load import ServerConfig

logger = logging.getLogger("circuitbox.downstream")

T = TypeVar("T", bound=BaseModel)
M = TypeVar("M", bound=BaseModel)
ProgressCallback = ProgressFnT


NOTE_BUFFER = 1000  # notifications of one downstream waiting for their relay; past it they are dropped, counted
NOTE_ORDER_WAIT = 1.0  # how long an answer may wait for the notes its server wrote before it to be relayed
DOWN_AFTER = 5  # consecutive failed connection attempts before a server is reported "down" rather than "restarting"
STDERR_TAIL = 20  # stderr lines of a stdio server kept for circuit_status (its last words when it crash-loops)


class Connection(StrEnum):
    STARTING = "starting"
    CONNECTED = "connected"
    RESTARTING = "restarting"
    DOWN = "down"
    CRASH_LOOP = "crash_loop"
    """A stdio server that died `crash_loop_restarts` times within `crash_loop_window`: still restarted."""


class DownstreamUnavailableError(Exception):
    """The downstream is not connected right now (starting, restarting or down)."""

    def __init__(self, server: str, state: Connection, last_error: str | None) -> None:
        detail = f": {last_error}" if last_error else ""
        super().__init__(f"server '{server}' is {state.value}{detail}")
        self.server = server
        self.state = state


@dataclass
class Backoff:
    """Reconnect delays: exponential with full jitter, reset once a connection has stayed up for `stable_after`."""

    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    stable_after: float = 30.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, failures: int) -> float:
        base = min(self.maximum, self.initial * self.multiplier ** max(0, failures - 1))
        return base * (0.5 + 0.5 * self.rng.random())


@dataclass(frozen=True)
class Listing:
    """What one downstream offers, as of its last successful list."""

    tools: tuple[types.Tool, ...] = ()
    prompts: tuple[types.Prompt, ...] = ()
    resources: tuple[types.Resource, ...] = ()
    templates: tuple[types.ResourceTemplate, ...] = ()


class Downstream:
    """A downstream server: its connection state, its latest listing and the borrowed session."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        on_listing: Callable[[Downstream], Awaitable[None]] | None = None,
        backoff: Backoff | None = None,
        on_notification: Callable[[Downstream, types.ServerNotification], Awaitable[None]] | None = None,
        on_server_request: Callable[[Downstream, types.ServerRequest], Awaitable[Any]] | None = None,
        on_connected: Callable[[Downstream], None] | None = None,
        offer: types.ClientCapabilities | None = None,
        offer_source: Callable[[], Awaitable[types.ClientCapabilities | None]] | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        on_task_status: Callable[[Downstream, types.TaskStatusNotificationParams], Awaitable[None]] | None = None,
        relate_task: Callable[[Downstream, Any], Any] | None = None,
        on_client_task: Callable[[Downstream, str, dict[str, Any]], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self._on_client_task = on_client_task  # a request about a client-side task, when its tasks are offered
        self.config = config
        self._on_task_status = on_task_status
        self._relate_task = relate_task  # a request's or notification's related-task _meta, as its client knows it
        self._offer = offer
        self._offer_source = offer_source  # asked at each connection, when the offer is learned late
        self.max_message_bytes = max_message_bytes
        self.instructions: str | None = None
        self.capabilities: types.ServerCapabilities | None = None
        self.name = config.name
        self.state = Connection.STARTING
        self.last_error: str | None = None
        self.listing = Listing()
        self.session: ClientSession | None = None
        # tools/call past the SDK's typed session (and over HTTP past its client), when it can be used
        self._direct: DirectCalls | HttpCalls | None = None
        self.modern: modern_lane.ModernLane | None = None
        """While connected, the lane to it in the 2026-07-28 era when it speaks that too (modern_lane.py)."""
        self._schemas: tuple[tuple[types.Tool, ...], dict[str, Any]] = ((), {})
        self.connects = 0
        self.first_attempt_done = anyio.Event()
        self._on_listing = on_listing
        self._on_notification = on_notification
        self._on_server_request = on_server_request
        self._on_connected = on_connected
        self._retry_at: float | None = None  # when the next connection attempt starts (during a backoff)
        self._backoff = backoff or Backoff()
        self._refresh = anyio.Event()
        # Notifications wait here for their relay, never in the session's receive loop: a downstream flooding its
        # log while a client reads slowly must not hold up the answers to calls behind them.
        self._notes: deque[types.ServerNotification] = deque()
        self._noted = anyio.Event()
        self._notes_dropped = BurstLog()
        # Notes queued so far and, of those, relayed: a call's answer waits for the notes ahead of it.
        self._notes_queued = self._notes_relayed = 0
        self._relayed = anyio.Event()
        self._closed = anyio.Event()
        self.in_flight = 0
        self._idle: anyio.Event | None = None  # made only when someone waits for in_flight to reach 0
        self.restarts = 0
        """Connection attempts after the first (each one a restart of a stdio server's process)."""
        self._deaths: deque[float] = deque()  # when a stdio connection ended, within crash_loop_window
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL)
        """A stdio server's last stderr lines (secrets masked), across restarts, its 2026-era children's too."""
        self.modern_child = ChildRecord(config, self._backoff, self.stderr_tail)
        """A stdio server's 2026-era children (modern_stdio.py): restarts and crash loop of their own, since the main
        connection serves every handshake-era client meanwhile; across connections, as `restarts`."""

    # -- the owner task -------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, reconnect: until cancelled."""
        failures = 0
        while True:
            began = anyio.current_time()
            try:
                await self._connect_and_serve()
                self.last_error = self.last_error or "connection closed"
            except Exception as exc:  # every failure of a downstream stays inside its owner
                self.last_error = self.redact(describe_error(exc))
            self.session = self._direct = self.modern = None
            self.first_attempt_done.set()
            if anyio.current_time() - began - self._backoff.initial >= self._backoff.stable_after:
                failures = 0
            failures += 1
            # Still retried (at the longest backoff), but reported as down after repeated failures.
            self.state = Connection.DOWN if failures >= DOWN_AFTER else Connection.RESTARTING
            if self._crash_looping():
                self.state = Connection.CRASH_LOOP
            delay = self._backoff.delay(failures)
            logger.warning("server %r disconnected (%s); reconnecting in %.1fs", self.name, self.last_error, delay)
            if self.state is Connection.CRASH_LOOP:
                logger.error(
                    "server %r is in a crash loop: %d deaths within %gs, %d restarts so far; its stderr ended with: %s",
                    self.name, len(self._deaths), self.config.crash_loop_window, self.restarts,
                    self.stderr_tail[-1] if self.stderr_tail else "(nothing)",
                )  # fmt: skip
            self._retry_at = anyio.current_time() + delay
            await anyio.sleep(delay)
            self.restarts += 1

    def _crash_looping(self) -> bool:
        """Count this end of a stdio connection; whether `crash_loop_restarts` of them fell in `crash_loop_window`."""
        if self.config.transport != "stdio":
            return False
        now = anyio.current_time()
        self._deaths.append(now)
        while self._deaths[0] < now - self.config.crash_loop_window:
            self._deaths.popleft()
        return len(self._deaths) >= self.config.crash_loop_restarts

    def retry_after(self) -> float:
        """Seconds until the server should be back: what is left of the backoff, plus a second to connect."""
        left = 0.0 if self._retry_at is None else max(0.0, self._retry_at - anyio.current_time())
        return left + 1.0

    def redact(self, text: str) -> str:
        """Error texts can quote what the transport sent (an illegal header value, a URL): never show secrets."""
        return self.config.redact(text)  # env and header values, what ${VAR} brought in, URL credentials

    def request_reconnect(self) -> None:
        """Drop the current connection (the owner reconnects), e.g. when an HTTP downstream lost our session."""
        self._closed.set()

    async def _connect_and_serve(self) -> None:
        closed = self._closed = anyio.Event()
        startup = anyio.CancelScope(deadline=anyio.current_time() + self.config.startup_timeout)
        with startup:
            async with (
                self._transport() as (read, write),
                modern_lane.open_modern_lane(self.config, self.max_message_bytes, self.modern_child) as lane,
            ):
                self.modern = lane
                if self._offer_source is not None:
                    self._offer = await self._offer_source()
                watched, link = WatchedStream(read, closed), http_link(read)
                direct = DirectCalls(watched, write) if link is None else HttpCalls(watched, write, link)
                if isinstance(read, ChildOutput):  # a stdio child's reader completes our calls itself
                    read.intercept = direct.intercept
                    if isinstance(direct, DirectCalls):
                        read.intercept_line = direct.intercept_line
                        direct.on_log = self._log_in_order
                async with self._session(
                    direct,
                    write,
                    message_handler=self._on_message,
                    notification_bindings=self._bindings(),
                    **self._callbacks(),
                ) as session:
                    initialized = await session.initialize()
                    version = session.protocol_version
                    direct.protocol_version = version or ""
                    self.instructions = initialized.instructions
                    self.capabilities = initialized.capabilities
                    self.listing = await self._fetch_listing(session)
                    startup.deadline = math.inf
                    self.session, self.state, self.last_error = session, Connection.CONNECTED, None
                    # A 2026-era request needs the SDK's per-request envelope: those go through the session.
                    self._direct = direct if version not in MODERN_PROTOCOL_VERSIONS else None
                    self.connects += 1
                    logger.info("server %r connected with %d tools", self.name, len(self.listing.tools))
                    if self._on_connected is not None:
                        self._on_connected(self)
                    await self._announce()  # before anyone waiting on the first attempt lists the catalog
                    self.first_attempt_done.set()
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._refresh_loop, session)
                        if self._on_notification is not None:
                            tg.start_soon(self._relay_loop, self._on_notification)
                        await closed.wait()
                        # Refused from now on, not after the transport has wound down: no call may reach a dead
                        # session, and circuit_status must not say connected meanwhile.
                        self.session, self._direct, self.modern, self.state = None, None, None, Connection.RESTARTING
                        tg.cancel_scope.cancel()
        if startup.cancelled_caught:
            raise TimeoutError(f"did not start within {self.config.startup_timeout:g}s")

    def _session(self, *args: Any, **kwargs: Any) -> ClientSession:
        """The session to the server: offered the client's `tasks` capability too when it has one (the offer of
        one client's own connection, or the stdio upstream's one client; never a shared connection's)."""
        offer, relay = self._offer, self._on_client_task
        if offer is None or offer.tasks is None or relay is None:
            return ClientSession(*args, **kwargs)

        async def task_request(method: str, params: dict[str, Any]) -> dict[str, Any]:
            return await relay(self, method, params)

        return TaskOfferingSession(*args, tasks=offer.tasks, on_task_request=task_request, **kwargs)

    def _callbacks(self) -> dict[str, Any]:
        """Sampling, elicitation and roots are offered when there is someone to relay them to: with `offer` (one
        client's own connection, or the stdio upstream's one client), exactly what that client declared; else (a
        shared connection opened before its clients arrive) all three."""
        relay = self._on_server_request
        if relay is None:
            return {}

        async def sampling(_: Any, params: types.CreateMessageRequestParams) -> Any:
            return await relay(self, self._related(types.CreateMessageRequest(params=params)))

        async def elicitation(_: Any, params: types.ElicitRequestParams) -> Any:
            return await relay(self, self._related(types.ElicitRequest(params=params)))

        async def roots(_: Any) -> Any:
            return await relay(self, types.ListRootsRequest())

        offer = self._offer
        if offer is None:
            return {"sampling_callback": sampling, "elicitation_callback": elicitation, "list_roots_callback": roots}
        callbacks: dict[str, Any] = {}
        if offer.sampling is not None:
            callbacks.update(sampling_callback=sampling, sampling_capabilities=offer.sampling)
        if offer.elicitation is not None:
            callbacks["elicitation_callback"] = elicitation
        if offer.roots is not None:
            callbacks["list_roots_callback"] = roots
        return callbacks

    def _bindings(self) -> list[NotificationBinding[Any]]:
        """`notifications/tasks/status` is in no core table of the SDK's (2025-11-25 tasks have no runtime there):
        it arrives through a notification binding, for the task relay."""
        relay = self._on_task_status
        if relay is None:
            return []

        async def status(params: types.TaskStatusNotificationParams) -> None:
            try:
                await relay(self, params)
            except Exception as exc:  # a client that went away costs its notification, never the session
                logger.debug("server %r: relaying a task status failed: %s", self.name, exc)

        return [
            NotificationBinding(
                method="notifications/tasks/status", params_type=types.TaskStatusNotificationParams, handler=status
            )
        ]

    def _transport(self) -> AbstractAsyncContextManager[tuple[Any, Any]]:
        return open_transport(
            self.config, redact=self.redact, max_message_bytes=self.max_message_bytes, stderr_tail=self.stderr_tail
        )

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, Exception):
            logger.warning("server %r sent something that is not MCP: %s", self.name, describe_error(message))
        elif isinstance(
            message,
            types.ToolListChangedNotification
            | types.PromptListChangedNotification
            | types.ResourceListChangedNotification,
        ):
            self._refresh.set()
        elif (
            isinstance(
                message,
                types.LoggingMessageNotification | types.ResourceUpdatedNotification | types.ElicitCompleteNotification,
            )
            and self._on_notification is not None
        ):
            self._queue_note(self._related(message))

    def _related(self, message: M) -> M:
        """`message` as its client should see it: a task its related-task `_meta` names, under that client's id."""
        if self._relate_task is None:
            return message
        related: M = self._relate_task(self, message)
        return related

    def _queue_note(self, message: types.ServerNotification) -> None:
        if len(self._notes) >= NOTE_BUFFER:
            dropped = self._notes_dropped.admit()
            if dropped is not None:
                logger.warning("server %r sends notifications faster than its clients take them: %d dropped%s",
                               self.name, dropped + 1, " (since the last warning)" if dropped else "")  # fmt: skip
            return
        self._notes.append(message)
        self._notes_queued += 1
        self._noted.set()

    def _log_in_order(self, message: types.LoggingMessageNotification) -> None:
        """A log message as the child's reader read it, queued before any answer behind it completes its call
        (the session's path would queue it from a task of its own, after that answer)."""
        if self._on_notification is not None:
            self._queue_note(self._related(message))

    async def _after_notes(self) -> None:
        """Until the notes queued so far have been relayed, so that an answer never reaches its client before a log
        message the server wrote before it; at most `NOTE_ORDER_WAIT`: a client slow to take notes must not hold
        up another's answers."""
        mark = self._notes_queued
        with anyio.move_on_after(NOTE_ORDER_WAIT):
            while self._notes_relayed < mark:
                if self._relayed.is_set():
                    self._relayed = anyio.Event()
                await self._relayed.wait()

    async def _relay_loop(self, relay: Callable[[Downstream, types.ServerNotification], Awaitable[None]]) -> None:
        while True:
            while not self._notes:
                self._noted = anyio.Event()
                await self._noted.wait()
            try:
                await relay(self, self._notes.popleft())
            except Exception as exc:  # a client that went away costs its notification, never the relay
                logger.debug("server %r: relaying a notification failed: %s", self.name, exc)
            finally:
                self._notes_relayed += 1
                self._relayed.set()

    async def _refresh_loop(self, session: ClientSession) -> None:
        while True:
            await self._refresh.wait()
            self._refresh = anyio.Event()
            try:
                with anyio.fail_after(self.config.startup_timeout):  # a hung list must not freeze the catalog
                    self.listing = await self._fetch_listing(session)
            except Exception as exc:
                logger.warning(
                    "server %r: refreshing its lists failed: %s", self.name, self.redact(describe_error(exc))
                )
                continue
            await self._announce()

    async def _announce(self) -> None:
        if self._on_listing is not None:
            await self._on_listing(self)

    async def _fetch_listing(self, session: ClientSession) -> Listing:
        caps = session.server_capabilities
        tools = prompts = resources = templates = ()
        if caps is None or caps.tools is not None:
            tools = await paginate(session, types.ListToolsRequest, types.ListToolsResult, "tools")
        if caps is not None and caps.prompts is not None:
            prompts = await paginate(session, types.ListPromptsRequest, types.ListPromptsResult, "prompts")
        if caps is not None and caps.resources is not None:
            resources = await paginate(session, types.ListResourcesRequest, types.ListResourcesResult, "resources")
            templates = await paginate(
                session,
                types.ListResourceTemplatesRequest,
                types.ListResourceTemplatesResult,
                "resource_templates",
            )
        return Listing(tools, prompts, resources, templates)

    # -- what callers use ------------------------------------------------------------------------------------------

    def connected_session(self) -> ClientSession:
        """The live session.

        Raises:
            DownstreamUnavailableError: not connected right now.
        """
        session = self.session
        if session is None:
            raise DownstreamUnavailableError(self.name, self.state, self.last_error)
        return session

    async def request(self, request: Any, result_type: type[T], progress: ProgressCallback | None = None) -> T:
        """Send one request on the live session (no deadline: the caller owns it).

        Raises:
            DownstreamUnavailableError: not connected right now.
            mcp.MCPError: the downstream answered with an error or the connection closed.
        """
        session = self.connected_session()
        direct = self._direct
        self.in_flight += 1
        try:
            if direct is not None and isinstance(request, types.CallToolRequest) and not traces.active():
                params = request.params.model_dump(by_alias=True, mode="json", exclude_none=True)
                raw = await direct.call(params, progress)
                if self._notes_relayed < self._notes_queued:
                    await self._after_notes()
                return result_type.model_validate(raw, by_name=False)
            return await session.send_request(request, result_type, progress_callback=progress)
        finally:
            self._ended()

    def direct_path(self) -> DirectCalls | HttpCalls | None:
        """Where a `tools/call` of the request being served goes past the SDK's session (`call_direct`), or None
        for `request_or_input`: not connected, traces on, a 2026-era session, or a 2026-era client's call to a
        server with a lane of that era."""
        if self.session is None or traces.active() or (self.modern is not None and modern_lane.current() is not None):
            return None
        return self._direct

    async def call_direct(
        self, direct: DirectCalls | HttpCalls, params: dict[str, Any], progress: ProgressCallback | None = None
    ) -> dict[str, Any]:
        """`request` of a `tools/call` with `params` as the wire has them, on `direct_path()`: the raw result.

        Raises:
            mcp.MCPError: the downstream answered with an error or the connection closed.
        """
        self.in_flight += 1
        try:
            raw = await direct.call(params, progress)
            if self._notes_relayed < self._notes_queued:
                await self._after_notes()
            return raw
        finally:
            self._ended()

    async def request_unvalidated(
        self, data: dict[str, Any], progress: ProgressCallback | None = None
    ) -> dict[str, Any]:
        """`request` for a request in wire form whose answer the SDK would refuse (a task for `tools/call`).

        Raises:
            DownstreamUnavailableError: not connected right now.
            mcp.MCPError: the downstream answered with an error or the connection closed.
        """
        session = self.connected_session()
        self.in_flight += 1
        try:
            return await send_unvalidated(session, data, progress)
        finally:
            self._ended()

    async def request_or_input(
        self, request: Any, result_type: type[T], progress: ProgressCallback | None = None
    ) -> T | types.InputRequiredResult:
        """`request`, but a 2026-era client's `tools/call`, `prompts/get` or `resources/read` goes on the modern
        lane when this server has one, and may end with its input-required result.

        Raises:
            DownstreamUnavailableError: not connected right now.
            mcp.MCPError: the downstream answered with an error, or the connection failed.
        """
        lane, client = self.modern, modern_lane.current()
        if lane is None or client is None:
            return await self.request(request, result_type, progress)
        self.connected_session()
        self.in_flight += 1
        try:
            if not await lane.available():
                return await self.request(request, result_type, progress)
            log = None if client.log is None else partial(client.log, self.config.namespace)
            return await lane.request(request, result_type, progress, client, self._input_schema(request), log)
        finally:
            self._ended()

    async def speaks_modern(self) -> bool:
        """Whether a 2026-era client's requests reach this server in its own era (a stdio server's first such request
        finds out, bounded by its `startup_timeout`)."""
        lane = self.modern
        return lane is not None and await lane.available()

    def _input_schema(self, request: Any) -> Any:
        """The listed input schema of the tool a `tools/call` names (its `x-mcp-header` arguments go in headers)."""
        if not isinstance(request, types.CallToolRequest):
            return None
        tools, schemas = self._schemas
        if tools is not self.listing.tools:
            tools = self.listing.tools
            self._schemas = tools, (schemas := {tool.name: tool.input_schema for tool in tools})
        return schemas.get(request.params.name)

    async def wait_idle(self) -> None:
        """Until no request is in flight (used to retire a downstream replaced by a reload without dropping calls)."""
        if self.in_flight:
            if self._idle is None:
                self._idle = anyio.Event()
            await self._idle.wait()

    def _ended(self) -> None:
        """A request has ended: the last one in flight wakes `wait_idle`."""
        self.in_flight -= 1
        if not self.in_flight and self._idle is not None:
            self._idle.set()
            self._idle = None


async def paginate(session: ClientSession, request_type: Any, result_type: Any, attr: str) -> tuple[Any, ...]:
    """Every item of a list request, following the downstream's cursors (bounded; a missing list is empty)."""
    items: list[Any] = []
    cursor: str | None = None
    for _ in range(10_000):  # a downstream that never stops paginating must not hang its owner forever
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        try:
            page = await session.send_request(request_type(params=params), result_type)
        except MCPError as exc:
            # Servers that advertise a capability but not every list in it (templates, often) say so this way.
            if exc.error.code == types.METHOD_NOT_FOUND:
                return tuple(items)
            raise
        items.extend(getattr(page, attr))
        cursor = page.next_cursor
        if not cursor:
            break
    return tuple(items)


def describe_error(exc: BaseException) -> str:
    """A one-line description of an error, unwrapping the exception groups the SDK's task groups produce."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
