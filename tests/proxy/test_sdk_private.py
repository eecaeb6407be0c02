"""What `circuitbox.server._sdk_private` relies on in the SDK: this fails when an SDK release changes it."""

from __future__ import annotations

from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.server import Server

from circuitbox.server._sdk_private import client_connection

pytestmark = pytest.mark.anyio


async def test_a_handshake_era_session_exposes_one_connection_per_client_with_an_outbound_channel() -> None:
    seen: list[Any] = []

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        connection = client_connection(ctx.session)
        seen.append(connection)
        assert connection is not None, "ServerSession._connection is gone: update circuitbox.server._sdk_private"
        await connection.outbound.notify("notifications/tools/list_changed", None)  # what the proxy relays with
        return types.CallToolResult(content=[types.TextContent(text="ok")])

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[types.Tool(name="t", input_schema={"type": "object"})])

    server = Server("probe", on_call_tool=call_tool, on_list_tools=list_tools)
    with anyio.fail_after(10):
        async with Client(server, mode="legacy") as first, Client(server, mode="legacy") as second:
            await first.call_tool("t", {})
            await first.call_tool("t", {})
            await second.call_tool("t", {})
    assert seen[0] is seen[1] and seen[0] is not seen[2]  # one per client, stable across its requests
