"""The chaos server in memory through the SDK's real ClientSession: every behaviour and the control tool."""

from __future__ import annotations

import json
import time

import anyio
import mcp_types as types
import pytest
from mcp import Client, MCPError
from mcp.server.subscriptions import ToolsListChanged
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from circuitbox.chaos import ChaosState, build_server, parse_behaviour
from tests.chaos.support import memory_session, stats, text, wait_for_stat

pytestmark = pytest.mark.anyio


def state(**tools: str) -> ChaosState:
    return ChaosState({name: parse_behaviour(spec) for name, spec in tools.items()}, seed=1)


class FakeWire:
    def __init__(self) -> None:
        self.lines: list[str] = []

    async def write_lines(self, lines: list[str]) -> None:
        self.lines += lines


async def test_tools_are_listed_with_their_schemas_and_list_changed_is_advertised() -> None:
    async with memory_session(state(echo="healthy", sum="add")) as (session, _):
        caps = session.server_capabilities
        assert caps is not None and caps.tools is not None and caps.tools.list_changed is True
        tools = {t.name: t for t in (await session.list_tools()).tools}
        assert list(tools) == ["echo", "sum", "chaos_control"]
        assert tools["sum"].output_schema is not None and tools["echo"].output_schema is None
        assert tools["sum"].input_schema["required"] == ["a", "b"]


async def test_hinted_tools_are_listed_with_their_annotations_and_fail_first_counts_from_each_set() -> None:
    hinted = ChaosState(
        {"get": parse_behaviour("fail_first:1"), "put": parse_behaviour("healthy")},
        hints={"get": frozenset({"readOnly", "idempotent"})},
    )
    async with memory_session(hinted) as (session, _):
        tools = {t.name: t for t in (await session.list_tools()).tools}
        assert tools["get"].annotations == types.ToolAnnotations(read_only_hint=True, idempotent_hint=True)
        assert tools["put"].annotations is None
        assert [(await session.call_tool("get", {})).is_error for _ in range(2)] == [True, False]
        await session.call_tool("chaos_control", {"action": "set", "tool": "get", "behaviour": "fail_first:1"})
        assert [(await session.call_tool("get", {})).is_error for _ in range(2)] == [True, False]


async def test_healthy_echoes_text_and_structured_content() -> None:
    async with memory_session(state(echo="healthy")) as (session, _):
        result = await session.call_tool("echo", {"x": 1})
        assert not result.is_error
        assert json.loads(text(result)) == {"x": 1}
        assert result.structured_content == {"tool": "echo", "arguments": {"x": 1}, "call": 1}
        assert text(await session.call_tool("echo", {"message": "hi"})) == "hi"


async def test_add_sums_against_its_output_schema_and_rejects_bad_input_as_a_caller_mistake() -> None:
    async with memory_session(state(sum="add")) as (session, _):
        result = await session.call_tool("sum", {"a": 2, "b": 0.5})
        assert result.structured_content == {"sum": 2.5}
        bad = await session.call_tool("sum", {"a": "two", "b": 1})
        assert bad.is_error and text(bad).startswith("Input validation error")


async def test_error_is_an_is_error_result_and_protocol_error_a_json_rpc_error() -> None:
    tools = {
        "boom": "error:disk on fire",
        "bare": "error",
        "broken": "protocol_error",
        "odd": "protocol_error:-32000",
    }
    async with memory_session(state(**tools)) as (session, _):
        boom = await session.call_tool("boom", {})
        assert boom.is_error and text(boom) == "disk on fire"
        assert "injected error" in text(await session.call_tool("bare", {}))
        with pytest.raises(MCPError) as caught:
            await session.call_tool("broken", {})
        assert caught.value.code == -32603
        with pytest.raises(MCPError) as caught:
            await session.call_tool("odd", {})
        assert caught.value.code == -32000
        counters = (await stats(session))["tools"]
        assert (counters["boom"]["errors"], counters["broken"]["protocol_errors"]) == (1, 1)


async def test_an_unknown_tool_is_an_invalid_params_error_and_counts_nowhere() -> None:
    async with memory_session(state(echo="healthy")) as (session, _):
        with pytest.raises(MCPError) as caught:
            await session.call_tool("nope", {})
        assert caught.value.code == types.INVALID_PARAMS
        assert (await stats(session))["total_calls"] == 0


async def test_latency_delays_the_answer() -> None:
    async with memory_session(state(slow="latency:0.2")) as (session, _):
        started = time.monotonic()
        with anyio.fail_after(5):
            assert not (await session.call_tool("slow", {})).is_error
        assert time.monotonic() - started >= 0.2  # it waited its latency; how much longer depends on the machine


async def test_a_cancelled_hang_is_counted_as_a_cancellation() -> None:
    async with memory_session(state(stuck="hang")) as (session, _):
        with anyio.move_on_after(0.2):
            await session.call_tool("stuck", {})
        with anyio.fail_after(5):
            counters = await wait_for_stat(session, "stuck", "cancelled", 1)
        assert (counters["calls"], counters["in_flight"], counters["ok"]) == (1, 0, 0)


async def test_garbage_goes_to_the_wire_then_the_call_answers_or_hangs() -> None:
    wire = FakeWire()
    async with memory_session(state(junk="garbage:answer:2", stuck="garbage:hang:1"), wire) as (session, _):
        assert not (await session.call_tool("junk", {})).is_error
        assert len(wire.lines) == 2 and not wire.lines[0].startswith("{")
        with anyio.move_on_after(0.2):
            await session.call_tool("stuck", {})
        assert len(wire.lines) == 3
    async with memory_session(state(junk="garbage")) as (session, _):  # no wire (HTTP): logged instead
        assert not (await session.call_tool("junk", {})).is_error


async def test_progress_sends_notifications_before_answering() -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with memory_session(state(work="progress:4")) as (session, _):
        with anyio.fail_after(5):
            result = await session.call_tool("work", {}, progress_callback=on_progress)
        assert not result.is_error
        assert [p for p, _, _ in seen] == [1, 2, 3, 4] and seen[-1][1] == 4


async def control(session: object, **args: object) -> types.CallToolResult:
    return await session.call_tool("chaos_control", args)  # type: ignore[attr-defined, no-any-return]


async def test_set_switches_a_behaviour_at_run_time_and_star_switches_all() -> None:
    async with memory_session(state(a="healthy", b="healthy")) as (session, _):
        result = await control(session, action="set", tool="a", behaviour="error")
        assert result.structured_content == {
            "action": "set",
            "tools": ["a"],
            "behaviour": "error",
            "notified": False,
        }
        assert (await session.call_tool("a", {})).is_error
        await control(session, action="set", tool="*", behaviour="protocol_error")
        with pytest.raises(MCPError):
            await session.call_tool("b", {})
        listed = (await control(session, action="list")).structured_content
        assert listed is not None and listed["tools"] == {"a": "protocol_error", "b": "protocol_error"}
        assert any(line.startswith("flapping") for line in listed["behaviours"])


async def test_adding_and_removing_tools_sends_tools_list_changed() -> None:
    async with memory_session(state(echo="healthy")) as (session, inbox):
        added = await control(session, action="add_tool", tool="fresh", behaviour="latency:0")
        assert added.structured_content is not None and added.structured_content["notified"] is True
        with anyio.fail_after(5):
            await inbox.list_changed.wait()
        assert "fresh" in {t.name for t in (await session.list_tools()).tools}
        assert not (await session.call_tool("fresh", {})).is_error
        inbox.list_changed = anyio.Event()
        await control(session, action="remove_tool", tool="fresh")
        with anyio.fail_after(5):
            await inbox.list_changed.wait()
        assert "fresh" not in {t.name for t in (await session.list_tools()).tools}


async def test_reset_restores_the_initial_tools_and_notify_false_stays_silent() -> None:
    async with memory_session(state(echo="healthy")) as (session, inbox):
        quiet = await control(session, action="add_tool", tool="x", notify=False)
        assert quiet.structured_content is not None and quiet.structured_content["notified"] is False
        await control(session, action="set", tool="echo", behaviour="hang")
        await session.call_tool("x", {})
        reset = await control(session, action="reset")
        assert reset.structured_content == {"action": "reset", "notified": True}
        assert not (await session.call_tool("echo", {})).is_error
        assert (await stats(session))["tools"] == {
            "echo": {
                "behaviour": "healthy", "calls": 1, "ok": 1, "errors": 0,
                "protocol_errors": 0, "cancelled": 0, "in_flight": 0,
            }
        }  # fmt: skip
        await control(session, action="notify")
        assert sum(isinstance(m, types.ToolListChangedNotification) for m in inbox.messages) == 2


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        ({"action": "explode"}, "unknown action"),
        ({"action": "set", "behaviour": "hang"}, "needs a 'tool'"),
        ({"action": "set", "tool": "echo"}, "needs a 'behaviour'"),
        ({"action": "set", "tool": "echo", "behaviour": "nope"}, "unknown behaviour"),
        ({"action": "set", "tool": "ghost", "behaviour": "hang"}, "unknown tool 'ghost'"),
        ({"action": "remove_tool", "tool": "ghost"}, "unknown tool 'ghost'"),
    ],
)
async def test_a_bad_control_request_is_an_is_error_result_naming_the_problem(
    args: dict[str, object], complaint: str
) -> None:
    async with memory_session(state(echo="healthy")) as (session, _):
        result = await session.call_tool("chaos_control", args)
        assert result.is_error and complaint in text(result)


async def test_a_prompt_and_resources_are_served_for_merging_tests() -> None:
    async with memory_session(state(echo="healthy")) as (session, _):
        prompts = (await session.list_prompts()).prompts
        assert [p.name for p in prompts] == ["chaos_prompt"]
        got = await session.get_prompt("chaos_prompt", {"topic": "a flood"})
        content = got.messages[0].content
        assert isinstance(content, types.TextContent) and "a flood" in content.text
        uris = [r.uri for r in (await session.list_resources()).resources]
        assert uris == ["chaos://stats", "chaos://behaviours"]
        read = (await session.read_resource("chaos://stats")).contents[0]
        assert isinstance(read, types.TextResourceContents) and "total_calls" in json.loads(read.text)
        with pytest.raises(MCPError) as caught:
            await session.read_resource("chaos://nope")
        assert caught.value.code == -32002
        with pytest.raises(MCPError):
            await session.get_prompt("nope")


async def test_a_2026_era_client_hears_of_list_changes_on_its_listen_stream() -> None:
    async with Client(build_server(state(echo="healthy"))) as client:
        assert client.protocol_version in MODERN_PROTOCOL_VERSIONS
        async with client.listen(tools_list_changed=True) as subscription:
            await client.call_tool("chaos_control", {"action": "add_tool", "tool": "fresh"})
            with anyio.fail_after(5):
                event = await anext(aiter(subscription))
        assert isinstance(event, ToolsListChanged)
        assert "fresh" in {t.name for t in (await client.list_tools()).tools}
