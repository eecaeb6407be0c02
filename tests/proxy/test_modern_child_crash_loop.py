"""A stdio server's child serving 2026-era requests (modern_stdio.py) is one of its processes too: when it keeps
dying, its restarts and its crash loop show in circuit_status and on `circuitbox status`, with its stderr in the
server's last lines (secrets masked), while the main connection stays connected; and it is started again only after
a backoff, never in a tight loop by the requests that keep coming."""

from __future__ import annotations

import json
import os
import sys
from itertools import pairwise
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import Client, MCPError

from circuitbox.config.load import parse_config
from circuitbox.server import modern_lane
from circuitbox.server.downstream import Backoff, Connection, Downstream
from tests.net import free_port, import_path_env
from tests.proxy.harness import running_process, write_config
from tests.proxy.test_http_front_end import serve_args

pytestmark = pytest.mark.anyio

SECRET = "tok-very-secret-4242"

# Both eras: its main connection is the handshake one and answers calls; a child opened with server/discover (the
# 2026-era one) says when it came up, and dies on its first call, its token in its last words.
DIES_ON_A_2026_CALL = """
import json, os, sys, time
modern = False
for line in sys.stdin:
    sent = json.loads(line)
    method = sent.get('method')
    if 'id' not in sent:
        continue
    info = {'capabilities': {'tools': {}}, 'serverInfo': {'name': 's', 'version': '1'}}
    if method == 'initialize':
        result = {'protocolVersion': sent['params']['protocolVersion'], **info}
    elif method == 'server/discover':
        modern = True
        print(f'2026-era child up at {time.monotonic()}', file=sys.stderr, flush=True)
        result = {'supportedVersions': ['2026-07-28'], **info}
    elif method == 'tools/list':
        result = {'tools': [{'name': 'crash', 'inputSchema': {'type': 'object'}}]}
    elif method == 'tools/call' and modern:
        print('crashing with token ' + os.environ['SERVICE_TOKEN'], file=sys.stderr, flush=True)
        os._exit(3)
    elif method == 'tools/call':
        result = {'content': [{'type': 'text', 'text': 'main'}]}
    else:
        error = {'code': -32601, 'message': method}
        print(json.dumps({'jsonrpc': '2.0', 'id': sent['id'], 'error': error}), flush=True)
        continue
    print(json.dumps({'jsonrpc': '2.0', 'id': sent['id'], 'result': result}), flush=True)
"""

ENTRY = {
    "command": sys.executable,
    "args": ["-c", DIES_ON_A_2026_CALL],
    "env": {"SERVICE_TOKEN": SECRET},
    "crash_loop_restarts": 3,
    "breaker": {"failure_threshold": 50},  # every call must reach it: its deaths are what is counted here
}
CLIENT = {types.PROTOCOL_VERSION_META_KEY: "2026-07-28"}
CALL = types.CallToolRequest(params=types.CallToolRequestParams(name="crash", arguments={}))


async def test_a_2026_era_child_that_keeps_dying_is_restarted_after_a_backoff_and_counted_on_its_own() -> None:
    config = parse_config({"environment": "testing", "mcpServers": {"s": ENTRY}}, env={}).servers["s"]
    # Full jitter: each delay is at least half of `initial`.
    downstream = Downstream(config, backoff=Backoff(initial=0.4, maximum=0.4))
    failed: list[int] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(downstream.run)
        with anyio.fail_after(60):
            await downstream.first_attempt_done.wait()
            while downstream.modern_child.restarts < 3:
                with modern_lane.serving({"_meta": CLIENT}), pytest.raises(MCPError) as died:
                    await downstream.request_or_input(CALL, types.CallToolResult)
                failed.append(died.value.error.code)
            main = await downstream.request(CALL, types.CallToolResult)
        tg.cancel_scope.cancel()
    assert set(failed) == {types.CONNECTION_CLOSED}
    assert downstream.modern_child.status() == {"state": "crash_loop", "restarts": 3, "last_error": "its stdout ended"}
    # The main connection was never touched: still connected, never restarted, its calls answered.
    assert (downstream.state, downstream.restarts, main.content[0]) == (
        Connection.CONNECTED,
        0,
        types.TextContent(text="main"),
    )
    tail = list(downstream.stderr_tail)
    assert tail.count("crashing with token ***") == 4 and SECRET not in json.dumps(tail)
    ups = [float(line.rsplit(" ", 1)[1]) for line in tail if line.startswith("2026-era child up at")]
    assert len(ups) == 4
    assert min(b - a for a, b in pairwise(ups)) >= 0.2  # each waited out its backoff


async def test_circuit_status_and_circuitbox_status_show_a_crash_looping_2026_era_child(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"mcpServers": {"broken": ENTRY}})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with (
        running_process(serve_args(config, port), port=port, env=import_path_env()),
        Client(f"{url}/mcp", mode="2026-07-28") as client,
    ):
        with anyio.fail_after(120):
            while True:  # a child dying and being started again: nothing to wait on but its status
                assert (await client.call_tool("broken__crash", {})).is_error
                status = await client.call_tool("circuit_status", {"server": "broken"})
                assert status.structured_content is not None
                (server,) = status.structured_content["servers"]
                if server.get("modern_child", {}).get("state") == "crash_loop":
                    break
        shown = await anyio.run_process(
            [sys.executable, "-m", "circuitbox", "status", "--url", url],
            env={**os.environ, **import_path_env()},
            check=False,
        )
    assert server["connection"] == "connected" and server["restarts"] == 0
    assert server["modern_child"] == {"state": "crash_loop", "restarts": 2, "last_error": "its stdout ended"}
    assert server["stderr_tail"][-1] == "crashing with token ***"
    text = status.content[0]
    assert isinstance(text, types.TextContent)
    assert "its 2026-era child in a crash loop: restarted 2 times; its stderr ended with: crashing with token ***" in (
        text.text
    )
    out = shown.stdout.decode()
    assert shown.returncode == 0, shown.stderr
    line = next(line for line in out.splitlines() if line.startswith("broken "))  # its server line, first
    assert "its 2026-era child in a crash loop: restarted 2 times" in line
    assert SECRET not in json.dumps(status.structured_content) + out + shown.stderr.decode()
