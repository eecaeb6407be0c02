"""The HTTP front end: loopback by default, a token required beyond it and checked on every request."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.subscriptions import ToolsListChanged

from circuitbox.server.transports import http_client as create_mcp_http_client
from tests.net import free_port
from tests.proxy.harness import chaos, running_process, write_config

pytestmark = pytest.mark.anyio


def serve_args(config: Path, port: int, *extra: str) -> list[str]:
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


def test_a_non_loopback_listener_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"mcpServers": {"c": chaos("echo=healthy")}})
    done = subprocess.run(
        serve_args(config, free_port(), "--host", "0.0.0.0"),
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"} | {"PYTHONPATH": ""},
    )
    assert done.returncode == 2
    assert "token" in done.stderr and "Traceback" not in done.stderr


async def test_every_request_needs_the_token_and_the_right_one_gets_through(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"mcpServers": {"c": chaos("echo=healthy")}})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with running_process(serve_args(config, port, "--auth-token", "s3cret"), port=port):
        async with httpx2.AsyncClient() as http:
            assert (await http.post(f"{url}/mcp", json={})).status_code == 401
            wrong = await http.get(f"{url}/metrics", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            right = await http.get(f"{url}/metrics", headers={"Authorization": "Bearer s3cret"})
            assert right.status_code == 200
            # DNS-rebinding protection: a page served from another name cannot drive the proxy, token or not.
            rebound = await http.post(
                f"{url}/mcp",
                json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                headers={"Authorization": "Bearer s3cret", "Host": "evil.example", "Accept": "application/json"},
            )
            assert rebound.status_code in (403, 421)

        headers = {"Authorization": "Bearer s3cret"}
        async with (
            create_mcp_http_client(headers=headers) as http_client,
            streamable_http_client(f"{url}/mcp", http_client=http_client) as (read, write),
            ClientSession(read, write) as session,
        ):
            init = await session.initialize()
            assert init.capabilities.tools is not None and init.capabilities.tools.list_changed is True
            result = await session.call_tool("c__echo", {"message": "handshake era"})
            assert not result.is_error

        status = await anyio.run_process(
            [sys.executable, "-m", "circuitbox", "status", "--url", url, "--auth-token", "s3cret"], check=False
        )
        assert status.returncode == 0, status.stderr.decode()
        assert "connected" in status.stdout.decode() and "echo" in status.stdout.decode()


async def test_a_2026_era_client_is_served_too(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"mcpServers": {"c": chaos("echo=healthy")}})
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    async with running_process(serve_args(config, port), port=port), Client(url) as client:
        tools = await client.list_tools()
        assert "c__echo" in {tool.name for tool in tools.tools}
        result = await client.call_tool("c__echo", {"message": "modern era"})
        assert not result.is_error
        # A downstream's list change reaches a 2026-era client on its subscriptions/listen stream. The change is
        # made on the connection the lists come from: a 2026-era client's calls go to a child of their own, whose
        # in-memory state is its own (modern_stdio.py).
        async with client.listen(tools_list_changed=True) as subscription, Client(url, mode="legacy") as legacy:
            await legacy.call_tool("c__chaos_control", {"action": "add_tool", "tool": "fresh"})
            with anyio.fail_after(10):
                event = await anext(aiter(subscription))
        assert isinstance(event, ToolsListChanged)
        assert "c__fresh" in {tool.name for tool in (await client.list_tools()).tools}
