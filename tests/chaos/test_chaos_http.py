"""`circuitbox chaos --transport http` as a real child process, through the SDK's streamable HTTP client."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client

from tests.chaos.support import CHAOS, Inbox, tool_args, wait_for_stat
from tests.net import free_port, wait_for_port

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def http_chaos(*args: str) -> AsyncIterator[tuple[int, list[bytes]]]:
    """The chaos server on a free port; the list receives its stdout once it has stopped."""
    port = free_port()
    command = [*CHAOS, "--transport", "http", "--port", str(port), *args]
    stdout: list[bytes] = []
    process = await anyio.open_process(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    async with process:
        try:
            await wait_for_port(port, 20)
            yield port, stdout
        finally:
            process.terminate()
            with anyio.fail_after(10):
                await process.wait()
                assert process.stdout is not None
                stdout += [chunk async for chunk in process.stdout]


async def test_the_http_transport_serves_behaviours_counters_and_list_changed_at_mcp() -> None:
    tools = tool_args("echo=healthy", "broken=protocol_error", "stuck=hang")
    async with http_chaos(*tools) as (port, stdout):
        inbox = Inbox()
        with anyio.fail_after(20):
            async with (
                streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (read, write),
                ClientSession(read, write, message_handler=inbox) as session,
            ):
                await session.initialize()
                caps = session.server_capabilities
                assert caps is not None and caps.tools is not None and caps.tools.list_changed is True
                assert (await session.call_tool("echo", {"x": 1})).structured_content == {
                    "tool": "echo", "arguments": {"x": 1}, "call": 1
                }  # fmt: skip
                with pytest.raises(MCPError) as caught:
                    await session.call_tool("broken", {})
                assert caught.value.code == -32603
                with anyio.move_on_after(0.3):
                    await session.call_tool("stuck", {})
                assert (await wait_for_stat(session, "stuck", "cancelled", 1))["calls"] == 1
                await session.call_tool("chaos_control", {"action": "add_tool", "tool": "fresh"})
                await inbox.list_changed.wait()
                assert "fresh" in {t.name for t in (await session.list_tools()).tools}
    assert stdout == []  # logs never go to stdout
