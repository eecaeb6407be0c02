"""Breakers end to end: a real `circuitbox serve` process in front of real chaos downstreams."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession, MCPError

from tests.proxy.harness import chaos, proxy_session

pytestmark = pytest.mark.anyio


def text(result: types.CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, types.TextContent))


async def chaos_stats(session: ClientSession, namespace: str) -> dict[str, Any]:
    result = await session.call_tool(f"{namespace}__chaos_control", {"action": "stats"})
    assert not result.is_error, text(result)
    return dict(result.structured_content or json.loads(text(result)))


async def status(session: ClientSession, **filters: str) -> dict[str, Any]:
    result = await session.call_tool("circuit_status", filters)
    assert result.structured_content is not None
    return dict(result.structured_content)


async def wait_connected(session: ClientSession, server: str, connects: int = 1) -> None:
    """Polls circuit_status until the server is connected (again); bounded."""
    with anyio.fail_after(30):
        while True:
            row = (await status(session, server=server))["servers"][0]
            if row["connection"] == "connected" and row["connects"] >= connects:
                return
            await anyio.sleep(0.05)


# The open period must outlast the gap between the trip and the next call even on a loaded machine (else that call is
# already a probe); the tests that heal sleep out the period the breaker itself announces.
OPEN_PERIOD = 2.0
BREAKER = {"failure_threshold": 3, "success_threshold": 2, "timeout": OPEN_PERIOD, "jitter": 0, "minimum_calls": 100}


async def test_a_failing_tool_opens_fails_fast_without_reaching_the_downstream_and_heals(
    tmp_path: Path,
) -> None:
    config = {
        "mcpServers": {
            "c": {**chaos("echo=healthy", "flaky=error:disk on fire: storage unavailable"), "breaker": BREAKER}
        }
    }
    async with proxy_session(tmp_path, config) as session:
        for _ in range(3):
            result = await session.call_tool("c__flaky", {})
            assert result.is_error and "disk on fire" in text(result)

        fast = await session.call_tool("c__flaky", {})
        assert fast.is_error
        data = (fast.meta or {})["circuitbox/breaker"]
        assert data["state"] == "open" and data["server"] == "c" and data["tool"] == "flaky"
        assert "disk on fire" in data["last_error"] and 0 < data["retry_after"] <= OPEN_PERIOD
        assert "c__flaky" in text(fast) and "open" in text(fast)
        assert (await chaos_stats(session, "c"))["tools"]["flaky"]["calls"] == 3  # the 4th never reached it

        echo = await session.call_tool("c__echo", {"message": "other tools of the server still work"})
        assert not echo.is_error

        await session.call_tool("c__chaos_control", {"action": "set", "tool": "flaky", "behaviour": "healthy"})
        await anyio.sleep(data["retry_after"])  # the open period the breaker itself announced
        assert not (await session.call_tool("c__flaky", {})).is_error  # first probe
        assert (await status(session, tool="flaky"))["breakers"][0]["state"] == "half_open"
        assert not (await session.call_tool("c__flaky", {})).is_error  # second probe closes it
        breaker = (await status(session, tool="flaky"))["breakers"][0]
        assert breaker["state"] == "closed" and breaker["server"] == "c"


async def test_a_text_fallback_answers_while_open_and_is_counted(tmp_path: Path) -> None:
    server = {
        **chaos("flaky=error"),
        "breaker": BREAKER,
        "tools": {"fl*": {"fallback": {"text": "flaky is resting; nothing was done."}}},
    }
    async with proxy_session(tmp_path, {"mcpServers": {"c": server}}) as session:
        for _ in range(3):
            await session.call_tool("c__flaky", {})
        result = await session.call_tool("c__flaky", {})
        assert not result.is_error and text(result) == "flaky is resting; nothing was done."
        metrics = await session.call_tool("circuit_metrics", {"tool": "flaky"})
        assert metrics.structured_content is not None
        row = metrics.structured_content["tools"][0]
        assert row["fallback_activations"] == 1 and row["state"] == "open"


async def test_a_tool_fallback_answers_through_the_other_tools_breaker_and_never_loops(tmp_path: Path) -> None:
    server = {
        **chaos("echo=healthy", "flaky=error", "boom=error"),
        "breaker": BREAKER,
        "tools": {
            "flaky": {"fallback": {"tool": "c__echo"}},
            "boom": {"fallback": {"tool": "c__flaky"}},  # flaky's own fallback is not followed from here
        },
    }
    async with proxy_session(tmp_path, {"mcpServers": {"c": server}}) as session:
        for _ in range(3):
            await session.call_tool("c__flaky", {"message": "tripping"})
            await session.call_tool("c__boom", {"message": "tripping"})
        served = await session.call_tool("c__flaky", {"message": "from echo"})
        assert not served.is_error and text(served) == "from echo"  # echo answered, through its own breaker
        flaky = (await status(session, tool="flaky"))["breakers"][0]
        assert flaky["state"] == "open"
        # boom falls back to flaky, whose circuit is open too: flaky's rejection, not a hop on to echo.
        rejected = await session.call_tool("c__boom", {"message": "one hop only"})
        assert rejected.is_error and (rejected.meta or {})["circuitbox/breaker"]["tool"] == "flaky"
        calls = (await chaos_stats(session, "c"))["tools"]
        assert calls["flaky"]["calls"] == 3 and calls["boom"]["calls"] == 3 and calls["echo"]["calls"] == 1


async def test_a_downstream_killed_mid_call_answers_in_bounded_time_and_is_respawned(tmp_path: Path) -> None:
    config = {"mcpServers": {"c": chaos("echo=healthy", "boom=crash")}}
    async with proxy_session(tmp_path, config) as session:
        first_pid = (await chaos_stats(session, "c"))["pid"]
        with anyio.fail_after(10):
            died = await session.call_tool("c__boom", {})
        assert died.is_error and "boom" in text(died)
        await wait_connected(session, "c", connects=2)
        assert not (await session.call_tool("c__echo", {"message": "back"})).is_error
        assert (await chaos_stats(session, "c"))["pid"] != first_pid


async def test_a_hung_call_times_out_and_the_downstream_receives_the_cancellation(tmp_path: Path) -> None:
    server = {**chaos("echo=healthy", "stuck=hang"), "tools": {"stuck": {"call_timeout": 0.5}}}
    async with proxy_session(tmp_path, {"mcpServers": {"c": server}}) as session:
        with anyio.fail_after(30):  # the alternative to the 0.5 s deadline is waiting forever
            result = await session.call_tool("c__stuck", {})
        assert result.is_error and "timed out" in text(result)
        with anyio.fail_after(10):
            while (await chaos_stats(session, "c"))["tools"]["stuck"]["cancelled"] < 1:
                await anyio.sleep(0.02)
        row = (await status(session, tool="stuck"))["breakers"][0]
        assert row["failures"] == 1 and "call_timeout" in row["last_error"]


async def test_one_dead_downstream_at_start_does_not_delay_the_other_two(tmp_path: Path) -> None:
    config = {
        "mcpServers": {
            "a": chaos("echo=healthy"),
            "dead": {"command": sys.executable, "args": ["-c", "import sys; sys.exit(3)"]},
            "missing": {"command": str(tmp_path / "no-such-binary")},
            "b": chaos("echo=healthy"),
        }
    }
    async with proxy_session(tmp_path, config) as session:
        with anyio.fail_after(15):
            names = {tool.name for tool in (await session.list_tools()).tools}
        assert {"a__echo", "b__echo"} <= names
        with anyio.fail_after(2):
            assert not (await session.call_tool("a__echo", {"message": "x"})).is_error
            assert not (await session.call_tool("b__echo", {"message": "x"})).is_error
        servers = {row["server"]: row for row in (await status(session))["servers"]}
        # It exits at once: by now (a loaded machine is slow to get here) it may have restarted into its crash loop.
        assert servers["dead"]["connection"] in ("restarting", "starting", "crash_loop")
        assert servers["missing"]["last_error"]


async def test_a_downstream_list_change_is_relayed_to_the_agent(tmp_path: Path) -> None:
    notices: list[types.ToolListChangedNotification] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            notices.append(message)

    config = {"mcpServers": {"c": chaos("echo=healthy")}}
    async with proxy_session(tmp_path, config, message_handler=on_message) as session:
        assert "c__fresh" not in {t.name for t in (await session.list_tools()).tools}
        before = len(notices)  # the proxy announces the downstream's arrival too
        await session.call_tool("c__chaos_control", {"action": "add_tool", "tool": "fresh", "behaviour": "healthy"})
        with anyio.fail_after(10):
            while len(notices) == before:
                await anyio.sleep(0.01)
        assert "c__fresh" in {t.name for t in (await session.list_tools()).tools}
        assert not (await session.call_tool("c__fresh", {})).is_error


async def test_unknown_tools_and_bad_arguments_are_the_agents_mistake_and_never_trip(tmp_path: Path) -> None:
    config = {"mcpServers": {"c": {**chaos("add=add"), "breaker": BREAKER}}}
    async with proxy_session(tmp_path, config) as session:
        with pytest.raises(MCPError, match="Unknown tool: 'c__nope'"):
            await session.call_tool("c__nope", {})
        for _ in range(5):
            await session.call_tool("c__add", {"a": "x", "b": []})
        row = (await status(session, tool="add"))["breakers"][0]
        assert row["state"] == "closed" and row["failures"] == 0


async def test_circuit_metrics_answers_compactly_unless_asked_for_everything(tmp_path: Path) -> None:
    server = {**chaos("ok=healthy", "bad=error"), "breaker": {"failure_threshold": 1, "timeout": 600}}
    async with proxy_session(tmp_path, {"mcpServers": {"c": server}}) as session:
        await session.call_tool("c__ok", {})
        await session.call_tool("c__bad", {})
        compact = await session.call_tool("circuit_metrics", {})
        assert compact.structured_content is not None
        assert [t["tool"] for t in compact.structured_content["tools"]] == ["bad"]  # only what is not healthy
        assert compact.structured_content["summary"]["total"] == 2
        assert text(compact).splitlines()[0] == "2 breakers: 1 healthy, 1 not; overall health 50%"
        assert "c/bad: open" in text(compact) and "c/ok" not in text(compact)
        everything = await session.call_tool("circuit_metrics", {"all": True})
        assert everything.structured_content is not None
        assert sorted(t["tool"] for t in everything.structured_content["tools"]) == ["bad", "ok"]


async def test_an_invalid_request_error_from_a_stdio_downstream_does_not_respawn_it(tmp_path: Path) -> None:
    config = {"mcpServers": {"c": {**chaos("bad=protocol_error:-32600", "ok=healthy"), "breaker": BREAKER}}}
    async with proxy_session(tmp_path, config) as session:
        first_pid = (await chaos_stats(session, "c"))["pid"]
        answer = await session.call_tool("c__bad", {})
        assert answer.is_error and "-32600" in text(answer)
        assert not (await session.call_tool("c__ok", {})).is_error
        assert (await chaos_stats(session, "c"))["pid"] == first_pid
        assert (await status(session, server="c"))["servers"][0]["connects"] == 1
