"""The HTTP upstream's session cap is ours (config `http`), not the SDK's 10,000."""

from __future__ import annotations

from pathlib import Path

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


async def test_past_the_configured_session_cap_a_new_client_is_refused_until_a_session_closes(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"http": {"max_sessions": 2}, "mcpServers": {"c": chaos("echo=healthy")}})
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    async with running_process(serve_args(config, port), port=port), httpx2.AsyncClient(timeout=30) as raw:
        async with Client(url, mode="legacy") as first, Client(url, mode="legacy") as second:
            await first.list_tools()
            await second.list_tools()
            refused = await raw.post(url, json=INITIALIZE, headers=HEADERS)
            assert refused.status_code == 503
        # Both clients closed their sessions: a new one gets in.
        admitted = await raw.post(url, json=INITIALIZE, headers=HEADERS)
        assert admitted.status_code == 200


def test_a_session_cap_below_one_is_a_config_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"http": {"max_sessions": 0}, "mcpServers": {"c": chaos("echo=healthy")}})
    with pytest.raises(ConfigError, match="max_sessions"):
        load_config(path)
