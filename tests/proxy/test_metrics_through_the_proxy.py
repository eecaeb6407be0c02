"""Metrics of a real proxy: scripted calls through `circuitbox serve --transport http`, then /metrics parsed."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client
from prometheus_client.parser import text_string_to_metric_families

from tests.net import free_port
from tests.observability.conftest import _find
from tests.proxy.harness import chaos, running_process, write_config

pytestmark = pytest.mark.anyio

TRIP = {"failure_threshold": 3, "timeout": 600, "jitter": 0, "minimum_calls": 100}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found[(name, frozenset({"server": "c", **labels}.items()))]


async def test_every_family_shows_what_the_scripted_calls_did(tmp_path: Path) -> None:
    server = {
        **chaos(
            "ok=healthy", "bad=error:broken: internal error", "fb=error:down: unavailable", "stuck=hang", "add=add"
        ),
        "breaker": TRIP,
        "tools": {"stuck": {"call_timeout": 0.3}, "fb": {"fallback": {"text": "served from the fallback"}}},
    }
    config = write_config(tmp_path, {"mcpServers": {"c": server}})
    port = free_port()
    args = [sys.executable, "-m", "circuitbox", "serve", "--config", str(config), "--transport", "http"]
    async with running_process([*args, "--port", str(port)], port=port):
        url = f"http://127.0.0.1:{port}"
        async with streamable_http_client(f"{url}/mcp") as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            for _ in range(2):
                assert not (await session.call_tool("c__ok", {"message": "x"})).is_error
            for _ in range(4):  # three failures open it, the fourth is rejected
                await session.call_tool("c__bad", {})
            for _ in range(4):  # the same, answered by the fallback
                await session.call_tool("c__fb", {})
            assert (await session.call_tool("c__stuck", {})).is_error
            await session.call_tool("c__add", {"a": "not a number", "b": 1})  # the agent's mistake: ignored
            with pytest.raises(MCPError):
                await session.call_tool("c__missing", {})
        async with httpx2.AsyncClient() as http:
            scrape = (await http.get(f"{url}/metrics")).text
            openmetrics = await http.get(f"{url}/metrics", headers={"Accept": "application/openmetrics-text"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")

    found = samples(scrape)
    assert value(found, "circuit_breaker_state", tool="bad") == 1
    assert value(found, "circuit_breaker_state", tool="ok") == 0
    assert value(found, "circuit_breaker_requests_total", tool="ok", result="success") == 2
    assert value(found, "circuit_breaker_requests_total", tool="bad", result="failure") == 3
    assert value(found, "circuit_breaker_requests_total", tool="bad", result="rejected") == 1
    assert value(found, "circuit_breaker_requests_total", tool="add", result="ignored") == 1
    assert value(found, "circuit_breaker_failures_total", tool="bad", failure_type="tool_error") == 3
    assert value(found, "circuit_breaker_failures_total", tool="stuck", failure_type="timeout") == 1
    assert (
        value(found, "circuit_breaker_state_transitions_total", tool="bad", from_state="closed", to_state="open") == 1
    )
    assert value(found, "circuit_breaker_response_time_seconds_count", tool="ok") == 2
    assert value(found, "circuit_breaker_fallback_activations_total", tool="fb") == 1
    assert value(found, "circuit_breaker_health_score", tool="bad") == 0
    assert value(found, "circuit_breaker_health_score", tool="ok") == 1
    assert not any(dict(labels).get("tool") == "missing" for _, labels in found)  # labels only from the catalog

    checked = await anyio.run_process([_find("promtool"), "check", "metrics"], input=scrape.encode(), check=False)
    assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()


async def test_a_tool_that_disappears_takes_its_breaker_and_series_with_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"mcpServers": {"c": chaos("ok=healthy", "gone=healthy")}})
    port = free_port()
    args = [sys.executable, "-m", "circuitbox", "serve", "--config", str(config), "--transport", "http"]
    async with running_process([*args, "--port", str(port)], port=port), httpx2.AsyncClient() as http:
        url = f"http://127.0.0.1:{port}"
        async with streamable_http_client(f"{url}/mcp") as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            await session.call_tool("c__gone", {})
            await session.call_tool("c__ok", {})
            tools_of = {key[1] for key in samples((await http.get(f"{url}/metrics")).text)}
            assert frozenset({("server", "c"), ("tool", "gone"), ("result", "success")}) in tools_of
            await session.call_tool("c__chaos_control", {"action": "remove_tool", "tool": "gone"})
            with anyio.fail_after(10):
                while "c__gone" in {tool.name for tool in (await session.list_tools()).tools}:
                    await anyio.sleep(0.02)
            status = await session.call_tool("circuit_status", {})
            assert status.structured_content is not None
            assert "gone" not in [row["tool"] for row in status.structured_content["breakers"]]
        found = samples((await http.get(f"{url}/metrics")).text)
    assert not any(dict(labels).get("tool") == "gone" for _, labels in found)
    assert value(found, "circuit_breaker_requests_total", tool="ok", result="success") == 1
