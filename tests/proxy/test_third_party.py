"""Third-party MCP servers behind the proxy: PyPI mcp-server-time and npm server-everything (stdio, HTTP, SSE)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest

from tests.net import free_port
from tests.proxy.harness import (
    everything_http_args,
    everything_server,
    proxy_session,
    running_process,
    time_server,
)

pytestmark = pytest.mark.anyio


async def test_mcp_server_time_is_published_under_its_namespace_and_answers(tmp_path: Path) -> None:
    async with proxy_session(tmp_path, {"mcpServers": {"time": time_server()}}) as session:
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
        assert {"time__get_current_time", "time__convert_time", "circuit_status", "circuit_metrics"} <= set(tools)
        assert tools["time__get_current_time"].input_schema["properties"]["timezone"]["type"] == "string"
        result = await session.call_tool("time__get_current_time", {"timezone": "UTC"})
        assert not result.is_error
        assert "UTC" in result.content[0].text  # type: ignore[union-attr]


async def test_everything_over_stdio_passes_schemas_structured_content_and_errors_through(
    tmp_path: Path,
) -> None:
    async with proxy_session(tmp_path, {"mcpServers": {"ev": everything_server()}}) as session:
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
        structured = tools["ev__get-structured-content"]
        assert structured.output_schema is not None
        assert structured.annotations is not None and structured.annotations.read_only_hint is True
        assert structured.description and "structured content" in structured.description

        echo = await session.call_tool("ev__echo", {"message": "hello through the proxy"})
        assert echo.content[0].text == "Echo: hello through the proxy"  # type: ignore[union-attr]

        weather = await session.call_tool("ev__get-structured-content", {"location": "Chicago"})
        assert weather.structured_content == {
            "temperature": 36,
            "conditions": "Light rain / drizzle",
            "humidity": 82,
        }

        total = await session.call_tool("ev__get-sum", {"a": 2, "b": 40})
        assert "42" in total.content[0].text  # type: ignore[union-attr]

        bad = await session.call_tool("ev__get-sum", {"a": "not a number"})
        assert bad.is_error  # the downstream's own validation error, passed through as isError


async def test_progress_from_a_long_running_downstream_tool_reaches_the_agent(tmp_path: Path) -> None:
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with proxy_session(tmp_path, {"mcpServers": {"ev": everything_server()}}) as session:
        result = await session.call_tool(
            "ev__trigger-long-running-operation", {"duration": 0.3, "steps": 3}, progress_callback=on_progress
        )
        assert not result.is_error
        assert seen == [1, 2, 3]


async def test_prompts_and_resources_are_merged_and_routed_to_their_server(tmp_path: Path) -> None:
    config = {"mcpServers": {"ev": everything_server(), "time": time_server()}}
    async with proxy_session(tmp_path, config) as session:
        prompts = {prompt.name for prompt in (await session.list_prompts()).prompts}
        assert "ev__simple-prompt" in prompts
        prompt = await session.get_prompt("ev__simple-prompt")
        assert prompt.messages

        templates = (await session.list_resource_templates()).resource_templates
        assert any(t.uri_template == "demo://resource/dynamic/text/{resourceId}" for t in templates)
        read = await session.read_resource("demo://resource/dynamic/text/7")
        assert "7" in read.contents[0].text  # type: ignore[union-attr]

        with pytest.raises(Exception, match="not found"):
            await session.read_resource("nowhere://resource/1")


@pytest.mark.parametrize("transport,path", [("streamableHttp", "/mcp"), ("sse", "/sse")])
async def test_everything_over_http_transports_is_proxied(tmp_path: Path, transport: str, path: str) -> None:
    port = free_port()
    kind = "http" if transport == "streamableHttp" else "sse"
    entry: dict[str, Any] = {"type": kind, "url": f"http://127.0.0.1:{port}{path}"}
    async with (
        running_process(everything_http_args(transport), port=port, env={"PORT": str(port)}),
        proxy_session(tmp_path, {"mcpServers": {"remote": entry}}) as session,
    ):
        names = {tool.name for tool in (await session.list_tools()).tools}
        assert "remote__echo" in names
        result = await session.call_tool("remote__echo", {"message": kind})
        assert result.content[0].text == f"Echo: {kind}"  # type: ignore[union-attr]
        status = await session.call_tool("circuit_status", {"server": "remote"})
        assert status.structured_content is not None
        assert status.structured_content["servers"][0]["connection"] == "connected"
        assert status.structured_content["breakers"][0]["state"] == "closed"


async def test_an_agent_cancel_reaches_the_downstream_and_the_proxy_keeps_serving(tmp_path: Path) -> None:
    async with proxy_session(tmp_path, {"mcpServers": {"ev": everything_server()}}) as session:
        progressed = anyio.Event()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            progressed.set()

        async def long_call() -> None:
            args = {"duration": 60, "steps": 60}  # a progress notification a second
            await session.call_tool("ev__trigger-long-running-operation", args, progress_callback=on_progress)

        # Cancelled once the call is surely running downstream (its first progress came back), not after a guess.
        async with anyio.create_task_group() as tg:
            tg.start_soon(long_call)
            with anyio.fail_after(30):
                await progressed.wait()
            tg.cancel_scope.cancel()
        result = await session.call_tool("ev__echo", {"message": "still here"})
        assert result.content[0].text == "Echo: still here"  # type: ignore[union-attr]
        status = await session.call_tool("circuit_status", {"tool": "trigger-long-running-operation"})
        assert status.structured_content is not None
        breaker = status.structured_content["breakers"][0]
        assert breaker["calls"] == 0 and breaker["state"] == "closed"  # a cancelled call counts neither way


def _text(result: types.CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, types.TextContent))
