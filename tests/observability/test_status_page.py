"""The status routes on a real HTTP proxy: the page as a plain table, the circuit_status document, health and
readiness, and the token on every route but /healthz."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from circuitbox.server.transports import http_client as create_mcp_http_client
from tests.net import free_port
from tests.proxy.harness import chaos, running_process, write_config

pytestmark = pytest.mark.anyio


def _serve(config: Path, port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "circuitbox",
        "serve",
        "--config",
        str(config),
        "--transport",
        "http",
        "--port",
        str(port),
        *extra,
    ]


async def test_the_status_routes_show_every_breaker_and_need_the_token_but_healthz(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"mcpServers": {"c": chaos("echo=healthy")}})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": "Bearer s3cret"}
    async with running_process(_serve(config, port, "--auth-token", "s3cret"), port=port):
        async with (
            create_mcp_http_client(headers=auth) as http_client,
            streamable_http_client(f"{url}/mcp", http_client=http_client) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            assert not (await session.call_tool("c__echo", {"message": "hi"})).is_error
        async with httpx2.AsyncClient() as http:
            assert (await http.get(f"{url}/healthz")).status_code == 200
            for path in ("/status", "/status.json", "/readyz"):
                assert (await http.get(f"{url}{path}")).status_code == 401
            with anyio.fail_after(30):
                while (ready := await http.get(f"{url}/readyz", headers=auth)).status_code != 200:
                    assert ready.json()["ready"] is False
                    await anyio.sleep(0.05)
            doc = (await http.get(f"{url}/status.json", headers=auth)).json()
            assert [(b["server"], b["tool"], b["state"]) for b in doc["breakers"]] == [("c", "echo", "closed")]
            assert doc["servers"][0]["connection"] == "connected"
            page = await http.get(f"{url}/status", headers=auth)
            assert page.headers["content-type"].startswith("text/html")
            assert "<td>echo</td>" in page.text and 'class="state closed"' in page.text
            assert (await http.post(f"{url}/status", headers=auth)).status_code == 405


async def test_the_event_stream_sends_a_snapshot_at_once_and_the_transition_a_tripped_call_causes(
    tmp_path: Path,
) -> None:
    server = {**chaos("ok=healthy", "bad=error"), "breaker": {"failure_threshold": 1, "timeout": 600}}
    config = write_config(tmp_path, {"mcpServers": {"c": server}})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with (
        running_process(_serve(config, port), port=port),
        httpx2.AsyncClient(timeout=None) as http,
        http.stream("GET", f"{url}/status/events") as events,
    ):
        assert events.headers["content-type"].startswith("text/event-stream")
        lines = events.aiter_lines()

        async def next_document() -> dict[str, Any]:
            while not (line := await anext(lines)).startswith("data: "):
                pass
            return dict(json.loads(line.removeprefix("data: ")))

        with anyio.fail_after(30):
            first = await next_document()
            assert first["breakers"] == []
            async with (
                streamable_http_client(f"{url}/mcp") as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                assert (await session.call_tool("c__bad", {})).is_error
            while not any(b["tool"] == "bad" and b["state"] == "open" for b in (await next_document())["breakers"]):
                pass
