"""A stdio downstream that keeps dying is reported as a crash loop, with its restarts and the tail of its stderr
(its configured secrets masked), in circuit_status and on its line of `circuitbox status`; it is still restarted."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from circuitbox.commands.status import render
from circuitbox.config.load import parse_config
from circuitbox.server.downstream import Backoff, Connection, Downstream
from circuitbox.server.transports import http_client
from tests.net import free_port, import_path_env
from tests.proxy.harness import running_process, write_config
from tests.proxy.test_http_front_end import serve_args

pytestmark = pytest.mark.anyio

SECRET = "tok-very-secret-4242"

# Exits at start after 25 lines of stderr, one of which quotes its token: what a misconfigured server does.
DIES_AT_START = (
    "import os, sys\n"
    "for i in range(25):\n"
    "    print(f'loading module {i}', file=sys.stderr)\n"
    "print('trace ' + 'x' * 2000, file=sys.stderr)\n"
    "print('connecting with token ' + os.environ['SERVICE_TOKEN'], file=sys.stderr)\n"
    "print('fatal: the backend refused the token', file=sys.stderr)\n"
    "sys.exit(3)\n"
)


def _status(result: types.CallToolResult) -> dict[str, Any]:
    assert result.structured_content is not None
    return dict(result.structured_content)


async def test_a_downstream_that_exits_at_start_is_a_crash_loop_with_its_stderr_tail_and_no_secret(
    tmp_path: Path,
) -> None:
    entry = {
        "command": sys.executable,
        "args": ["-c", DIES_AT_START],
        "env": {"SERVICE_TOKEN": SECRET},
        "crash_loop_restarts": 3,
    }
    config = write_config(tmp_path, {"mcpServers": {"broken": entry}})
    port = free_port()
    async with running_process(serve_args(config, port), port=port, env=import_path_env()):
        async with (
            http_client() as http,
            streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            with anyio.fail_after(120):
                await session.initialize()
                while True:  # another process dying and restarting: nothing to wait on but its status
                    status = _status(await session.call_tool("circuit_status", {}))
                    (server,) = status["servers"]
                    if server["connection"] == "crash_loop":
                        break
                    await anyio.sleep(0.1)
                refused = await session.call_tool("broken__anything", {})
                text = (await session.call_tool("circuit_status", {})).content[0]
        shown = await anyio.run_process(
            [sys.executable, "-m", "circuitbox", "status", "--url", f"http://127.0.0.1:{port}"],
            env={**os.environ, **import_path_env()},
            check=False,
        )
    assert server["restarts"] >= 2  # three deaths: the first start and at least two restarts
    tail = server["stderr_tail"]
    assert len(tail) == 20 and tail[-1] == "fatal: the backend refused the token"
    assert tail[-2] == "connecting with token ***"
    assert tail[-3] == "trace " + "x" * 494 + "... (2006 characters)"  # a long line is cut for the status
    assert tail[0] == "loading module 8"
    assert SECRET not in json.dumps(status)
    assert isinstance(text, types.TextContent) and "crash loop: restarted" in text.text
    assert "its stderr ended with: fatal: the backend refused the token" in text.text
    answer = refused.content[0]
    assert refused.is_error and isinstance(answer, types.TextContent)
    assert "server 'broken' is in a crash loop (restarted" in answer.text
    out = shown.stdout.decode()
    assert shown.returncode == 0, shown.stderr
    (line,) = [line for line in out.splitlines() if line.startswith("broken ")]
    assert "crash_loop" in line and "crash loop: restarted" in line
    assert line.endswith("its stderr ended with: fatal: the backend refused the token")
    assert SECRET not in out + shown.stderr.decode()


def test_the_status_line_of_a_crash_loop_without_an_error_or_stderr_still_says_so() -> None:
    server = {"server": "s", "connection": "crash_loop", "tools": 0, "last_error": None, "restarts": 1}
    line = render({"servers": [server], "breakers": []}).splitlines()[1]
    assert line.endswith("  crash loop: restarted 1 time; it wrote nothing to stderr")


async def _deaths(downstream: Downstream, restarts: int) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(downstream.run)
        with anyio.fail_after(60):
            while downstream.restarts < restarts:
                await anyio.sleep(0.01)  # a real process dying again and again: nothing else to wait on
        tg.cancel_scope.cancel()


async def test_only_deaths_within_the_window_count_and_only_stdio_servers_crash_loop() -> None:
    fast = Backoff(initial=0.01, maximum=0.02)
    dies = {"command": sys.executable, "args": ["-c", "raise SystemExit(3)"], "crash_loop_restarts": 2}
    config = parse_config(
        {
            "environment": "testing",
            "mcpServers": {
                "spaced": {**dies, "crash_loop_window": 0.001},  # each death is alone in its window
                "looping": {**dies, "crash_loop_window": 600},
                "remote": {"url": f"http://127.0.0.1:{free_port()}/mcp", "crash_loop_restarts": 1},
            },
        },
        env={},
    )
    states = {}
    for name in ("spaced", "looping", "remote"):
        downstream = Downstream(config.servers[name], backoff=fast)
        await _deaths(downstream, 3)
        states[name] = downstream.state
    assert states == {
        "spaced": Connection.RESTARTING,
        "looping": Connection.CRASH_LOOP,
        "remote": Connection.RESTARTING,
    }
