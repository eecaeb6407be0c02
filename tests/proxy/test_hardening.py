"""Edges found in review: secrets in error texts, a busy metrics port, own tools' argument checks."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from mcp import MCPError

from circuitbox.server.config import parse_config
from circuitbox.server.downstream import Downstream
from tests.proxy.harness import chaos, proxy_session

pytestmark = pytest.mark.anyio


def test_error_texts_never_carry_a_downstreams_header_or_env_values() -> None:
    config = parse_config(
        {
            "mcpServers": {
                "remote": {"url": "http://127.0.0.1:1/mcp", "headers": {"Authorization": "Bearer SUPERSECRET\n"}},
                "local": {"command": "x", "env": {"API_KEY": "k3y-value"}},
            }
        }
    )
    remote, local = Downstream(config.servers["remote"]), Downstream(config.servers["local"])
    leaked = "LocalProtocolError: Illegal header value b'Bearer SUPERSECRET\\n'"
    assert "SUPERSECRET" not in remote.redact(leaked)
    assert "k3y-value" not in local.redact("failed with API_KEY=k3y-value")


async def test_a_busy_metrics_port_costs_the_metrics_endpoint_not_the_proxy(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = {"metrics": {"port": port}, "mcpServers": {"c": chaos("ok=healthy")}}
        async with proxy_session(tmp_path, config) as session:
            assert not (await session.call_tool("c__ok", {})).is_error


async def test_own_tools_reject_arguments_of_the_wrong_type_by_name(tmp_path: Path) -> None:
    async with proxy_session(tmp_path, {"mcpServers": {"c": chaos("ok=healthy")}}) as session:
        with pytest.raises(MCPError, match="'server' must be a string"):
            await session.call_tool("circuit_status", {"server": ["c"]})
        with pytest.raises(MCPError, match="unknown argument 'srever'"):
            await session.call_tool("circuit_metrics", {"srever": "c"})


async def test_json_logs_carry_one_object_per_line_with_the_transition(tmp_path: Path) -> None:
    server = {**chaos("bad=error"), "breaker": {"failure_threshold": 2, "timeout": 600}}
    log_path = tmp_path / "stderr.log"
    with log_path.open("w") as errlog:
        async with proxy_session(
            tmp_path, {"mcpServers": {"c": server}}, extra_args=["--log-format", "json"], errlog=errlog
        ) as session:
            for _ in range(2):
                await session.call_tool("c__bad", {})
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    opened = [r for r in records if r.get("event") == "state_transition" and r.get("to_state") == "open"]
    assert opened and opened[0]["server"] == "c" and opened[0]["tool"] == "bad"
