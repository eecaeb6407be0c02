"""Retries end to end: a real `circuitbox serve` in front of chaos downstreams whose attempts are counted there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession

from tests.proxy.harness import chaos, proxy_session
from tests.proxy.test_breakers_through_the_proxy import chaos_stats, status, text

pytestmark = pytest.mark.anyio

# No breaker opens by accident: only the test that wants it open lowers the threshold.
CLOSED = {"failure_threshold": 100, "minimum_calls": 100, "jitter": 0}


async def attempts(session: ClientSession, tool: str) -> int:
    return int((await chaos_stats(session, "c"))["tools"][tool]["calls"])


async def metrics_of(session: ClientSession, tool: str) -> dict[str, Any]:
    result = await session.call_tool("circuit_metrics", {"server": "c", "tool": tool})
    assert result.structured_content is not None
    return dict(result.structured_content["tools"][0])


async def test_a_read_only_tool_whose_first_attempt_is_dropped_answers_and_a_plain_one_is_never_retried(
    tmp_path: Path,
) -> None:
    server = {
        **chaos("get=fail_first:1:hang", "put=fail_first:1:hang", "same=fail_first:1:hang", read_only=("get",)),
        "breaker": {**CLOSED, "call_timeout": 2, "retry": {"attempts": 3, "backoff": 0.01}},
        "tools": {"same": {"idempotent": True}},
    }
    async with proxy_session(tmp_path, {"mcpServers": {"c": server}}) as session:
        got = await session.call_tool("c__get", {"message": "hello"})
        assert not got.is_error and text(got) == "hello"
        assert await attempts(session, "get") == 2  # the dropped attempt and the retry that answered
        put = await session.call_tool("c__put", {"message": "hello"})
        assert put.is_error and "timed out" in text(put)
        assert await attempts(session, "put") == 1  # not annotated: one attempt, whatever the policy says
        assert not (await session.call_tool("c__same", {})).is_error  # "idempotent": true in its tool entry
        assert await attempts(session, "same") == 2
        row = await metrics_of(session, "get")
        assert row["retries"] == 1 and row["requests"]["failure"] == 1 and row["requests"]["success"] == 1


async def test_retries_stop_once_the_circuit_opens(tmp_path: Path) -> None:
    breaker = {**CLOSED, "failure_threshold": 2, "timeout": 600, "call_timeout": 0.5}
    server = {
        **chaos("get=hang", read_only=("get",)),
        "breaker": {**breaker, "retry": {"attempts": 5, "backoff": 0.01}},
    }
    async with proxy_session(tmp_path, {"mcpServers": {"c": server}}) as session:
        answer = await session.call_tool("c__get", {})
        assert answer.is_error and "circuit breaker" in text(answer) and "open" in text(answer)
        assert await attempts(session, "get") == 2  # the third attempt met the open circuit, not the downstream
        row = (await status(session, tool="get"))["breakers"][0]
        assert row["state"] == "open" and row["failures"] == 2


async def test_the_budget_caps_retries_under_a_storm(tmp_path: Path) -> None:
    server = {
        **chaos("get=hang", read_only=("get",)),
        "breaker": {**CLOSED, "call_timeout": 2, "retry": {"attempts": 3, "backoff": 0.01, "budget": 0.2}},
    }
    calls = 20
    async with proxy_session(tmp_path, {"mcpServers": {"c": server}}) as session:
        answers: list[bool] = []

        async def one() -> None:
            answers.append((await session.call_tool("c__get", {})).is_error)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for _ in range(calls):
                    tg.start_soon(one)
        assert answers == [True] * calls
        # Unbounded, 20 calls of 3 attempts would be 60; the budget allows 0.2 x 20 + 3 = 7 retries in 10 s.
        assert await attempts(session, "get") == calls + 7
        assert (await metrics_of(session, "get"))["retries"] == 7
