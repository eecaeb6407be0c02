"""A long tool that reports progress is not cut at `call_timeout`: the deadline counts from the last progress
notification, up to `max_call_timeout`. The issue's figures (progress every 5 s for 40 s, call_timeout 30) scaled
down tenfold, same ratios."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.proxy.harness import chaos, proxy_session
from tests.proxy.test_breakers_through_the_proxy import text

pytestmark = pytest.mark.anyio

LONG = "long=progress:8:0.5"  # a progress notification every 0.5 s, the answer after 4 s


async def test_a_tool_reporting_progress_answers_after_longer_than_its_call_timeout(tmp_path: Path) -> None:
    server = {**chaos(LONG, "quiet=latency:4"), "breaker": {"call_timeout": 3}}
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with proxy_session(tmp_path, {"mcpServers": {"c": server}}) as session:
        result = await session.call_tool("c__long", {"message": "done"}, progress_callback=on_progress)
        assert not result.is_error and text(result) == "done"
        assert seen == [1, 2, 3, 4, 5, 6, 7, 8]  # relayed to the caller too
        # The same four seconds without progress are cut at call_timeout.
        quiet = await session.call_tool("c__quiet", {})
        assert quiet.is_error and "call_timeout (3s)" in text(quiet)


async def test_a_caller_that_asked_for_no_progress_still_gets_the_longer_deadline(tmp_path: Path) -> None:
    server = {**chaos(LONG), "breaker": {"call_timeout": 3}}
    async with proxy_session(tmp_path, {"mcpServers": {"c": server}}) as session:
        assert not (await session.call_tool("c__long", {"message": "done"})).is_error


async def test_progress_never_extends_a_call_past_max_call_timeout(tmp_path: Path) -> None:
    server = {**chaos(LONG), "breaker": {"call_timeout": 1.5, "max_call_timeout": 2.5}}
    async with proxy_session(tmp_path, {"mcpServers": {"c": server}}) as session:
        result = await session.call_tool("c__long", {})
        assert result.is_error and "max_call_timeout (2.5s)" in text(result)
