"""A stdio downstream killed with calls in flight: the calls that arrive while it restarts are answered at once and
count against no breaker, its breakers that opened on the crash are probed as soon as it is back, and circuit_status
never says connected while its calls are refused."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest

from tests.proxy.harness import chaos, proxy_session
from tests.proxy.test_breakers_through_the_proxy import chaos_stats, status, text, wait_connected

pytestmark = pytest.mark.anyio

# An open period no test run could wait out: a breaker still open after the restart would be caught.
BREAKER = {"failure_threshold": 2, "success_threshold": 2, "timeout": 600, "jitter": 0, "minimum_calls": 100}
IN_FLIGHT = 4


async def in_flight(session: Any, tool: str, count: int) -> int:
    """Until `count` calls of `tool` are running inside the chaos server; its PID."""
    with anyio.fail_after(30):
        while True:
            stats = await chaos_stats(session, "c")
            if stats["tools"][tool]["in_flight"] >= count:
                return int(stats["pid"])
            await anyio.sleep(0.02)  # polling another process's counters; bounded


async def test_kill_9_with_calls_in_flight_and_arriving_costs_no_open_period_and_status_agrees(tmp_path: Path) -> None:
    config = {"mcpServers": {"c": {**chaos("echo=healthy", "slow=latency:30"), "breaker": BREAKER}}}
    async with proxy_session(tmp_path, config) as session:
        assert not (await session.call_tool("c__echo", {"message": "up"})).is_error
        crashed: list[types.CallToolResult] = []

        async def slow() -> None:
            crashed.append(await session.call_tool("c__slow", {}))

        async with anyio.create_task_group() as tg:
            for _ in range(IN_FLIGHT):
                tg.start_soon(slow)
            pid = await in_flight(session, "slow", IN_FLIGHT)
            os.kill(pid, signal.SIGKILL)
        # The calls in flight failed as the proxy noticed the crash. Calls keep arriving while it restarts: each is
        # answered at once, and once one has been refused, circuit_status says connected only when the very next
        # call goes through.
        refused: list[types.CallToolResult] = []
        with anyio.fail_after(30):
            while True:
                row = (await status(session, server="c"))["servers"][0]
                answer = await session.call_tool("c__echo", {"message": "are you back?"})
                if not answer.is_error:
                    break
                assert row["connection"] != "connected", text(answer)
                refused.append(answer)
        assert refused, "no call arrived during the restart"
        assert len(crashed) == IN_FLIGHT and all(r.is_error for r in crashed)
        await wait_connected(session, "c", connects=2)

        for answer in refused:
            data = (answer.meta or {})["circuitbox/server"]
            assert data["connection"] in ("restarting", "down") and data["retry_after"] > 0
            assert "circuitbox/breaker" not in (answer.meta or {})
            assert "is restarting" in text(answer) or "is down" in text(answer)
        breakers = {b["tool"]: b for b in (await status(session, server="c"))["breakers"]}
        assert breakers["echo"]["failures"] == 0  # the refused calls counted against nothing
        # The calls that were in flight did fail (the server died under them) and opened slow's breaker; the server
        # is back, so it is probing now instead of waiting out its 600 s.
        assert breakers["slow"]["failures"] >= BREAKER["failure_threshold"]
        assert breakers["slow"]["state"] == "half_open", breakers["slow"]
        await session.call_tool("c__chaos_control", {"action": "set", "tool": "slow", "behaviour": "healthy"})
        for _ in range(BREAKER["success_threshold"]):
            assert not (await session.call_tool("c__slow", {})).is_error
        assert (await status(session, server="c", tool="slow"))["breakers"][0]["state"] == "closed"


async def test_a_call_to_a_server_that_is_not_up_yet_says_so_instead_of_unknown_tool(tmp_path: Path) -> None:
    never = {"command": sys.executable, "args": ["-c", "import sys; sys.exit(3)"]}
    async with proxy_session(tmp_path, {"mcpServers": {"c": chaos("echo=healthy"), "gone": never}}) as session:
        answer = await session.call_tool("gone__anything", {})
        assert answer.is_error
        assert text(answer).startswith("Tool 'gone__anything' was not called: server 'gone' is restarting")
        assert (answer.meta or {})["circuitbox/server"]["server"] == "gone"
