"""Edges found in review: secrets in error texts, a busy metrics port, own tools' argument checks."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import anyio
import pytest
from mcp import MCPError

from circuitbox.config.load import parse_config
from circuitbox.server.downstream import Downstream
from tests.proxy.harness import chaos, proxy_session, write_config

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
        log = tmp_path / "proxy.log"
        with log.open("w") as errlog:
            async with proxy_session(tmp_path, config, errlog=errlog) as session:
                # The bind runs in the background: wait until it has failed, then prove the proxy still serves.
                with anyio.fail_after(20):
                    while f"metrics endpoint disabled: cannot listen on 127.0.0.1:{port}" not in log.read_text():
                        await anyio.sleep(0.05)
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


async def test_a_regular_file_on_stdin_is_served_by_the_fallback_transport(tmp_path: Path) -> None:
    """Pipes get the loop-native transport; anything else (here a file) the SDK's. The file's end is the client
    closing stdin, which ends the session (MCP's stdio shutdown), so only the inline `initialize` is checked."""
    config = write_config(tmp_path, {"mcpServers": {"c": chaos("ok=healthy")}})
    init = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    lines = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
    ]
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with requests.open("rb") as stdin:
        done = await anyio.run_process(
            [sys.executable, "-m", "circuitbox", "serve", "--config", str(config)], stdin=stdin, check=False
        )
    answers = {a["id"]: a for a in map(json.loads, done.stdout.decode().splitlines())}
    assert answers[1]["result"]["serverInfo"]["name"] == "circuitbox"
    assert answers[1]["result"]["capabilities"]["tools"]["listChanged"] is True
    assert done.returncode == 0
