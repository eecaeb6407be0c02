"""The agent's very first request may come before the downstreams are up: prompts, resources and completions wait
for the first listing like tool calls do (each server at most its `startup_timeout`)."""

from __future__ import annotations

from pathlib import Path

import mcp_types as types
import pytest
from mcp import MCPError

from tests.proxy.harness import chaos, proxy_session

pytestmark = pytest.mark.anyio


async def test_prompts_get_as_the_very_first_request_after_start_succeeds(tmp_path: Path) -> None:
    async with proxy_session(tmp_path, {"mcpServers": {"c": chaos("echo=healthy")}}) as session:
        prompt = await session.get_prompt("c__chaos_prompt", {"topic": "a cold start"})
        content = prompt.messages[0].content
        assert isinstance(content, types.TextContent) and "a cold start" in content.text


async def test_resources_read_as_the_very_first_request_after_start_succeeds(tmp_path: Path) -> None:
    async with proxy_session(tmp_path, {"mcpServers": {"c": chaos("echo=healthy")}}) as session:
        read = await session.read_resource("chaos://behaviours")
        assert isinstance(read.contents[0], types.TextResourceContents) and "healthy" in read.contents[0].text


async def test_completion_as_the_very_first_request_after_start_reaches_the_server(tmp_path: Path) -> None:
    async with proxy_session(tmp_path, {"mcpServers": {"c": chaos("echo=healthy")}}) as session:
        ref = types.PromptReference(name="c__chaos_prompt")
        # The chaos server offers no completions: its own "Method not found" proves the prompt was found and the
        # request routed to it (before its listing, circuitbox would have answered "Unknown prompt").
        with pytest.raises(MCPError, match="Method not found"):
            await session.complete(ref, {"name": "topic", "value": "o"})
