"""The proxy: downstream owners + catalog + guard, behind one low-level MCP `Server`.

Data flows one way: config -> policies -> breakers; a call flows catalog -> guard -> downstream owner, and its
outcome flows back into the breaker, whose events feed the metrics.
"""

from __future__ import annotations

import logging
import math
import warnings
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal, TypeVar, overload

import anyio
import anyio.abc
import mcp_types as types
from mcp import MCPError
from mcp.server import NotificationOptions, Server
from mcp.server.context import ServerRequestContext
from mcp.server.models import InitializationOptions
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourcesListChanged,
    ToolsListChanged,
)
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

from circuitbox import __version__
from circuitbox.breakers import BreakerRegistry, CircuitBreaker, CircuitState, StateTransition
from circuitbox.config.load import ProxyConfig, ServerConfig, last_known_good_misuse
from circuitbox.observability import traces
from circuitbox.server import modern_lane, request_meta
from circuitbox.server._sdk_private import client_connection
from circuitbox.server.bridge import Bridge, ParkedCall
from circuitbox.server.callers import Callers
from circuitbox.server.catalog import Catalog, Route, build_catalog
from circuitbox.server.direct_calls import WireResult
from circuitbox.server.downstream import Backoff, Connection, Downstream, DownstreamUnavailableError
from circuitbox.server.guard import Guard, error_result, unavailable_result
from circuitbox.server.own_tools import check_arguments, own_tools
from circuitbox.server.pages import PageCache
from circuitbox.server.relay import Clients
from circuitbox.server.retry import is_read_only
from circuitbox.server.sessions import ClientLink, ClientSessions, SessionLimitError, own_connection_of
from circuitbox.server.shutdown import SHUTTING_DOWN, Drain
from circuitbox.server.tasks import Relayed, TaskHooks, TaskRelay, offers_tool_tasks, without_tasks
from circuitbox.server.tool_surface import Coalescer, ToolSurface, apply_view
from circuitbox.server.unknown_methods import ForwardUnknownMethods

logger = logging.getLogger("circuitbox.proxy")
ResultT = TypeVar("ResultT", bound=BaseModel)
AnswerT = TypeVar("AnswerT")
audit_log = logging.getLogger("circuitbox.audit")


INSTRUCTIONS = (
    "circuitbox fronts several MCP servers. Their tools are named '<server>__<tool>'. Each tool has a circuit "
    "breaker: when a server keeps failing, its tools answer at once with isError and a note saying when to retry, "
    "instead of hanging. Call circuit_status to see which servers and tools are healthy."
)


ONE_CLIENT_WAIT = 5.0
"""Seconds a downstream connection behind the stdio upstream waits for the client's initialize, to offer exactly
what it declared; agents initialize at once, so this only bounds a client that never does."""

LIST_CHANGED = NotificationOptions(tools_changed=True, prompts_changed=True, resources_changed=True)


class _ProxyServer(Server[Any]):
    """A `Server` that advertises listChanged for tools, prompts and resources whoever builds its initialization
    options: the SDK's streamable HTTP session manager calls `create_initialization_options()` with no arguments."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options or LIST_CHANGED, experimental_capabilities, extensions
        )


class Proxy:
    def __init__(
        self,
        config: ProxyConfig,
        *,
        registry: BreakerRegistry | None = None,
        backoff: Callable[[], Backoff] | None = None,
        on_new_breaker: Callable[[CircuitBreaker, str, str], None] | None = None,
        on_forget_breaker: Callable[[str], None] | None = None,
        tool_stats: Callable[[CircuitBreaker], dict[str, Any]] | None = None,
        clock: Callable[[], float] | None = None,
        on_count: Callable[[str, str], None] | None = None,
    ) -> None:
        self.config = config
        self.registry = registry if registry is not None else BreakerRegistry()
        self.guard = Guard(
            config,
            self.registry,
            on_new_breaker=on_new_breaker,
            on_forget=on_forget_breaker,
            clock=clock,
            on_count=on_count,
        )
        self.tasks = TaskRelay(
            TaskHooks(
                task_server=self._task_server,
                call=self._call_on_its_connection,
                serving=self._serving_task,
                timeout=lambda server: self.config.policy(server).call_timeout,
                capabilities=lambda: [d.capabilities for d in self.downstreams.values()],
                ready=self.wait_first_attempts,
            )
        )
        self._backoff = backoff
        self.downstreams = {name: self._downstream(server) for name, server in config.servers.items() if server.enabled}
        self._scopes: dict[Downstream, anyio.CancelScope] = {}
        # A reload that changed a server's connection: the new owner, connecting beside the old one, which keeps
        # serving until the new one is connected (make before break).
        self._pending: dict[str, Downstream] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._started_at: float | None = None
        self.own = own_tools(config.admin_enabled)
        self.catalog = Catalog()
        self._tool_stats = tool_stats
        self._bus = InMemorySubscriptionBus()
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self.clients = Clients()
        self.callers = Callers()
        # per-client downstream connections
        self.sessions = ClientSessions(
            backoff,
            config.max_message_bytes,
            on_task_status=self.tasks.status,
            relate_task=self.tasks.related,
            on_client_task=self.tasks.client_request,
        )
        self.stdio_upstream = False  # set by the stdio front end: it has exactly one client
        self._one_client: types.ClientCapabilities | None = None
        self._one_client_declared = anyio.Event()
        self._server: Server[Any] | None = None
        self._catalog_listeners: list[Callable[[Catalog, Catalog], None]] = []
        self.drain = Drain()
        self._pages = PageCache()
        # The tool list follows breaker state (tool_list); changes are announced at most once per interval.
        self._tools_changed = Coalescer(config.list_changed_interval, self._announce_tools)
        self.surface = ToolSurface(self.guard.listing_entry, self._tools_changed.poke)
        self.registry.add_listener(self._breaker_event)
        self._misuse_reported: set[tuple[str, str]] = set()
        self.bridge = Bridge()

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    def _downstream(self, server: ServerConfig) -> Downstream:
        return Downstream(
            server,
            on_listing=self._listing_changed,
            backoff=self._backoff() if self._backoff else None,
            on_notification=self._downstream_notification,
            on_server_request=self._server_request,
            on_connected=self._connected,
            max_message_bytes=self.config.max_message_bytes,
            offer_source=self._shared_offer,
            on_task_status=self.tasks.status,
            relate_task=self.tasks.related,
            on_client_task=self._client_task_request,
        )

    def serve_one_client(self, server: Server[Any]) -> None:
        """The stdio upstream: one client, whose declared capabilities are what every downstream is offered (each
        connection waits up to ONE_CLIENT_WAIT seconds for its initialize, then offers all it relays)."""
        self.stdio_upstream = True

        async def observe(ctx: Any, call_next: Any) -> Any:
            if ctx.method == "initialize" and not self._one_client_declared.is_set():
                raw = (ctx.params or {}).get("capabilities")
                try:
                    self._one_client = types.ClientCapabilities.model_validate(raw or {})
                except ValueError:  # the SDK answers that initialize itself
                    self._one_client = None
                self._one_client_declared.set()
            return await call_next(ctx)

        # Before the task relay, which may wait at initialize for the downstreams, which wait for this.
        server.middleware.insert(server.middleware.index(self.tasks), observe)

    async def _shared_offer(self) -> types.ClientCapabilities | None:
        if not self.stdio_upstream:
            return None  # opened before any of its clients arrive: offered all it relays, checked per question
        with anyio.move_on_after(ONE_CLIENT_WAIT):
            await self._one_client_declared.wait()
        return self._one_client

    def _connected(self, downstream: Downstream) -> None:
        name = downstream.name
        if self._pending.get(name) is downstream:  # the new connection of a reload is ready: switch to it
            del self._pending[name]
            old = self.downstreams[name]
            self.downstreams[name] = downstream
            self._retire(old)  # its calls in flight finish there
            logger.warning("server %r: switched to its new connection", name)
        if self.downstreams.get(name) is downstream:
            probed = self.guard.reconnected(downstream.name)
            if probed:
                logger.warning("server %r is back: probing at once %s", downstream.name, ", ".join(sorted(probed)))

    def _breaker_event(self, event: Any) -> None:
        if type(event) is StateTransition:
            self.surface.breaker_changed()

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Start every downstream's owner task; returns at once (nothing waits for a downstream here)."""
        self._tg = tg
        self._started_at = anyio.current_time()
        tg.start_soon(self._tools_changed.run, name="tools/list_changed")
        tg.start_soon(self.surface.run, lambda: self.catalog, name="tool surface")
        self.sessions.start(tg)
        self.tasks.start(tg)
        for downstream in self.downstreams.values():
            self._launch(downstream)

    def _launch(self, downstream: Downstream) -> None:
        assert self._tg is not None, "start() first"
        scope = self._scopes[downstream] = anyio.CancelScope()

        async def own() -> None:
            with scope:
                await downstream.run()

        self._tg.start_soon(own, name=f"downstream {downstream.name}")

    async def reload(self, config: ProxyConfig) -> dict[str, list[str]]:
        """Apply a new config without a restart, or not at all.

        Every policy is computed first: a file that makes any existing breaker's policy invalid raises and changes
        nothing. Servers added are started, removed ones stopped (their breakers go). A server whose connection
        settings changed is reconnected make-before-break: a new owner connects beside the old one, which keeps
        serving calls until the new one is connected (then it retires once its calls in flight are answered); its
        tools and breakers stay. Breakers keep their state and window unless their policy changed, and then only
        their thresholds change.

        Raises:
            ConfigError, ValueError: the new config cannot be applied; the running one stays in force.
        """
        plan = self.guard.plan_reload(config)
        old = self.config
        wanted = {name: server for name, server in config.servers.items() if server.enabled}
        report: dict[str, list[str]] = {"added": [], "removed": [], "restarted": [], "retuned": []}
        for name, downstream in list(self.downstreams.items()):
            pending = self._pending.pop(name, None)
            if name not in wanted:
                for retired in (pending, downstream):
                    if retired is not None:
                        self._retire(retired)
                del self.downstreams[name]
                self.sessions.close_server(name)
                report["removed"].append(name)
                continue
            target = pending or downstream
            if _connection(wanted[name]) == _connection(target.config):
                if wanted[name].session != target.config.session:
                    self.sessions.close_server(name)  # the clients' next requests go where the new mode says
                target.config = wanted[name]  # namespace, startup_timeout: no reconnect needed
                if pending is not None:
                    self._pending[name] = pending
                continue
            if pending is not None:
                self._retire(pending)  # superseded before it connected
            if _connection(wanted[name]) == _connection(downstream.config):  # back to what is running
                downstream.config = wanted[name]
                continue
            fresh = self._downstream(wanted[name])
            fresh.listing = downstream.listing  # tools stay published while it connects
            self._launch(fresh)
            if downstream.session is None:  # nothing works on the old connection: nothing to keep serving
                self.downstreams[name] = fresh
                self._retire(downstream)
            else:
                self._pending[name] = fresh
            self.sessions.close_server(name)  # each client reconnects with the new settings on its next request
            report["restarted"].append(name)
        self.config = config
        self._tools_changed.interval = config.list_changed_interval
        self.own = own_tools(config.admin_enabled)
        report["retuned"] = [f"{server}/{tool}" for server, tool in self.guard.apply_reload(config, plan)]
        for name, server in wanted.items():
            if name not in self.downstreams:
                self.downstreams[name] = self._downstream(server)
                self._launch(self.downstreams[name])
                report["added"].append(name)
        for owner, tool, _ in self.guard.known():
            if owner not in wanted:
                self.guard.forget(owner, tool)
        await self._listing_changed(None, own_tools_changed=old.admin_enabled != config.admin_enabled)
        logger.warning("config reloaded: %s", {k: v for k, v in report.items() if v})
        return report

    def _retire(self, downstream: Downstream) -> None:
        """Stop an owner once its calls in flight are answered (bounded by the longest call deadline)."""
        scope = self._scopes.pop(downstream)
        limit = max((p.call_timeout for _, _, p in self.guard.policies_of(downstream.name)), default=30.0)

        async def retire() -> None:
            with anyio.move_on_after(limit + 1):
                await downstream.wait_idle()
            scope.cancel()

        assert self._tg is not None
        self._tg.start_soon(retire, name=f"retire {downstream.name}")

    async def wait_first_attempts(self) -> None:
        """Until every downstream's first connection attempt has ended, each at most its `startup_timeout` after the
        proxy started: one downstream stuck starting delays only the agent's very first requests, not later ones."""
        if self._started_at is None:
            self._started_at = anyio.current_time()
        for downstream in list(self.downstreams.values()):
            left = self._started_at + downstream.config.startup_timeout - anyio.current_time()
            with anyio.move_on_after(max(0.0, left)):
                await downstream.first_attempt_done.wait()

    def _starting(self) -> bool:
        return not all(d.first_attempt_done.is_set() for d in self.downstreams.values())

    def _not_connected_owner(self, name: str) -> Downstream | None:
        """The server that would publish `name` (by its namespace) while it is not connected, if exactly one."""
        owners = [
            d
            for d in self.downstreams.values()
            if d.session is None and (name.startswith(f"{d.config.namespace}__") or not d.config.namespace)
        ]
        prefixed = [d for d in owners if d.config.namespace]
        owners = prefixed or owners
        return owners[0] if len(owners) == 1 else None

    def on_catalog_change(self, listener: Callable[[Catalog, Catalog], None]) -> None:
        self._catalog_listeners.append(listener)

    async def _listing_changed(self, _: Downstream | None, *, own_tools_changed: bool = False) -> None:
        if self._server is not None:
            self._server.instructions = self.instructions()
        old = self.catalog
        self.catalog = build_catalog(
            ((d.name, d.config.namespace, d.listing) for d in self.downstreams.values()),
            reserved=self.own,
            tool_name=self._tool_name,
            task_servers={d.name for d in self.downstreams.values() if offers_tool_tasks(d.capabilities)},
        )
        # Breakers (and their metric series) of tools a downstream no longer lists go away: bounded cardinality.
        gone = {route for route, _ in old.tools.values()} - {route for route, _ in self.catalog.tools.values()}
        for route in gone:
            self.guard.forget(route.server, route.name)
        self._report_misuse()
        for listener in self._catalog_listeners:
            listener(old, self.catalog)
        await self._relay_changes(old, self.catalog, own_tools_changed)

    def _report_misuse(self) -> None:
        """Config errors that only a listing reveals, each logged once: last_known_good on a tool entry of a tool
        that is not read-only (the tool is served, never with a kept result)."""
        for route, tool in self.catalog.tools.values():
            key = (route.server, route.name)
            if key in self._misuse_reported:
                continue
            problem = last_known_good_misuse(self.config, route.server, route.name, is_read_only(tool))
            if problem is not None:
                self._misuse_reported.add(key)
                logger.error("config error: %s", problem)

    async def _announce_tools(self) -> None:
        await self._publish(ToolsListChanged(), types.ToolListChangedNotification())

    async def _relay_changes(self, old: Catalog, new: Catalog, own_tools_changed: bool = False) -> None:
        self.surface.refresh(new)
        events: list[tuple[Any, types.ServerNotification]] = []
        if own_tools_changed or old.tool_list() != new.tool_list():
            if self._tools_changed.running:
                self._tools_changed.poke()  # with the breaker-driven changes: at most one per interval
            else:
                events.append((ToolsListChanged(), types.ToolListChangedNotification()))
        if old.prompt_list() != new.prompt_list():
            events.append((PromptsListChanged(), types.PromptListChangedNotification()))
        if old.resource_list() != new.resource_list() or old.template_list() != new.template_list():
            events.append((ResourcesListChanged(), types.ResourceListChangedNotification()))
        for event, notification in events:
            await self._publish(event, notification)

    async def _publish(self, event: Any, notification: types.ServerNotification) -> None:
        await self._bus.publish(event)  # 2026-era clients listening on subscriptions/listen
        data = notification.model_dump(by_alias=True, mode="json", exclude_none=True)
        # Handshake-era clients, all at once and each bounded: one that stopped reading must delay neither the
        # others nor the downstream owner relaying this.
        async with anyio.create_task_group() as tg:
            for connection in list(self._connections):
                tg.start_soon(_notify, connection, data["method"], data.get("params"))

    def _remember(self, ctx: ServerRequestContext[Any, Any]) -> None:
        # Handshake-era clients learn of list changes through their connection's standalone channel. The lowlevel
        # context only exposes the connection through the session (see _sdk_private).
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            connection = client_connection(ctx.session)
            if connection is not None:
                self._connections.add(connection)
                self.clients.add(connection)

    def _client(self, ctx: ServerRequestContext[Any, Any]) -> Any:
        connection = client_connection(ctx.session)
        if connection is None or ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return None
        self._remember(ctx)
        return self.clients.add(connection)

    def instructions(self) -> str:
        """Ours, then each connected downstream's own under its name: the agent keeps what its servers told it."""
        parts = [INSTRUCTIONS]
        for downstream in self.downstreams.values():
            if downstream.instructions:
                parts.append(f"## {downstream.name}\n{downstream.instructions}")
        return "\n\n".join(parts)

    async def _downstream_notification(self, downstream: Downstream, message: types.ServerNotification) -> None:
        params = message.params.model_dump(by_alias=True, mode="json", exclude_none=True)  # type: ignore[union-attr]
        if isinstance(message, types.LoggingMessageNotification):
            await self.clients.relay_log(
                downstream.config.namespace, params, skip=lambda c: self.sessions.has_link(downstream.name, c)
            )
        elif isinstance(message, types.ElicitCompleteNotification):
            await self.callers.elicitation_complete(downstream.name, params)
        else:
            await self.clients.relay_updated(params)

    # -- what own tools read ------------------------------------------------------------------------------------------

    def all_breakers(self) -> list[tuple[str, str, CircuitBreaker]]:
        return self.guard.known()

    def find_breaker(self, server: str, tool: str) -> CircuitBreaker | None:
        return self.guard.find(server, tool)

    def breaker(self, server: str, tool: str) -> CircuitBreaker:
        return self.guard.breaker(server, tool)[0]

    def configure(
        self, server: str, pattern: str, settings: Mapping[str, Any], tools: Iterable[str]
    ) -> list[tuple[str, dict[str, tuple[Any, Any, str]]]]:
        changed = self.guard.configure(server, pattern, settings, tools)
        self.surface.refresh(self.catalog)  # tool_list may be among the settings
        return changed

    def tools_of(self, server: str) -> list[str]:
        return self.catalog.tools_of(server)

    def tool_stats(self, server: str, tool: str) -> dict[str, Any]:
        breaker = self.guard.find(server, tool)
        if breaker is None or self._tool_stats is None:
            return {}
        limits = self.guard.limits_of(server, tool)  # why calls were answered without reaching the server, too
        return self._tool_stats(breaker) | {"inflight": limits.inflight, "limited": dict(limits.limited)}

    def server_status(self, name: str) -> dict[str, Any]:
        downstream = self.downstreams[name]
        child = downstream.modern_child.status()  # its 2026-era children, once one was started
        crash_loop = downstream.state is Connection.CRASH_LOOP or (child or {}).get("state") == "crash_loop"
        return {
            "server": name,
            "connection": downstream.state.value,
            "tools": len(downstream.listing.tools),
            "last_error": downstream.last_error,
            "retry_after": None if downstream.session is not None else downstream.retry_after(),
            "connects": downstream.connects,
            "transport": downstream.config.transport,
            "restarts": downstream.restarts,
            **({"modern_child": child} if child is not None else {}),
            **({"stderr_tail": list(downstream.stderr_tail)} if crash_loop else {}),
        }

    def audit(self, action: str, server: str, tool: str, before: str, after: str) -> None:
        audit_log.warning("admin %s: %s/%s %s -> %s", action, server, tool, before, after)

    # -- the MCP server -------------------------------------------------------------------------------------------

    def build_server(self) -> Server[Any]:
        with warnings.catch_warnings():
            # Logging is deprecated from 2026-07-28 on, but handshake-era clients use it: it is relayed for them.
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            self._server = self._new_server()
        self._server.middleware.append(self.tasks)
        self._server.middleware.append(modern_lane.capture_modern_requests)
        self._server.middleware.append(
            ForwardUnknownMethods(
                self._server, self._only_server, self._forward, self._session_of, self.wait_first_attempts
            )
        )
        return self._server

    def _only_server(self) -> str | None:
        """The one server circuitbox fronts, where a method it does not know can go; None when there are several."""
        return next(iter(self.downstreams)) if len(self.downstreams) == 1 else None

    def _session_of(self, server: str) -> Any:
        return self.downstreams[server].session

    def _new_server(self) -> Server[Any]:
        return _ProxyServer(
            "circuitbox",
            version=__version__,
            instructions=self.instructions(),
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_prompts=self._list_prompts,
            on_get_prompt=self._get_prompt,
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_templates,
            on_read_resource=self._read_resource,
            on_subscriptions_listen=ListenHandler(self._bus),
            on_set_logging_level=self._set_level,
            on_completion=self._complete,
            on_subscribe_resource=self._subscribe,
            on_unsubscribe_resource=self._unsubscribe,
            on_roots_list_changed=self._roots_changed,
        )

    def initialization_options(self, server: Server[Any]) -> InitializationOptions:
        return server.create_initialization_options(LIST_CHANGED)

    async def _list_tools(self, ctx: Any, params: Any) -> types.ListToolsResult:
        self._remember(ctx)
        await self.wait_first_attempts()
        catalog, own, view = self.catalog, self.own, self.surface.view
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:  # no tasks in that era (tasks.py)
            pages = self._pages.pages(
                "tools/2026",
                (catalog, own, view),
                lambda: [tool for tool, _ in own.values()] + without_tasks(apply_view(catalog.tool_list(), view)),
            )
        else:
            pages = self._pages.pages(
                "tools",
                (catalog, own, view),
                lambda: [tool for tool, _ in own.values()] + apply_view(catalog.tool_list(), view),
            )
        tools, cursor = pages.page(params)
        return types.ListToolsResult(tools=tools, next_cursor=cursor)

    async def _call_tool(
        self, ctx: Any, params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        with request_meta.serving(params.meta):
            return await self._serve_call(ctx, params)

    async def _serve_call(
        self, ctx: Any, params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        own = self.own.get(params.name)
        if own is not None:
            arguments = dict(params.arguments or {})
            check_arguments(own[0], arguments)
            return await own[1](self, arguments)
        found = self.catalog.tools.get(params.name)
        if found is None and self._starting():
            # Which connection serves the call depends on its server, and the call must be known as that server's
            # caller before the server can ask the client something while answering it.
            await self.wait_first_attempts()
            found = self.catalog.tools.get(params.name)
        if found is None:
            result = await self.call(params.name, params.arguments, _progress_relay(ctx))
        elif (
            ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
            and self._tg is not None
            and not await self.downstreams[found[0].server].speaks_modern()
        ):
            return await self._bridged_call(found[0].server, params, ctx)  # a downstream of the handshake era only
        else:
            result = await self._call_on_its_connection(found[0].server, params, ctx)
        if traces.active() and (found := found or self.catalog.tools.get(params.name)) is not None:
            route = found[0]  # known now even when the call came before its server's first listing
            traces.annotate_call(route.server, result, self.guard.find(route.server, route.name), _session_id(ctx))
        return result

    async def _bridged_call(
        self, server: str, params: types.CallToolRequestParams, ctx: Any
    ) -> types.CallToolResult | types.InputRequiredResult:
        """A 2026-era client's call: a question its downstream asks mid-call comes back as input-required
        (bridge.py); the call goes on in our task group until the client's retry answers it."""
        assert self._tg is not None

        async def start(parked: ParkedCall) -> types.CallToolResult | types.InputRequiredResult:
            async def progress(value: float, total: float | None, message: str | None) -> None:
                if parked.progress is not None:  # relayed to whichever request of the client is waiting now
                    await parked.progress(value, total, message)

            return await self._call_on_its_connection(server, params, ctx, caller=parked, progress=progress)

        capabilities = ctx.session.client_capabilities
        return await self.bridge.call(self._tg, params, capabilities, start, _progress_relay(ctx))

    async def _call_on_its_connection(
        self,
        server: str,
        params: types.CallToolRequestParams,
        ctx: Any,
        *,
        caller: Any = None,
        progress: Any = None,
    ) -> types.CallToolResult | types.InputRequiredResult:
        """On the client's own connection to `server` when it gets one (sessions.py), else on the shared one.

        `caller`: who answers the downstream's questions, when not the request of `ctx` (a bridged call). A call
        its circuit rejects now opens no connection: it is answered at once."""
        try:
            link = None if self._rejects_now(params.name) else await self._link(server, ctx)
        except SessionLimitError as exc:  # not the downstream's failure: no breaker moves
            return error_result(f"Tool '{params.name}' was not called: {exc}.")
        if link is None:
            with self.callers.calling(server, caller or ctx):
                return await self.call(params.name, params.arguments, progress or _progress_relay(ctx))
        with link.calling(ctx):
            return await self.call(params.name, params.arguments, _progress_relay(ctx), via=link.downstream)

    def _rejects_now(self, name: str) -> bool:
        found = self.catalog.tools.get(name)
        breaker = None if found is None else self.guard.find(found[0].server, found[0].name)
        if breaker is None:
            return False
        state = breaker.state
        return state is CircuitState.FORCED_OPEN or (state is CircuitState.OPEN and bool(breaker.open_remaining()))

    def _task_server(self, name: str) -> str | None:
        """The server of a published tool when it relays task-augmented calls, else None."""
        found = self.catalog.tools.get(name)
        downstream = self.downstreams.get(found[0].server) if found is not None else None
        return downstream.name if downstream is not None and offers_tool_tasks(downstream.capabilities) else None

    def _serving_task(self, task: Relayed, ctx: Any) -> AbstractContextManager[None]:
        """While a request about a task is in flight, its server's questions go to the task's client."""
        connection = client_connection(ctx.session)
        for link in self.sessions.links_of(connection) if connection is not None else ():
            if link.downstream is task.downstream:
                return link.calling(ctx)
        return self.callers.calling(task.server, ctx)

    def _has_own_link(self, server: str, ctx: Any) -> bool:
        """Whether the client of `ctx` reaches `server` on a connection of its own (see sessions.py)."""
        downstream = self.downstreams.get(server)
        if self.stdio_upstream or downstream is None:
            return False
        return own_connection_of(downstream.config, ctx) is not None

    async def _link(self, server: str, ctx: Any) -> ClientLink | None:
        """The client's own connection to `server`, opened on first use; None when it uses the shared one.

        Raises:
            SessionLimitError: it needs one and the server has `max_sessions` open already.
        """
        if not self._has_own_link(server, ctx):
            return None
        config = self.downstreams[server].config
        return await self.sessions.link(config, own_connection_of(config, ctx))

    async def _server_request(self, downstream: Downstream, request: types.ServerRequest) -> Any:
        """A downstream asks the client something (sampling, elicitation, roots): only the caller may answer."""
        connections = self.clients.connections()
        only = connections[0] if self.stdio_upstream and len(connections) == 1 else None
        return await self.callers.relay(downstream.name, request, only)

    async def _client_task_request(self, downstream: Downstream, method: str, params: dict[str, Any]) -> Any:
        """A shared connection's request about its client's own task: offered only behind the stdio upstream,
        whose one client it asks (the caller in flight, or the only connection)."""
        ctx = self.callers.caller(downstream.name)
        connections = self.clients.connections()
        client = client_connection(ctx.session) if ctx is not None else None
        if client is None and len(connections) == 1:
            client = connections[0]
        return await self.tasks.client_request(downstream, client, method, params)

    async def _roots_changed(self, ctx: Any, params: Any) -> None:
        """A client's roots changed: every downstream hears of it (they ask the client for the new list)."""
        self._remember(ctx)
        connection = client_connection(ctx.session)
        own = [link.downstream for link in self.sessions.links_of(connection)] if connection is not None else []
        for downstream in [*self.downstreams.values(), *own]:
            session = downstream.session
            if session is not None:
                try:
                    await session.send_roots_list_changed()
                except Exception as exc:
                    logger.debug("could not tell server %r its client's roots changed: %s", downstream.name, exc)

    @overload
    async def call(
        self,
        name: str,
        arguments: dict[str, Any] | None,
        progress: Any = None,
        *,
        via: Downstream | None = None,
        wire: Literal[False] = False,
    ) -> types.CallToolResult | types.InputRequiredResult: ...

    @overload
    async def call(
        self, name: str, arguments: dict[str, Any] | None, progress: Any = None, *, via: Downstream | None = None,
        wire: bool,
    ) -> types.CallToolResult | types.InputRequiredResult | WireResult: ...  # fmt: skip

    async def call(
        self,
        name: str,
        arguments: dict[str, Any] | None,
        progress: Any = None,
        *,
        via: Downstream | None = None,
        wire: bool = False,
    ) -> types.CallToolResult | types.InputRequiredResult | WireResult:
        """Route a published tool name to its downstream once (`via`: the caller's own connection to it); the guard
        owns the rest (breaker, fallback). `wire`: a plain success may come back as it came (`Guard.call`).

        Raises:
            MCPError: unknown tool, or the downstream rejected the arguments.
        """
        found = self.catalog.tools.get(name)
        if found is None and self._starting():
            await self.wait_first_attempts()  # an agent may call a tool it knows before its server is up
            found = self.catalog.tools.get(name)
        if found is None:
            owner = self._not_connected_owner(name)
            if owner is not None:  # not an unknown tool: its server is not up (yet)
                return unavailable_result(owner, name)
            unprefixed = self._unprefixed_owner(name)
            if unprefixed is not None and self._tool_name(unprefixed, name) == name:
                # In no listing, so no breaker (one per arbitrary name would grow without bound): the server's own
                # answer, as it would give it directly (an isError result or its own JSON-RPC error).
                params = types.CallToolRequestParams(name=name, arguments=arguments, _meta=request_meta.current())
                request = types.CallToolRequest(params=params)
                return await self._forward_input(unprefixed, request, types.CallToolResult, None)
            raise MCPError(
                code=types.INVALID_PARAMS,
                message=f"Unknown tool: {name!r}. Call tools/list to see the tools circuitbox publishes.",
            )
        route, definition = found
        downstream = via if via is not None else self.downstreams[route.server]
        if self.drain.closing:
            return error_result(f"Tool '{name}' was not called: {SHUTTING_DOWN}.")
        result: types.CallToolResult | types.InputRequiredResult | WireResult | None = None
        with self.drain.track():
            result = await self.guard.call(
                downstream,
                route.name,
                arguments,
                progress,
                published=name,
                resolve=self._route,
                definition=definition,
                wire=wire,
            )
        if result is None:  # cut short by shutdown: still an answer
            return error_result(
                f"Tool '{name}' did not answer within circuitbox's shutdown_timeout "
                f"({self.config.shutdown_timeout:g}s); the call was cancelled because circuitbox is shutting down."
            )
        return result

    def reject_now(self, name: str) -> dict[str, Any] | None:
        """`call`'s result, as the wire has it, when the circuit of the published tool `name` refuses the call at
        once (the guard's `reject_now`), given without awaiting anything, so a lane can answer a fast-fail in the
        task that read the request; None: `call` it."""
        found = self.catalog.tools.get(name)
        if found is None or self.drain.closing:
            return None
        route = found[0]
        return self.guard.reject_now(self.downstreams[route.server], route.name, name)

    def _route(self, name: str) -> tuple[Downstream, str] | None:
        found = self.catalog.tools.get(name)
        if found is None or found[0].server not in self.downstreams:
            return None
        return self.downstreams[found[0].server], found[0].name

    async def _list_prompts(self, ctx: Any, params: Any) -> types.ListPromptsResult:
        self._remember(ctx)
        await self.wait_first_attempts()
        prompts, cursor = self._pages.pages("prompts", (self.catalog,), self.catalog.prompt_list).page(params)
        return types.ListPromptsResult(prompts=prompts, next_cursor=cursor)

    async def _get_prompt(
        self, ctx: Any, params: types.GetPromptRequestParams
    ) -> types.GetPromptResult | types.InputRequiredResult:
        found = self.catalog.prompts.get(params.name)
        if found is None and self._starting():
            await self.wait_first_attempts()  # like a tool call: the first request may come before the listing
            found = self.catalog.prompts.get(params.name)
        if found is not None:
            route = found[0]
        elif (unprefixed := self._unprefixed_owner(params.name)) is not None:
            route = Route(unprefixed, params.name)
        else:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown prompt: {params.name!r}")
        request = types.GetPromptRequest(
            params=types.GetPromptRequestParams(
                name=route.name, arguments=params.arguments, _meta=request_meta.forwarded(params.meta)
            )
        )
        return await self._forward_input(route.server, request, types.GetPromptResult, ctx)

    async def _list_resources(self, ctx: Any, params: Any) -> types.ListResourcesResult:
        self._remember(ctx)
        await self.wait_first_attempts()
        resources, cursor = self._pages.pages("resources", (self.catalog,), self.catalog.resource_list).page(params)
        return types.ListResourcesResult(resources=resources, next_cursor=cursor)

    async def _list_templates(self, ctx: Any, params: Any) -> types.ListResourceTemplatesResult:
        await self.wait_first_attempts()
        pages = self._pages.pages("resources/templates", (self.catalog,), self.catalog.template_list)
        templates, cursor = pages.page(params)
        return types.ListResourceTemplatesResult(resource_templates=templates, next_cursor=cursor)

    async def _read_resource(
        self, ctx: Any, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult | types.InputRequiredResult:
        server = self.catalog.resource_server(str(params.uri))
        if server is None and self._starting():
            await self.wait_first_attempts()
            server = self.catalog.resource_server(str(params.uri))
        server = server or self._only_resource_server()
        if server is None:
            raise MCPError(code=-32002, message=f"Resource not found: {params.uri} (no single server offers it)")
        forwarded = types.ReadResourceRequestParams(uri=params.uri, _meta=request_meta.forwarded(params.meta))
        request = types.ReadResourceRequest(params=forwarded)
        return await self._forward_input(server, request, types.ReadResourceResult, ctx)

    async def _set_level(self, ctx: Any, params: types.SetLevelRequestParams) -> types.EmptyResult:
        """The client's level is its own: its own connections get it as it is; each shared one that logs gets the
        most verbose level any client wants."""
        state = self._client(ctx)
        if state is not None:
            state.level = params.level
        level = self.clients.most_verbose_level() or params.level
        for downstream in list(self.downstreams.values()):
            caps = downstream.capabilities
            if downstream.session is None or caps is None or caps.logging is None:
                continue
            own = self._has_own_link(downstream.name, ctx)
            request = types.SetLevelRequest(params=types.SetLevelRequestParams(level=params.level if own else level))
            try:
                await self._forward(downstream.name, request, types.EmptyResult, ctx if own else None)
            except MCPError as exc:
                logger.warning("server %r refused logging/setLevel: %s", downstream.name, exc.error.message)
        return types.EmptyResult()

    async def _complete(self, ctx: Any, params: types.CompleteRequestParams) -> types.CompleteResult:
        if self._starting():
            await self.wait_first_attempts()
        ref = params.ref
        if isinstance(ref, types.PromptReference):
            found = self.catalog.prompts.get(ref.name)
            if found is not None:
                server, ref = found[0].server, types.PromptReference(name=found[0].name)
            elif (unprefixed := self._unprefixed_owner(ref.name)) is not None:
                server = unprefixed
            else:
                raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown prompt: {ref.name!r}")
        else:
            routed = (
                self.catalog.resource_server(ref.uri) or self._template_server(ref.uri) or self._only_resource_server()
            )
            if routed is None:
                raise MCPError(code=types.INVALID_PARAMS, message=f"No single server offers {ref.uri!r}")
            server = routed
        request = types.CompleteRequest(
            params=types.CompleteRequestParams(ref=ref, argument=params.argument, context=params.context)
        )
        return await self._forward(server, request, types.CompleteResult, ctx)

    def _tool_name(self, server: str, tool: str) -> str | None:
        """The name `server`'s tool `tool` is published under (before the namespace), or None: not published."""
        config = self.downstreams[server].config
        return config.public_name(tool) if config.publishes(tool) else None

    def _unprefixed_owner(self, name: str) -> str | None:
        """Where a tool or prompt name that no listing has goes: the one server that publishes its names as they are
        (`"namespace": ""`), unless the name carries another server's namespace. That server answers for itself, as
        it would directly (its own error for a name it does not know, a tool it did not list yet)."""
        unprefixed = [d.name for d in self.downstreams.values() if not d.config.namespace]
        if len(unprefixed) != 1:
            return None
        namespaces = (d.config.namespace for d in self.downstreams.values() if d.config.namespace)
        return None if any(name.startswith(f"{ns}__") for ns in namespaces) else unprefixed[0]

    def _only_resource_server(self) -> str | None:
        """Where a URI that no listing or template has goes: the one server that declares resources (URIs carry no
        namespace), which answers for itself: a resource it serves unlisted, a subscription, or its own error."""
        servers = [d.name for d in self.downstreams.values() if d.capabilities and d.capabilities.resources is not None]
        return servers[0] if len(servers) == 1 else None

    def _template_server(self, uri_template: str) -> str | None:
        servers = {server for _, server, template in self.catalog.templates if template.uri_template == uri_template}
        return servers.pop() if len(servers) == 1 else None

    async def _subscribe(self, ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
        uri = str(params.uri)
        server = self._resource_owner(uri)
        if self._has_own_link(server, ctx):  # on the client's own connection, which tells only it
            request = types.SubscribeRequest(params=types.SubscribeRequestParams(uri=uri))
            await self._forward(server, request, types.EmptyResult, ctx)
            return types.EmptyResult()
        first = not self.clients.subscribed(uri)
        state = self._client(ctx)
        if first:
            request = types.SubscribeRequest(params=types.SubscribeRequestParams(uri=uri))
            await self._forward(server, request, types.EmptyResult)
        if state is not None:
            state.subscriptions.add(uri)
        return types.EmptyResult()

    async def _unsubscribe(self, ctx: Any, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        uri = str(params.uri)
        server = self._resource_owner(uri)
        if self._has_own_link(server, ctx):
            request = types.UnsubscribeRequest(params=types.UnsubscribeRequestParams(uri=uri))
            await self._forward(server, request, types.EmptyResult, ctx)
            return types.EmptyResult()
        state = self._client(ctx)
        if state is not None:
            state.subscriptions.discard(uri)
        if not self.clients.subscribed(uri):  # the last subscriber left
            request = types.UnsubscribeRequest(params=types.UnsubscribeRequestParams(uri=uri))
            await self._forward(server, request, types.EmptyResult)
        return types.EmptyResult()

    def _resource_owner(self, uri: str) -> str:
        server = self.catalog.resource_server(uri) or self._only_resource_server()
        if server is None:
            raise MCPError(code=-32002, message=f"Resource not found: {uri} (no single server offers it)")
        return server

    async def _forward(self, server: str, request: Any, result_type: type[ResultT], ctx: Any = None) -> ResultT:
        """Prompts and resources are not guarded by breakers, but still bounded and never left unanswered. With the
        client's `ctx`, on its own connection to `server` when it has one."""
        return await self._bounded(server, ctx, lambda downstream: downstream.request(request, result_type))

    async def _forward_input(
        self, server: str, request: Any, result_type: type[ResultT], ctx: Any
    ) -> ResultT | types.InputRequiredResult:
        """`_forward` of a request that may end needing input (a 2026-era client's, on the modern lane)."""
        return await self._bounded(server, ctx, lambda downstream: downstream.request_or_input(request, result_type))

    async def _bounded(self, server: str, ctx: Any, send: Callable[[Downstream], Awaitable[AnswerT]]) -> AnswerT:
        downstream = self.downstreams[server]
        timeout = self.config.policy(server).call_timeout
        if self.drain.closing:
            raise MCPError(code=types.INTERNAL_ERROR, message=SHUTTING_DOWN)
        try:
            link = await self._link(server, ctx) if ctx is not None else None
        except SessionLimitError as exc:
            raise MCPError(code=types.INTERNAL_ERROR, message=str(exc)) from None
        if link is not None:
            downstream = link.downstream
        try:
            with self.drain.track(), anyio.fail_after(timeout), link.calling(ctx) if link else nullcontext():
                return await send(downstream)
            raise MCPError(code=types.INTERNAL_ERROR, message="circuitbox is shutting down: the request was cancelled")
        except TimeoutError:
            raise MCPError(
                code=types.INTERNAL_ERROR, message=f"server {server!r} did not answer in {timeout:g}s"
            ) from None
        except DownstreamUnavailableError as exc:
            retry = math.ceil(downstream.retry_after())
            raise MCPError(code=types.INTERNAL_ERROR, message=f"{exc}; retry in {retry} s") from None
        except MCPError:
            raise
        except Exception as exc:
            raise MCPError(code=types.INTERNAL_ERROR, message=f"server {server!r}: {exc}") from exc


async def _notify(connection: Any, method: str, params: Any) -> None:
    try:
        with anyio.move_on_after(1):
            await connection.outbound.notify(method, params)
    except Exception as exc:
        logger.debug("could not notify a client of a list change: %s", exc)


def _connection(server: ServerConfig) -> tuple[Any, ...]:
    """What it takes to reach a server: when any of it changes on reload, the downstream is restarted."""
    return (
        server.transport,
        server.command,
        tuple(server.args),
        dict(server.env),
        server.cwd,
        server.url,
        dict(server.headers),
    )


def _session_id(ctx: Any) -> str | None:
    """The upstream HTTP session of a request (None over stdio, where there is one client)."""
    headers = getattr(getattr(ctx, "request", None), "headers", None)
    return headers.get("mcp-session-id") if headers is not None else None


def _progress_relay(ctx: Any) -> Any:
    meta = ctx.meta
    if meta is None or meta.get("progress_token") is None:
        return None
    session = ctx.session

    async def relay(progress: float, total: float | None, message: str | None) -> None:
        await session.report_progress(progress, total, message)

    return relay


__all__ = ["Proxy", "error_result"]
