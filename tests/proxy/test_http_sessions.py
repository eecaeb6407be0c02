"""The HTTP upstream's session cap is ours (config `http`), not the SDK's 10,000, and idle sessions make room."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client

from circuitbox.config.load import load_config
from circuitbox.config.model import ConfigError
from tests.net import free_port
from tests.proxy.harness import chaos, running_process, write_config
from tests.proxy.test_http_front_end import serve_args

pytestmark = pytest.mark.anyio

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
PING = {"jsonrpc": "2.0", "id": 2, "method": "ping"}


async def open_session(raw: httpx2.AsyncClient, url: str) -> str:
    """A handshake-era session opened by hand, with no stream left open: idle from here on."""
    opened = await raw.post(url, json=INITIALIZE, headers=HEADERS)
    assert opened.status_code == 200, opened.text
    session_id = opened.headers["mcp-session-id"]
    initialized = await raw.post(url, json=INITIALIZED, headers={**HEADERS, "mcp-session-id": session_id})
    assert initialized.status_code == 202
    return session_id


async def ping(raw: httpx2.AsyncClient, url: str, session_id: str) -> int:
    return (await raw.post(url, json=PING, headers={**HEADERS, "mcp-session-id": session_id})).status_code


async def test_past_the_session_cap_the_longest_idle_session_is_closed_to_admit_a_new_client(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"http": {"max_sessions": 2}, "mcpServers": {"c": chaos("echo=healthy")}})
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    async with running_process(serve_args(config, port), port=port), httpx2.AsyncClient(timeout=30) as raw:
        oldest = await open_session(raw, url)
        newer = await open_session(raw, url)
        assert await ping(raw, url, oldest) == 200  # used last: now `newer` is the longest idle
        third = await open_session(raw, url)
        assert await ping(raw, url, newer) == 404
        assert await ping(raw, url, oldest) == 200
        assert await ping(raw, url, third) == 200
        # An SDK client still gets in, and works, past a cap full of idle sessions.
        async with Client(url, mode="legacy") as client:
            assert "c__echo" in {tool.name for tool in (await client.list_tools()).tools}


async def test_a_session_with_a_stream_open_is_never_closed_for_a_new_client(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"http": {"max_sessions": 1}, "mcpServers": {"c": chaos("echo=healthy")}})
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    async with running_process(serve_args(config, port), port=port), httpx2.AsyncClient(timeout=30) as raw:
        busy = await open_session(raw, url)
        stream_headers = {"Accept": "text/event-stream", "mcp-session-id": busy}
        async with raw.stream("GET", url, headers=stream_headers) as stream:
            assert stream.status_code == 200
            refused = await raw.post(url, json=INITIALIZE, headers=HEADERS)
            assert refused.status_code == 503
            assert await ping(raw, url, busy) == 200
        # Its stream closed, the session is idle: the next client gets its place.
        with anyio.fail_after(30):
            while True:
                admitted = await raw.post(url, json=INITIALIZE, headers=HEADERS)
                if admitted.status_code == 200:
                    break
                await anyio.sleep(0.05)  # the server sees the stream close a moment after the client does
        assert await ping(raw, url, busy) == 404


def test_a_session_cap_below_one_is_a_config_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"http": {"max_sessions": 0}, "mcpServers": {"c": chaos("echo=healthy")}})
    with pytest.raises(ConfigError, match="max_sessions"):
        load_config(path)
