"""Bulkheads and rate limits with real downstreams: who reaches the server, who is answered busy or rate limited,
and that neither answer moves a breaker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from prometheus_client import generate_latest

from circuitbox.breakers import CircuitState
from circuitbox.breakers.testing import FakeClock
from circuitbox.config.load import parse_config
from circuitbox.observability.collector import MetricsCollector
from circuitbox.server.app import build_proxy
from circuitbox.server.own_tools import circuit_metrics
from circuitbox.server.proxy import Proxy
from tests.proxy.harness import chaos, proxy_session

pytestmark = pytest.mark.anyio


def _stats(result: types.CallToolResult) -> dict[str, Any]:
    assert result.structured_content is not None
    return dict(result.structured_content)


def _limit(result: types.CallToolResult) -> dict[str, Any]:
    assert result.is_error and result.meta is not None, result
    return dict(result.meta["circuitbox/limit"])


async def test_max_concurrent_2_lets_2_of_10_slow_calls_reach_the_downstream_and_answers_8_busy_at_once(
    tmp_path: Path,
) -> None:
    config = {"mcpServers": {"c": {**chaos("gate=hang"), "tools": {"gate": {"max_concurrent": 2}}}}}
    answers: list[types.CallToolResult] = []
    eight = anyio.Event()
    async with proxy_session(tmp_path, config) as session:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as calls:

                async def one(i: int) -> None:
                    answers.append(await session.call_tool("c__gate", {"i": i}))
                    if len(answers) == 8:
                        eight.set()

                for i in range(10):
                    calls.start_soon(one, i)
                await eight.wait()  # the two that got through still hang: the eight were answered without them
                stats = _stats(await session.call_tool("c__chaos_control", {"action": "stats"}))
                assert stats["tools"]["gate"]["calls"] == 2
                calls.cancel_scope.cancel()  # the two hanging calls: cancelled, which counts neither way
            status = _stats(await session.call_tool("circuit_status", {"server": "c"}))
    assert len(answers) == 8
    for answer in answers:
        limit = _limit(answer)
        assert limit["reason"] == "busy" and limit["max_concurrent"] == 2 and limit["retry_after"] > 0
        text = answer.content[0]
        assert isinstance(text, types.TextContent)
        assert "busy" in text.text and "max_concurrent" in text.text and "Retry in" in text.text
    (breaker,) = [b for b in status["breakers"] if b["tool"] == "gate"]
    assert breaker["state"] == "closed" and breaker["failures"] == 0 and breaker["calls"] == 0


async def test_queue_timeout_makes_a_call_wait_for_a_slot_and_then_serves_it(tmp_path: Path) -> None:
    config = {
        "mcpServers": {
            "c": {**chaos("slow=latency:0.3"), "tools": {"slow": {"max_concurrent": 1, "queue_timeout": 120}}}
        }
    }
    async with proxy_session(tmp_path, config) as session:
        results: list[types.CallToolResult] = []
        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for i in range(3):
                    tg.start_soon(lambda i=i: _append(results, session.call_tool("c__slow", {"i": i})))
        stats = _stats(await session.call_tool("c__chaos_control", {"action": "stats"}))
    assert [r.is_error for r in results] == [False, False, False]
    assert stats["tools"]["slow"]["calls"] == 3


async def _append(results: list[types.CallToolResult], call: Any) -> None:
    results.append(await call)


@asynccontextmanager
async def in_process(config: dict[str, Any], clock: FakeClock) -> AsyncIterator[tuple[Proxy, MetricsCollector]]:
    """The proxy in this process (its rate-limit clock injected) in front of a real chaos server process."""
    proxy, collector = build_proxy(parse_config({"environment": "testing", **config}), clock=clock)
    assert collector is not None
    async with anyio.create_task_group() as tg:
        await proxy.start(tg)
        with anyio.fail_after(60):
            await proxy.wait_first_attempts()
        yield proxy, collector
        tg.cancel_scope.cancel()


async def test_a_rate_limit_of_5_per_second_lets_5_of_20_through_and_refills_with_time() -> None:
    clock = FakeClock()
    config = {"mcpServers": {"c": {**chaos("echo=healthy"), "tools": {"echo": {"rate_limit": {"calls": 5, "per": 1}}}}}}
    async with in_process(config, clock) as (proxy, _):
        results: list[types.CallToolResult] = []
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(20):
                    tg.start_soon(lambda i=i: _append(results, proxy.call("c__echo", {"i": i})))
            stats = _stats(await proxy.call("c__chaos_control", {"action": "stats"}))
            assert stats["tools"]["echo"]["calls"] == 5
            clock.advance(0.2)  # one token's worth
            assert not (await proxy.call("c__echo", {})).is_error
            refused = await proxy.call("c__echo", {})
            clock.advance(60)  # a quiet minute saves up only `burst` (default: calls) tokens
            later = [await proxy.call("c__echo", {}) for _ in range(6)]
        breaker = proxy.find_breaker("c", "echo")
    assert sum(not r.is_error for r in results) == 5
    limited = [_limit(r) for r in results if r.is_error]
    assert len(limited) == 15 and {x["reason"] for x in limited} == {"rate_limited"}
    assert limited[0]["rate_limit"] == {"calls": 5, "per": 1.0, "burst": 5}
    assert all(0 < x["retry_after"] <= 0.2 for x in limited)
    assert _limit(refused)["reason"] == "rate_limited"
    assert [r.is_error for r in later] == [False] * 5 + [True]
    assert breaker is not None and breaker.snapshot().calls == 11 and breaker.state == "closed"


async def test_server_max_concurrent_caps_all_tools_of_a_server_and_the_metrics_count_it() -> None:
    clock = FakeClock()
    config = {"mcpServers": {"c": {**chaos("a=hang", "b=hang", "echo=healthy"), "server_max_concurrent": 1}}}
    async with in_process(config, clock) as (proxy, collector):
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(proxy.call, "c__a", {})
                await anyio.wait_all_tasks_blocked()  # the call to a holds the server's one slot, waiting on a
                assert _inflight(proxy, "a") == 1
                busy = await proxy.call("c__b", {})
                scraped = generate_latest(collector.registry).decode()
                metrics = await circuit_metrics(proxy, {"all": True})
                tg.cancel_scope.cancel()
            after = await proxy.call("c__echo", {})
    assert _limit(busy) == {
        "reason": "busy",
        "retry_after": 1.0,
        "server": "c",
        "tool": "b",
        "server_max_concurrent": 1,
    }
    text = busy.content[0]
    assert isinstance(text, types.TextContent) and "server_max_concurrent" in text.text
    assert not after.is_error  # the slot came back when the hanging call was cancelled
    assert metrics.structured_content is not None
    rows = {row["tool"]: row for row in metrics.structured_content["tools"]}
    assert rows["b"]["limited"] == {"busy": 1, "rate_limited": 0} and rows["a"]["inflight"] == 1
    assert 'circuit_breaker_inflight{server="c",tool="a"} 1.0' in scraped
    assert 'circuit_breaker_limited_total{reason="busy",server="c",tool="b"} 1.0' in scraped
    assert 'circuit_breaker_limited_total{reason="rate_limited",server="c",tool="b"} 0.0' in scraped


def _inflight(proxy: Proxy, tool: str) -> int:
    return sum(limits.inflight for _, name, limits in proxy.guard.limit_stats() if name == tool)


async def test_tokens_are_waited_for_within_queue_timeout_and_given_back_when_the_call_never_reaches_the_server() -> (
    None
):
    clock = FakeClock()  # frozen: every token after the first is a reservation, waited for in real time
    limited = {"rate_limit": {"calls": 1, "per": 0.05}, "queue_timeout": 5}
    tools = {"echo": limited, "gate": {**limited, "max_concurrent": 1}}
    config = {"mcpServers": {"c": {**chaos("echo=healthy", "gate=hang"), "tools": tools}}}
    async with in_process(config, clock) as (proxy, _):
        with anyio.fail_after(60):
            results: list[types.CallToolResult] = []
            async with anyio.create_task_group() as tg:
                for i in range(3):
                    tg.start_soon(lambda i=i: _append(results, proxy.call("c__echo", {"i": i})))
            assert [r.is_error for r in results] == [False] * 3  # the 2nd and 3rd waited for their tokens

            limits = {tool: lim for _, tool, lim in proxy.guard.limit_stats()}
            bucket = limits["echo"].bucket
            assert bucket is not None
            before = bucket.tokens
            with anyio.CancelScope() as scope:  # cancelled while waiting for its token: the token comes back
                async with anyio.create_task_group() as tg:
                    tg.start_soon(proxy.call, "c__echo", {})
                    await anyio.wait_all_tasks_blocked()
                    assert bucket.tokens == before - 1
                    scope.cancel()
            assert bucket.tokens == before

            proxy.breaker("c", "echo").force(CircuitState.FORCED_OPEN)
            rejected = await proxy.call("c__echo", {})
            assert rejected.meta is not None and "circuitbox/breaker" in rejected.meta
            assert bucket.tokens == before  # the circuit rejected it: its token was given back

            async with anyio.create_task_group() as tg:
                tg.start_soon(proxy.call, "c__gate", {})
                await anyio.wait_all_tasks_blocked()  # holds gate's one slot
                gate = {tool: lim for _, tool, lim in proxy.guard.limit_stats()}["gate"]
                assert gate.bucket is not None
                tokens = gate.bucket.tokens
                busy = await proxy.call("c__gate", {"queue": "times out"})
                assert gate.bucket.tokens == tokens  # busy after all: its reserved token was given back
                tg.cancel_scope.cancel()
    assert _limit(busy)["reason"] == "busy"
    text = busy.content[0]
    assert isinstance(text, types.TextContent) and "after waiting 5s (queue_timeout)" in text.text


async def test_reloads_and_circuit_configure_retune_limits_in_place() -> None:
    clock = FakeClock()
    tools = {"echo": {"max_concurrent": 1, "rate_limit": {"calls": 1, "per": 60}}}
    first = {"mcpServers": {"c": {**chaos("echo=healthy"), "tools": tools, "server_max_concurrent": 2}}}
    async with in_process(first, clock) as (proxy, _):
        with anyio.fail_after(60):
            assert not (await proxy.call("c__echo", {})).is_error
            (limits,) = [lim for _, tool, lim in proxy.guard.limit_stats() if tool == "echo"]
            slots, server_slots = limits.slots, limits.server_slots
            assert slots is not None and server_slots is not None and limits.gated
            assert (await proxy.call("c__echo", {})).is_error  # its one token is spent

            proxy.configure("c", "echo", {"rate_limit": {"calls": 5}, "max_concurrent": 3}, ["echo"])
            assert limits.slots is slots and slots.limit == 3  # resized in place
            assert limits.rate is not None and limits.rate.calls == 5
            assert not (await proxy.call("c__echo", {})).is_error  # a new bucket, full
            bucket = limits.bucket
            proxy.configure("c", "echo", {"max_concurrent": 2}, ["echo"])
            assert limits.bucket is bucket  # the rate did not change: the bucket stays

            second = {"mcpServers": {"c": {**chaos("echo=healthy"), "server_max_concurrent": 4}}}
            await proxy.reload(parse_config({"environment": "testing", **second}))
            assert slots.limit == 2 and limits.bucket is bucket  # run-time changes outlive a reload
            proxy.configure("c", "*", {"max_concurrent": None, "rate_limit": None}, ["echo"])
            assert limits.slots is None and limits.bucket is None and limits.server_slots is server_slots
            assert server_slots.limit == 4 and limits.gated
            third = {"mcpServers": {"c": {**chaos("echo=healthy")}}}
            await proxy.reload(parse_config({"environment": "testing", **third}))
            assert limits.server_slots is None and not limits.gated
            assert not (await proxy.call("c__echo", {})).is_error
            await proxy.reload(parse_config({"environment": "testing", **first}))
            assert limits.slots is None and limits.server_slots is not None  # the run-time "no cap" still holds
            proxy.guard.forget("c", "echo")
            assert proxy.guard.limit_stats() == []


async def test_limited_tools_rejected_by_their_circuit_or_with_an_invalid_policy_are_answered() -> None:
    clock = FakeClock()
    # Each glob alone is valid; together, for the tool "ab", the open period would outgrow its cap.
    tools = {"echo": {"max_concurrent": 1}, "a*": {"timeout": 500}, "*b": {"max_timeout": 400}}
    config = {"mcpServers": {"c": {**chaos("echo=healthy", "ab=healthy"), "tools": tools}}}
    async with in_process(config, clock) as (proxy, _):
        with anyio.fail_after(60):
            proxy.breaker("c", "echo").force(CircuitState.FORCED_OPEN)
            rejected = await proxy.call("c__echo", {})
            invalid = await proxy.call("c__ab", {})
            (limits,) = [lim for _, tool, lim in proxy.guard.limit_stats() if tool == "echo"]
            assert limits.slots is not None and limits.slots.inflight == 0  # the rejected call gave its slot back
            other = {"mcpServers": {"d": chaos("echo=healthy", seed=3)}}
            await proxy.reload(parse_config({"environment": "testing", **other}))
    assert rejected.meta is not None and rejected.meta["circuitbox/breaker"]["state"] == "forced_open"
    text = invalid.content[0]
    assert invalid.is_error and isinstance(text, types.TextContent) and "invalid circuit policy" in text.text
    assert [tool for server, tool, _ in proxy.guard.limit_stats() if server == "c"] == []
