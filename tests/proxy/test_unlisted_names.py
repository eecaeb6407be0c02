"""Names and URIs that no downstream listed: routed to the one server that can own them, which answers for itself.

A server published without a prefix (`"namespace": ""`) owns every unprefixed name circuitbox does not know (a tool
it has not listed, a name it will refuse): the agent gets that server's own answer, as it would directly. URIs carry
no namespace, so an unlisted one goes to the only server that declares resources. Where several could own it,
circuitbox answers itself rather than guess.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import MCPError
from mcp.shared.exceptions import MCPDeprecationWarning

from tests.proxy.harness import chaos, proxy_session

pytestmark = pytest.mark.anyio


async def test_an_unlisted_name_reaches_the_one_unprefixed_server_and_its_own_error_comes_back(tmp_path: Path) -> None:
    config = {"mcpServers": {"u": {**chaos("echo=healthy"), "namespace": ""}, "p": chaos("echo=healthy")}}
    async with proxy_session(tmp_path, config) as session:
        with pytest.raises(MCPError, match=r"^Unknown tool: nope$"):  # the chaos server's words, not circuitbox's
            await session.call_tool("nope", {})
        with pytest.raises(MCPError, match=r"^Unknown prompt: nope$"):
            await session.get_prompt("nope")
        # A name in another server's namespace is circuitbox's to refuse: that server did not list it.
        with pytest.raises(MCPError, match=r"Unknown tool: 'p__nope'\. Call tools/list"):
            await session.call_tool("p__nope", {})
        # Both servers declare resources: an unlisted URI has no single owner.
        with pytest.raises(MCPError, match="no single server offers it"):
            await session.read_resource("chaos://nope")
        with pytest.raises(MCPError, match="no single server offers it"), pytest.warns(MCPDeprecationWarning):
            await session.subscribe_resource("chaos://nope")
        assert (await session.call_tool("echo", {"text": "hi"})).is_error is False


async def test_an_unlisted_uri_reaches_the_only_server_with_resources(tmp_path: Path) -> None:
    async with proxy_session(tmp_path, {"mcpServers": {"c": chaos("echo=healthy")}}) as session:
        with pytest.raises(MCPError, match=r"^Unknown resource: chaos://nope$"):
            await session.read_resource("chaos://nope")
        with pytest.raises(MCPError, match=r"Unknown tool: 'nope'\. Call tools/list"):  # no unprefixed server
            await session.call_tool("nope", {})


async def test_with_two_unprefixed_servers_circuitbox_refuses_an_unlisted_name_itself(tmp_path: Path) -> None:
    servers = {name: {**chaos("echo=healthy"), "namespace": ""} for name in ("a", "b")}
    async with proxy_session(tmp_path, {"mcpServers": servers}) as session:
        with pytest.raises(MCPError, match=r"Unknown tool: 'nope'\. Call tools/list"):
            await session.call_tool("nope", {})
        with pytest.raises(MCPError, match=r"Unknown prompt: 'nope'"):
            await session.get_prompt("nope")
