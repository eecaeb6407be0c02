"""The chaos MCP server: a low-level `mcp.server.Server` whose tools act out their behaviours.

The low-level server is used (not `MCPServer`) because it lets a handler choose between an isError
result and a JSON-RPC error (raise `MCPError`), and exposes `ctx.session` for progress and
list_changed notifications.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any, Protocol

import anyio
import mcp_types as types
from mcp import MCPError
from mcp.server import NotificationOptions, Server, ServerRequestContext
from mcp.server.models import InitializationOptions
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from circuitbox import __version__
from circuitbox.chaos._behaviours import SYNTAX, Behaviour
from circuitbox.chaos._control import CONTROL_TOOL, CONTROL_TOOL_DEF, control
from circuitbox.chaos._state import ChaosState, Outcome, ToolEntry, UnknownToolError

logger = logging.getLogger("circuitbox.chaos")

Ctx = ServerRequestContext[Any]

ECHO_INPUT = {"type": "object", "properties": {"message": {"type": "string"}}, "additionalProperties": True}
ADD_INPUT = {
    "type": "object",
    "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
    "required": ["a", "b"],
}
ADD_OUTPUT = {"type": "object", "properties": {"sum": {"type": "number"}}, "required": ["sum"]}
RESOURCE_NOT_FOUND = -32002  # the spec's code; mcp_types has no constant for it
GARBAGE_LINE = "chaos garbage %d: this line is not JSON-RPC {{{"


class Wire(Protocol):
    """Raw access to the protocol stream, for garbage. Only stdio has one."""

    async def write_lines(self, lines: list[str]) -> None: ...


class ChaosServer(Server[Any]):
    """A `Server` that advertises tools.listChanged whoever builds its initialization options.

    The streamable HTTP runner calls `create_initialization_options()` with no arguments, which would
    advertise `listChanged: false`; overriding the default here covers stdio and HTTP alike.
    """

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options or NotificationOptions(tools_changed=True),
            experimental_capabilities,
            extensions,
        )


def _text(text: str, *, error: bool = False, data: dict[str, Any] | None = None) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], structured_content=data, is_error=error
    )


def tool_def(entry: ToolEntry) -> types.Tool:
    """The listed definition of a chaos tool (depends on its fixed shape and hints, never on its behaviour)."""
    annotations = None
    if entry.hints:
        annotations = types.ToolAnnotations(
            read_only_hint="readOnly" in entry.hints or None, idempotent_hint="idempotent" in entry.hints or None
        )
    if entry.shape == "add":
        return types.Tool(
            name=entry.name,
            description="Chaos tool: adds a and b (behaviour switchable with chaos_control).",
            input_schema=ADD_INPUT,
            output_schema=ADD_OUTPUT,
            annotations=annotations,
        )
    return types.Tool(
        name=entry.name,
        description="Chaos tool: echoes its arguments (behaviour switchable with chaos_control).",
        input_schema=ECHO_INPUT,
        annotations=annotations,
    )


def answer(entry: ToolEntry, args: dict[str, Any]) -> types.CallToolResult:
    """The healthy answer: a sum for an add tool, else an echo."""
    if entry.shape == "add":
        a, b = args.get("a"), args.get("b")
        if isinstance(a, int | float) and isinstance(b, int | float) and bool not in (type(a), type(b)):
            return _text(str(a + b), data={"sum": a + b})
        # Worded like the SDK's own validation failure, so a proxy can classify it as a caller mistake.
        return _text("Input validation error: 'a' and 'b' must be numbers", error=True)
    message = args.get("message")
    text = message if isinstance(message, str) else json.dumps(args, sort_keys=True)
    return _text(text, data={"tool": entry.name, "arguments": args, "call": entry.stats.calls})


async def perform(
    ctx: Ctx, entry: ToolEntry, b: Behaviour, args: dict[str, Any], wire: Wire | None
) -> types.CallToolResult:
    """Act out one resolved behaviour.

    Raises:
        MCPError: for protocol_error.
    """
    if b.kind == "error":
        # Worded as a server in distress words it, so a proxy's default classification counts it as a failure.
        return _text(b.message or f"chaos: {entry.name} failed: service unavailable (injected error)", error=True)
    if b.kind == "protocol_error":
        raise MCPError(b.code, f"chaos: {entry.name} injected protocol error")
    if b.kind == "latency":
        await anyio.sleep(b.seconds[0])
    elif b.kind == "hang":
        await anyio.sleep_forever()
    elif b.kind == "crash":
        logger.warning("chaos: %s crashes the process (exit %d)", entry.name, b.code)
        os._exit(b.code)  # abrupt on purpose: no cleanup, no answer, like a real crash
    elif b.kind == "garbage":
        lines = [GARBAGE_LINE % i for i in range(b.count)]
        if wire is None:
            logger.warning("chaos: %s: no stdio wire (HTTP); garbage goes to the log: %s", entry.name, lines)
        else:
            await wire.write_lines(lines)
        if b.then == "exit":
            logger.warning("chaos: %s exits after garbage", entry.name)
            os._exit(1)
        if b.then == "hang":
            await anyio.sleep_forever()
    elif b.kind == "flood":  # as fast as the transport takes them: a server spamming its client's log
        pad = "f" * b.size
        for n in range(b.count):
            await ctx.session.send_log_message(level="info", data=f"{n} {pad}", logger=entry.name)
    elif b.kind == "progress":
        for step in range(1, b.count + 1):
            await ctx.session.report_progress(step, b.count, f"step {step}/{b.count}")
            await anyio.sleep(b.seconds[0])
    return answer(entry, args)


def build_server(state: ChaosState, wire: Wire | None = None, *, name: str = "circuitbox-chaos") -> ChaosServer:
    """A chaos server over `state`; `wire` is the stdio protocol stream (garbage goes there)."""
    bus = InMemorySubscriptionBus()

    async def announce(ctx: Ctx) -> None:
        # 2026-07-28 clients hear of changes on their subscriptions/listen streams; handshake-era clients
        # get a connection-scoped notifications/tools/list_changed, as a real server would send.
        await bus.publish(ToolsListChanged())
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            await ctx.session.send_tool_list_changed()

    async def list_tools(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[*(tool_def(e) for e in state.tools.values()), CONTROL_TOOL_DEF])

    async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        args = params.arguments or {}
        if params.name == CONTROL_TOOL:
            return await control(ctx, state, args, announce)
        try:
            entry, behaviour = state.begin(params.name)
        except UnknownToolError:
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}") from None
        outcome: Outcome = "protocol_errors"  # anything raised becomes a JSON-RPC error
        try:
            result = await perform(ctx, entry, behaviour, args, wire)
            outcome = "errors" if result.is_error else "ok"
            return result
        except anyio.get_cancelled_exc_class():
            outcome = "cancelled"
            logger.info("chaos: %s cancelled", params.name)
            raise
        finally:
            state.end(entry, outcome)

    async def list_prompts(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        arg = types.PromptArgument(name="topic", description="what to rehearse", required=False)
        prompt = types.Prompt(name="chaos_prompt", description="A prompt from the chaos server.", arguments=[arg])
        return types.ListPromptsResult(prompts=[prompt])

    async def get_prompt(ctx: Ctx, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        if params.name != "chaos_prompt":
            raise MCPError(types.INVALID_PARAMS, f"Unknown prompt: {params.name}")
        topic = (params.arguments or {}).get("topic", "an outage")
        text = f"Rehearse {topic} with the chaos server."
        message = types.PromptMessage(role="user", content=types.TextContent(type="text", text=text))
        return types.GetPromptResult(description="chaos prompt", messages=[message])

    resources: dict[str, tuple[str, str, Callable[[], str]]] = {
        "chaos://stats": ("stats", "application/json", lambda: json.dumps(state.stats(), sort_keys=True)),
        "chaos://behaviours": ("behaviours", "text/plain", lambda: SYNTAX),
    }

    async def list_resources(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        listed = [types.Resource(uri=u, name=n, mime_type=m) for u, (n, m, _) in resources.items()]
        return types.ListResourcesResult(resources=listed)

    async def read_resource(ctx: Ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        if params.uri not in resources:
            raise MCPError(RESOURCE_NOT_FOUND, f"Unknown resource: {params.uri}")
        _, mime, render = resources[params.uri]
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=params.uri, mime_type=mime, text=render())]
        )

    return ChaosServer(
        name,
        version=__version__,
        instructions="Fault-injecting MCP server; see the chaos_control tool.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_list_resources=list_resources,
        on_read_resource=read_resource,
        on_subscriptions_listen=ListenHandler(bus),
    )
