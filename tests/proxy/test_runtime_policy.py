"""Run-time tuning: circuit_configure over a real client, and reload on SIGHUP with a call in flight."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession, MCPError

from tests.proxy.harness import chaos, pid_of, proxy_session
from tests.proxy.test_breakers_through_the_proxy import status, text

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def call_in_flight(
    session: ClientSession, published: str, tool: str
) -> AsyncIterator[list[types.CallToolResult]]:
    """A call running in the background, once the proxy has admitted it; its answer lands in the list."""
    answers: list[types.CallToolResult] = []

    async def call() -> None:
        answers.append(await session.call_tool(published, {}))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        with anyio.fail_after(10):
            while (await status(session, tool=tool))["breakers"] == []:
                await anyio.sleep(0.02)  # until the proxy has admitted the call (its breaker exists)
        yield answers


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
        assert change["tool"] == "flaky" and change["changes"]["failure_threshold"] == {
            "old": 10,
            "new": 3,
            "source": "circuit_configure",
        }
        row = (await status(session, tool="flaky"))["breakers"][0]
        assert row["policy"]["failure_threshold"] == 3 and row["consecutive_failures"] == 2  # window kept

        await session.call_tool("c__flaky", {})  # the third consecutive failure now opens it
        assert (await status(session, tool="flaky"))["breakers"][0]["state"] == "open"

        # A server-wide change reaches breakers created later too.
        await session.call_tool("circuit_configure", {"server": "c", "settings": {"call_timeout": 7}})
        await session.call_tool("c__ok", {})
        assert (await status(session, tool="ok"))["breakers"][0]["policy"]["call_timeout"] == 7


async def test_circuit_configure_rejects_unknown_fields_and_bad_values_by_name_as_tool_errors(tmp_path: Path) -> None:
    config = {"admin": {"enabled": True}, "mcpServers": {"c": chaos("ok=healthy")}}
    async with proxy_session(tmp_path, config) as session:
        await session.call_tool("c__ok", {})
        before = (await status(session, tool="ok"))["breakers"][0]["policy"]
        for settings, message in [
            ({"failure_treshold": 3}, "settings.failure_treshold: unknown key (did you mean failure_threshold?)"),
            ({"failure_threshold": 0}, "settings.failure_threshold: failure_threshold must be in [1, 100000]"),
            ({"failure_threshold": "4"}, "settings.failure_threshold: expected an integer, got a string"),
            ({"timeout": True}, "settings.timeout: expected a number, got a boolean"),
            (
                {"sliding_window_size": 10**9},
                "settings.sliding_window_size: sliding_window_size must be in [1, 100000]",
            ),
        ]:
            result = await session.call_tool("circuit_configure", {"server": "c", "settings": settings})
            assert result.is_error and message in text(result), text(result)
        assert (await status(session, tool="ok"))["breakers"][0]["policy"] == before  # nothing applied


async def test_circuit_configure_answers_the_source_of_each_value_it_set(tmp_path: Path) -> None:
    config = {"admin": {"enabled": True}, "mcpServers": {"c": chaos("ok=healthy")}}
    async with proxy_session(tmp_path, config) as session:
        await session.call_tool("c__ok", {})
        settings = {"timeout": 9, "sliding_window_size": 50}
        result = await session.call_tool("circuit_configure", {"server": "c", "settings": settings})
        assert result.structured_content is not None, text(result)
        change = result.structured_content["changed"][0]["changes"]["timeout"]
        assert (change["new"], change["source"]) == (9, "circuit_configure") and change["old"] != 9
        # circuit_status shows every breaker field (one field list), the one just set included.
        assert (await status(session, tool="ok"))["breakers"][0]["policy"]["sliding_window_size"] == 50


async def test_circuit_force_accepts_the_states_own_name_and_answers_a_policy_error_as_a_tool_error(
    tmp_path: Path,
) -> None:
    # Each glob alone is valid; together they make xy's policy contradictory (timeout above max_timeout).
    tools = {"*": {"timeout": 100, "max_timeout": 100}, "x*": {"timeout": 200}}
    config = {"admin": {"enabled": True}, "mcpServers": {"c": {**chaos("ok=healthy", "xy=healthy"), "tools": tools}}}
    async with proxy_session(tmp_path, config) as session:
        await session.call_tool("c__ok", {})  # the listing is in
        forced = await session.call_tool("circuit_force", {"server": "c", "tool": "ok", "state": "forced_open"})
        assert not forced.is_error and text(forced) == "1 breaker now forced_open."
        assert (await status(session, tool="ok"))["breakers"][0]["state"] == "forced_open"
        broken = await session.call_tool("circuit_force", {"server": "c", "tool": "xy", "state": "open"})
        assert broken.is_error and "max_timeout must be >= timeout" in text(broken), text(broken)
        listing = await session.call_tool("circuit_status", {"server": "c"})
        assert "c/ok: forced_open, 1 call, failure rate 0%" in text(listing)


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
        async with call_in_flight(session, "c__slow", "slow") as answers:
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


async def test_a_reload_that_changes_a_servers_connection_keeps_its_breakers_and_answers_calls_in_flight(
    tmp_path: Path,
) -> None:
    first = {"mcpServers": {"c": {**chaos("slow=latency:2", "flaky=error"), "breaker": LENIENT}}}
    async with proxy_session(tmp_path, first) as session:
        for _ in range(2):
            await session.call_tool("c__flaky", {})
        path = tmp_path / "circuitbox.json"
        second = {
            "environment": "testing",
            "mcpServers": {"c": {**chaos("slow=latency:2", "flaky=error", seed=2), "breaker": LENIENT}},
        }
        async with call_in_flight(session, "c__slow", "slow") as answers:
            path.write_text(json.dumps(second))  # a new seed: new args, so a new connection
            os.kill(pid_of(path), signal.SIGHUP)
            with anyio.fail_after(20):
                while (await status(session, server="c"))["servers"][0]["connects"] < 1 or not answers:
                    await anyio.sleep(0.05)
        assert not answers[0].is_error, text(answers[0])  # answered by the old connection before it retired
        row = (await status(session, tool="flaky"))["breakers"][0]
        assert row["consecutive_failures"] == 2  # the breaker survived the restart of its server
        with anyio.fail_after(20):
            while (result := await session.call_tool("c__slow", {})).is_error:
                await anyio.sleep(0.1)  # until the new connection is up; bounded
        assert not result.is_error


def refusals(log: Path) -> int:
    return log.read_text().count("config reload refused")


async def refusals_reach(log: Path, count: int) -> None:
    """Until the proxy's log says `count` reloads were refused (each SIGHUP is proven handled, not assumed)."""
    with anyio.fail_after(20):
        while refusals(log) < count:
            await anyio.sleep(0.05)


async def test_a_reload_the_policies_cannot_take_is_refused_and_the_proxy_keeps_serving(tmp_path: Path) -> None:
    first = {"mcpServers": {"c": {**chaos("ok=healthy"), "breaker": LENIENT}}}
    log = tmp_path / "proxy.log"
    with log.open("w") as errlog:
        async with proxy_session(tmp_path, first, errlog=errlog) as session:
            assert not (await session.call_tool("c__ok", {})).is_error
            path = tmp_path / "circuitbox.json"
            path.write_text('{"mcpServers": {"c": {"command": "x", "brekaer": {}}}}')  # invalid: refused
            os.kill(pid_of(path), signal.SIGHUP)
            await refusals_reach(log, 1)
            path.write_text(json.dumps({"mcpServers": {}}))  # no servers: refused too
            os.kill(pid_of(path), signal.SIGHUP)
            await refusals_reach(log, 2)
            assert "brekaer" in log.read_text() and "no servers configured" in log.read_text()
            assert not (await session.call_tool("c__ok", {})).is_error
            row = (await status(session, tool="ok"))["breakers"][0]
            assert row["calls"] == 2 and row["policy"]["failure_threshold"] == 10


async def test_circuit_configure_is_all_or_nothing_and_checks_its_arguments(tmp_path: Path) -> None:
    server = {**chaos("ok=healthy", "bad=healthy"), "breaker": LENIENT, "tools": {"bad": {"max_timeout": 40}}}
    async with proxy_session(tmp_path, {"admin": {"enabled": True}, "mcpServers": {"c": server}}) as session:
        await session.call_tool("c__ok", {})
        # 300 s is fine for `ok` but above `bad`'s max_timeout: nothing may change.
        refused = await session.call_tool("circuit_configure", {"server": "c", "settings": {"timeout": 300}})
        assert refused.is_error and "settings.timeout: max_timeout must be >= timeout" in text(refused), text(refused)
        assert (await status(session, tool="ok"))["breakers"][0]["policy"]["timeout"] == 30
        with pytest.raises(MCPError, match="'tool' must be a string"):
            await session.call_tool("circuit_configure", {"server": "c", "tool": 123, "settings": {"timeout": 5}})
        with pytest.raises(MCPError, match="no tool 'nope'"):
            await session.call_tool("circuit_force", {"server": "c", "tool": "nope", "state": "open"})
        assert not (await session.call_tool("c__bad", {})).is_error  # nothing poisoned the later breakers
