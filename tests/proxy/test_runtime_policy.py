"""Run-time tuning: circuit_configure over a real client, and reload on SIGHUP with a call in flight."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import MCPError

from tests.proxy.harness import chaos, pid_of, proxy_session
from tests.proxy.test_breakers_through_the_proxy import status, text

pytestmark = pytest.mark.anyio

LENIENT = {"failure_threshold": 10, "timeout": 30, "jitter": 0, "minimum_calls": 100}


async def test_circuit_configure_changes_thresholds_without_losing_the_window(tmp_path: Path) -> None:
    config = {
        "admin": {"enabled": True},
        "mcpServers": {"c": {**chaos("flaky=error", "ok=healthy"), "breaker": LENIENT}},
    }
    async with proxy_session(tmp_path, config) as session:
        for _ in range(2):
            await session.call_tool("c__flaky", {})
        result = await session.call_tool(
            "circuit_configure", {"server": "c", "tool": "fl*", "settings": {"failure_threshold": 3}}
        )
        assert not result.is_error, text(result)
        assert result.structured_content is not None
        change = result.structured_content["changed"][0]
        assert change["tool"] == "flaky" and change["changes"]["failure_threshold"] == {"old": 10, "new": 3}
        row = (await status(session, tool="flaky"))["breakers"][0]
        assert row["policy"]["failure_threshold"] == 3 and row["consecutive_failures"] == 2  # window kept

        await session.call_tool("c__flaky", {})  # the third consecutive failure now opens it
        assert (await status(session, tool="flaky"))["breakers"][0]["state"] == "open"

        # A server-wide change reaches breakers created later too.
        await session.call_tool("circuit_configure", {"server": "c", "settings": {"call_timeout": 7}})
        await session.call_tool("c__ok", {})
        assert (await status(session, tool="ok"))["breakers"][0]["policy"]["call_timeout"] == 7


async def test_circuit_configure_rejects_unknown_fields_and_bad_values_by_name(tmp_path: Path) -> None:
    config = {"admin": {"enabled": True}, "mcpServers": {"c": chaos("ok=healthy")}}
    async with proxy_session(tmp_path, config) as session:
        with pytest.raises(MCPError, match="failure_treshold"):
            await session.call_tool("circuit_configure", {"server": "c", "settings": {"failure_treshold": 3}})
        with pytest.raises(MCPError, match="failure_threshold"):
            await session.call_tool("circuit_configure", {"server": "c", "settings": {"failure_threshold": 0}})


async def test_admin_tools_are_absent_unless_enabled(tmp_path: Path) -> None:
    async with proxy_session(tmp_path, {"mcpServers": {"c": chaos("ok=healthy")}}) as session:
        names = {tool.name for tool in (await session.list_tools()).tools}
        assert {"circuit_status", "circuit_metrics"} <= names
        assert not names & {"circuit_reset", "circuit_force", "circuit_configure"}


async def test_sighup_reloads_servers_and_policies_without_dropping_a_call_in_flight(tmp_path: Path) -> None:
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    first = {"mcpServers": {"c": {**chaos("slow=latency:2", "flaky=error"), "breaker": LENIENT}}}
    async with proxy_session(tmp_path, first, message_handler=on_message) as session:
        await session.call_tool("c__flaky", {})
        path = tmp_path / "circuitbox.json"
        second: dict[str, Any] = {
            "environment": "testing",
            "mcpServers": {
                "c": {**chaos("slow=latency:2", "flaky=error"), "breaker": {**LENIENT, "failure_threshold": 4}},
                "d": chaos("hello=healthy"),
            },
        }
        answers: list[types.CallToolResult] = []

        async def slow_call() -> None:
            answers.append(await session.call_tool("c__slow", {}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow_call)
            with anyio.fail_after(10):
                while (await status(session, tool="slow"))["breakers"] == []:
                    await anyio.sleep(0.02)  # until the proxy has admitted the slow call
            path.write_text(json.dumps(second))
            os.kill(pid_of(path), signal.SIGHUP)
            with anyio.fail_after(20):
                await changed.wait()
        assert len(answers) == 1 and not answers[0].is_error  # the call in flight was answered normally

        names = {tool.name for tool in (await session.list_tools()).tools}
        assert "d__hello" in names
        assert not (await session.call_tool("d__hello", {})).is_error
        row = (await status(session, tool="flaky"))["breakers"][0]
        assert row["policy"]["failure_threshold"] == 4 and row["consecutive_failures"] == 1  # state kept
