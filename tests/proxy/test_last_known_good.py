"""Last-known-good answers end to end: a real `circuitbox serve` in front of a chaos downstream that starts failing."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import ClientSession

from tests.proxy.harness import chaos, proxy_session
from tests.proxy.test_breakers_through_the_proxy import text

pytestmark = pytest.mark.anyio

STALE = "circuitbox/stale"


async def set_behaviour(session: ClientSession, tool: str, behaviour: str) -> None:
    answer = await session.call_tool("c__chaos_control", {"action": "set", "tool": tool, "behaviour": behaviour})
    assert not answer.is_error, text(answer)


async def test_a_failing_read_only_tool_answers_with_its_last_good_result_for_the_same_arguments_only(
    tmp_path: Path,
) -> None:
    server = {
        **chaos("get=healthy", "put=healthy", "old=healthy", read_only=("get", "old")),
        "breaker": {
            "failure_threshold": 3,
            "timeout": 600,
            "jitter": 0,
            "minimum_calls": 100,
            "fallback": {"last_known_good": {"max_age": 300}},
        },
        "tools": {"old": {"fallback": {"last_known_good": {"max_age": 0.001}}}},
    }
    async with proxy_session(tmp_path, {"mcpServers": {"c": server}}) as session:
        for tool in ("get", "put", "old"):
            assert text(await session.call_tool(f"c__{tool}", {"message": "v1"})) == "v1"
        for tool in ("get", "put", "old"):
            await set_behaviour(session, tool, "error:backend unavailable")

        stale = await session.call_tool("c__get", {"message": "v1"})
        assert not stale.is_error
        first, *rest = text(stale).split("v1")
        assert first.startswith("[stale answer] Tool 'c__get' failed just now") and rest == [""]
        assert (stale.meta or {})[STALE]["age"] >= 0
        other = await session.call_tool("c__get", {"message": "v2"})  # other arguments: the normal error
        assert other.is_error and "backend unavailable" in text(other) and STALE not in (other.meta or {})
        put = await session.call_tool("c__put", {"message": "v1"})  # not read-only: never a stale answer
        assert put.is_error and STALE not in (put.meta or {})
        old = await session.call_tool("c__old", {"message": "v1"})  # kept longer than its max_age ago
        assert old.is_error and STALE not in (old.meta or {})

        # get has failed 2 times: the next failure opens its circuit; the calls after it are rejected, and the
        # rejection is answered from the same kept result, with the breaker's own data beside the stale marker.
        await session.call_tool("c__get", {"message": "v1"})
        rejected = await session.call_tool("c__get", {"message": "v1"})
        assert not rejected.is_error and "its circuit breaker is open" in text(rejected)
        assert (rejected.meta or {})["circuitbox/breaker"]["state"] == "open" and STALE in (rejected.meta or {})

        metrics = await session.call_tool("circuit_metrics", {"server": "c", "tool": "get"})
        assert metrics.structured_content is not None
        row = metrics.structured_content["tools"][0]
        assert (row["stale_answers"], row["fallback_activations"]) == (3, 1)


async def test_last_known_good_on_the_tool_entry_of_a_tool_that_is_not_read_only_is_a_config_error_at_listing(
    tmp_path: Path,
) -> None:
    server = {
        **chaos("put=healthy", "get=healthy", read_only=("get",)),
        "tools": {"put": {"fallback": {"last_known_good": {}}}, "get": {"fallback": {"last_known_good": {}}}},
    }
    log = tmp_path / "stderr.log"
    with log.open("w") as errlog:
        async with proxy_session(tmp_path, {"mcpServers": {"c": server}}, errlog=errlog) as session:
            assert not (await session.call_tool("c__put", {})).is_error  # still served, never from a kept result
    lines = [line for line in log.read_text().splitlines() if "config error" in line]
    assert len(lines) == 1
    assert "mcpServers.c.tools.put.fallback: last_known_good is for read-only tools, and 'put' of 'c'" in lines[0]
