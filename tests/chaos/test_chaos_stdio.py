"""`circuitbox chaos` as a real child process over stdio, with the SDK's real client (and raw pipes)."""

from __future__ import annotations

import json
import time

import anyio
import pytest
from mcp import MCPError

from circuitbox.cli import main
from tests.chaos.support import raw_peer, stats, stdio_session, text, tool_args, wait_for_stat

pytestmark = pytest.mark.anyio

TOOLS = tool_args(
    "echo=healthy",
    "boom=error:disk on fire",
    "broken=protocol_error",
    "slow=latency:0.3",
    "stuck=hang",
    "junk=garbage:answer:2",
    "flaky=fail:0.5",
    "work=progress:3",
)


async def test_healthy_error_protocol_error_and_latency_over_a_real_process() -> None:
    async with stdio_session(*TOOLS) as (session, _):
        caps = session.server_capabilities
        assert caps is not None and caps.tools is not None and caps.tools.list_changed is True
        assert json.loads(text(await session.call_tool("echo", {"x": 1}))) == {"x": 1}
        boom = await session.call_tool("boom", {})
        assert boom.is_error and text(boom) == "disk on fire"
        with pytest.raises(MCPError) as caught:
            await session.call_tool("broken", {})
        assert caught.value.code == -32603
        started = time.monotonic()
        with anyio.fail_after(30):
            assert not (await session.call_tool("slow", {})).is_error
        assert time.monotonic() - started >= 0.3  # it waited its latency; how much longer depends on the machine
        seen: list[float] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append(progress)

        await session.call_tool("work", {}, progress_callback=on_progress)
        assert seen == [1, 2, 3]
        counters = (await stats(session))["tools"]
        assert [counters[t]["calls"] for t in ("echo", "boom", "broken", "slow", "stuck")] == [1, 1, 1, 1, 0]


async def test_a_hang_cancelled_or_timed_out_by_the_client_is_counted_by_the_server() -> None:
    async with stdio_session(*TOOLS) as (session, _):
        with anyio.move_on_after(0.3):
            await session.call_tool("stuck", {})
        with pytest.raises(MCPError) as caught:
            await session.call_tool("stuck", {}, read_timeout_seconds=0.3)
        assert caught.value.code == -32001  # the SDK's request timeout; it also sends notifications/cancelled
        with anyio.fail_after(5):
            counters = await wait_for_stat(session, "stuck", "cancelled", 2)
        assert (counters["calls"], counters["in_flight"]) == (2, 0)
        assert not (await session.call_tool("echo", {})).is_error  # the session is still usable


async def test_garbage_reaches_the_client_as_unparseable_lines_and_the_call_still_answers() -> None:
    async with stdio_session(*TOOLS) as (session, inbox):
        result = await session.call_tool("junk", {"k": "v"})
        assert not result.is_error and result.structured_content is not None
        assert len(inbox.errors) == 2  # one per garbage line, reported to the message_handler


async def test_garbage_then_exit_puts_non_json_on_stdout_and_the_process_dies() -> None:
    async with raw_peer(*tool_args("junk=garbage:exit:2")) as peer:
        await peer.send("tools/call", {"name": "junk", "arguments": {}})
        lines = [await peer.line(), await peer.line()]
        assert all(line.startswith("chaos garbage") for line in lines)
        assert await peer.process.wait() == 1


async def test_crash_kills_the_process_without_an_answer() -> None:
    async with raw_peer(*tool_args("echo=healthy", "die=crash:3")) as peer:
        await peer.send("tools/call", {"name": "echo", "arguments": {"a": 1}})
        assert json.loads(await peer.line())["result"]["structuredContent"]["arguments"] == {"a": 1}
        await peer.send("tools/call", {"name": "die", "arguments": {}})
        assert await peer.process.wait() == 3
        with pytest.raises(anyio.IncompleteRead):
            await peer.line()
        assert peer.process.stderr is not None
        log = b"".join([chunk async for chunk in peer.process.stderr])
        assert b"crashes the process (exit 3)" in log


async def test_crash_reaches_the_sdk_client_as_connection_closed() -> None:
    async with stdio_session(*tool_args("die=crash")) as (session, _):
        with pytest.raises(MCPError) as caught:
            await session.call_tool("die", {})
        assert caught.value.code == -32000


async def test_the_seed_makes_fail_reproducible_and_reset_replays_it() -> None:
    async with stdio_session(*TOOLS) as (session, _):
        first = [(await session.call_tool("flaky", {})).is_error for _ in range(20)]
        await session.call_tool("chaos_control", {"action": "reset"})
        again = [(await session.call_tool("flaky", {})).is_error for _ in range(20)]
    assert first == again and 0 < sum(first) < 20
    async with stdio_session(*TOOLS) as (session, _):  # a fresh process with the same seed
        assert [(await session.call_tool("flaky", {})).is_error for _ in range(20)] == first


async def test_switching_at_run_time_and_flapping_heals_by_itself() -> None:
    async with stdio_session(*TOOLS) as (session, inbox):
        await session.call_tool("chaos_control", {"action": "set", "tool": "echo", "behaviour": "error"})
        assert (await session.call_tool("echo", {})).is_error
        # A down period no machine outlasts between two calls: the first call is inside it, unconditionally.
        await session.call_tool("chaos_control", {"action": "set", "tool": "echo", "behaviour": "flapping:600:60"})
        assert (await session.call_tool("echo", {})).is_error
        set_at = time.monotonic()
        await session.call_tool("chaos_control", {"action": "set", "tool": "echo", "behaviour": "flapping:0.5:60"})
        with anyio.fail_after(5):
            while (await session.call_tool("echo", {})).is_error:
                await anyio.sleep(0.05)
        assert time.monotonic() - set_at >= 0.5
        await session.call_tool("chaos_control", {"action": "add_tool", "tool": "fresh"})
        with anyio.fail_after(5):
            await inbox.list_changed.wait()
        assert "fresh" in {t.name for t in (await session.list_tools()).tools}


def test_bad_flags_exit_2_with_a_message(capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    assert main(["chaos", "--tool", "x=nope"]) == 2
    assert "unknown behaviour 'nope'" in capsys.readouterr().err
    assert main(["chaos", "--spec", "{not json"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["chaos", "--spec", '{"tools": {"a": 1}}']) == 2
    assert main(["chaos", "--spec", '{"tools": {}, "extra": 1}']) == 2
    assert main(["chaos", "--tool", "chaos_control=healthy"]) == 2
    assert main(["chaos", "--spec", "/nonexistent/spec.json"]) == 2
