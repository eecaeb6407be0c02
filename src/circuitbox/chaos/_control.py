"""`chaos_control`: the tool that changes the chaos server at run time (inject and heal outages over MCP)."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

import mcp_types as types
from mcp.server import ServerRequestContext

from circuitbox.chaos._behaviours import SYNTAX, BehaviourError, parse_behaviour
from circuitbox.chaos._state import ChaosState, UnknownToolError

CONTROL_TOOL = "chaos_control"
ACTIONS = ("list", "stats", "set", "add_tool", "remove_tool", "reset", "notify")

CONTROL_TOOL_DEF = types.Tool(
    name=CONTROL_TOOL,
    description=(
        "Control the chaos server. action: list (tools and behaviour syntax), stats (per-tool counters), "
        "set (tool, behaviour; tool '*' sets all), add_tool (tool, behaviour), remove_tool (tool), "
        "reset (initial tools, behaviours and counters), notify (send tools/list_changed). "
        "add_tool/remove_tool/reset send tools/list_changed when the tool names change, "
        "unless notify is false."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "action": {"type": "string", "enum": list(ACTIONS)},
            "tool": {"type": "string"},
            "behaviour": {"type": "string", "description": "KIND[:ARG...], e.g. latency:0.5, fail:0.3, hang"},
            "notify": {"type": "boolean", "default": True},
        },
        "required": ["action"],
    },
)


class _ControlError(Exception):
    """A control request that cannot be applied (reported to the caller as an isError result)."""


def _result(data: dict[str, Any]) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(data, sort_keys=True))],
        structured_content=data,
    )


def _tool_arg(args: dict[str, Any]) -> str:
    tool = args.get("tool")
    if not isinstance(tool, str) or not tool:
        raise _ControlError(f"action {args.get('action')!r} needs a 'tool' (string)")
    return tool


def _behaviour_arg(args: dict[str, Any], default: str | None = None) -> str:
    spec = args.get("behaviour", default)
    if not isinstance(spec, str):
        raise _ControlError(f"action {args.get('action')!r} needs a 'behaviour' (string), e.g. 'latency:0.5'")
    return spec


Announce = Callable[[ServerRequestContext[Any]], Awaitable[None]]
"""Tells clients the tool list changed (in whichever way the connection's protocol era delivers it)."""


async def _apply(
    ctx: ServerRequestContext[Any], state: ChaosState, args: dict[str, Any], announce: Announce
) -> dict[str, Any]:
    action = args.get("action")
    notify = args.get("notify", True) is not False
    changed = False
    out: dict[str, Any] = {"action": action}
    if action == "list":
        out["tools"] = {n: e.behaviour.spec for n, e in state.tools.items()}
        out["behaviours"] = SYNTAX.splitlines()
    elif action == "stats":
        out.update(state.stats(), pid=os.getpid())
    elif action == "set":
        behaviour = parse_behaviour(_behaviour_arg(args))
        out.update(tools=state.set(_tool_arg(args), behaviour), behaviour=behaviour.spec)
    elif action == "add_tool":
        tool, behaviour = _tool_arg(args), parse_behaviour(_behaviour_arg(args, "healthy"))
        changed = state.add(tool, behaviour)
        out.update(tool=tool, added=changed, behaviour=behaviour.spec)
    elif action == "remove_tool":
        tool = _tool_arg(args)
        state.remove(tool)
        changed = True
        out.update(tool=tool)
    elif action == "reset":
        changed = state.reset()
    elif action == "notify":
        changed = True
    else:
        raise _ControlError(f"unknown action {action!r}; known: {', '.join(ACTIONS)}")
    if changed and notify:
        await announce(ctx)
    out["notified"] = changed and notify
    return out


async def control(
    ctx: ServerRequestContext[Any], state: ChaosState, args: dict[str, Any], announce: Announce
) -> types.CallToolResult:
    """Apply one `chaos_control` call; a bad request is an isError result naming the problem."""
    try:
        return _result(await _apply(ctx, state, args, announce))
    except (_ControlError, BehaviourError) as exc:
        message = str(exc)
    except UnknownToolError as exc:
        message = f"unknown tool {exc.args[0]!r}; tools: {', '.join(state.tools) or '(none)'}"
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=f"chaos_control: {message}")], is_error=True
    )
