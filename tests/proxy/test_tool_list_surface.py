"""The tool list follows breaker state, end to end: a real `circuitbox serve` in front of a chaos downstream, driven by
the SDK's real clients of both protocol eras, which hear of each change and list again."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client, ClientSession
from mcp.shared.subscriptions import ToolsListChanged

from tests.net import free_port
from tests.proxy.harness import chaos, proxy_session, running_process, write_config

pytestmark = pytest.mark.anyio

OPEN = 3.0  # long enough to list the open tool on a loaded machine; the test waits it out by notification, not sleep
TRIP = {"failure_threshold": 2, "timeout": OPEN, "jitter": 0, "minimum_calls": 100}
ANNOTATED = "[circuit open"


class Notices:
    """Counts tools/list_changed as the handshake-era client receives them; `after(n)` waits for the count to pass n."""

    def __init__(self) -> None:
        self.count = 0
        self._arrived = anyio.Event()

    async def __call__(self, message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self.count += 1
            self._arrived.set()
            self._arrived = anyio.Event()

    async def after(self, seen: int) -> None:
        while self.count <= seen:
            await self._arrived.wait()


async def listed(session: ClientSession) -> dict[str, types.Tool]:
    return {tool.name: tool for tool in (await session.list_tools()).tools}


async def until_listed(session: ClientSession, notices: Notices, check: Any) -> dict[str, types.Tool]:
    """Lists after each notice until `check(tools)` holds (other changes may be announced in between)."""
    with anyio.fail_after(30):
        while True:
            seen = notices.count  # read before listing: a notice during the listing is not missed
            tools = await listed(session)
            if check(tools):
                return tools
            await notices.after(seen)


async def trip(session: ClientSession, tool: str) -> None:
    for _ in range(2):
        assert (await session.call_tool(tool, {})).is_error


async def test_an_open_tool_is_annotated_or_hidden_and_listed_as_before_once_its_open_period_ends(
    tmp_path: Path,
) -> None:
    server = {
        **chaos("flaky=error:service unavailable", "gone=error:service unavailable", "ok=healthy"),
        "breaker": TRIP,
        "tools": {"gone": {"tool_list": "hide"}},
    }
    notices = Notices()
    config = {"mcpServers": {"c": server}, "list_changed_interval": 0.1}
    async with proxy_session(tmp_path, config, message_handler=notices) as session:
        before = await listed(session)
        await trip(session, "c__flaky")
        await trip(session, "c__gone")
        tools = await until_listed(
            session, notices, lambda t: "c__gone" not in t and (t["c__flaky"].description or "").startswith(ANNOTATED)
        )
        flaky = tools["c__flaky"]
        assert flaky.input_schema == before["c__flaky"].input_schema  # name and schema kept
        assert (flaky.description or "").endswith(before["c__flaky"].description or "")
        breaker = (flaky.meta or {})["circuitbox/breaker"]
        assert breaker["state"] == "open" and "service unavailable" in breaker["last_error"]
        assert tools["c__ok"] == before["c__ok"]

        # Nobody calls: when the open period ends, the list is as the server lists it again, and clients are told.
        tools = await until_listed(session, notices, lambda t: "c__gone" in t and t["c__flaky"] == before["c__flaky"])
        assert tools["c__gone"] == before["c__gone"]
        assert (await session.call_tool("c__gone", {})).is_error  # its next call was the probe, and it failed
        await until_listed(session, notices, lambda t: "c__gone" not in t)


async def test_a_static_tool_list_never_changes_with_breaker_state(tmp_path: Path) -> None:
    server = {**chaos("flaky=error:service unavailable"), "breaker": {**TRIP, "timeout": 600, "tool_list": "static"}}
    notices = Notices()
    config = {"mcpServers": {"c": server}, "list_changed_interval": 0, "admin": {"enabled": True}}
    async with proxy_session(tmp_path, config, message_handler=notices) as session:
        before = await listed(session)
        await trip(session, "c__flaky")
        already = notices.count
        await session.call_tool("c__chaos_control", {"action": "add_tool", "tool": "fresh"})  # a change of its own
        tools = await until_listed(session, notices, lambda t: "c__fresh" in t)
        assert notices.count == already + 1  # that one change, and nothing for the open circuit
        assert tools["c__flaky"] == before["c__flaky"]
        row = (await session.call_tool("circuit_status", {"tool": "flaky"})).structured_content
        assert row is not None and row["breakers"][0]["state"] == "open"
        # An operator changes it at run time: the list follows at once, circuit still open.
        settings = {"server": "c", "tool": "flaky", "settings": {"tool_list": "hide"}}
        assert not (await session.call_tool("circuit_configure", settings)).is_error
        await until_listed(session, notices, lambda t: "c__flaky" not in t)


async def test_a_2026_era_client_hears_of_it_through_its_subscription(tmp_path: Path) -> None:
    server = {**chaos("flaky=error:service unavailable"), "breaker": TRIP}
    config = write_config(tmp_path, {"mcpServers": {"c": server}, "list_changed_interval": 0.1})
    port = free_port()
    args = [sys.executable, "-m", "circuitbox", "serve", "--config", str(config), "--transport", "http"]
    async with (
        running_process([*args, "--port", str(port)], port=port),
        Client(f"http://127.0.0.1:{port}/mcp") as client,
    ):
        assert "c__flaky" in {tool.name for tool in (await client.list_tools()).tools}
        async with client.listen(tools_list_changed=True) as subscription:
            for _ in range(2):
                await client.call_tool("c__flaky", {})
            with anyio.fail_after(30):
                while True:
                    assert isinstance(await anext(aiter(subscription)), ToolsListChanged)
                    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
                    if (tools["c__flaky"].description or "").startswith(ANNOTATED):
                        break
