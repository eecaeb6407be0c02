"""The official MCP conformance server suite, against real servers directly and through `circuitbox serve`.

Each server runs the suite's server scenarios three ways: directly over streamable HTTP, then through circuitbox's
HTTP front end with that server as a stdio downstream and as an HTTP downstream. Every scenario that passes directly
must pass through circuitbox; one that fails directly is printed with its failed checks, not hidden. The suite calls
tools, prompts and resources by their own names (`test_simple_text`, `test://static-text`), so circuitbox publishes
the single server without a prefix (`"namespace": ""`), as a user fronting one server would.
"""

from __future__ import annotations

import os
import shutil
import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.suite import SPEC_2026, passed, report, run_suite
from tests.net import free_port
from tests.proxy.harness import EVERYTHING, REPO, running_process, write_config

pytestmark = pytest.mark.anyio

LOOPBACK = REPO / "tests/proxy/loopback.cjs"


def sdk_everything(transport: str, port: int | None = None) -> list[str]:
    """The MCP Python SDK's conformance server (tests/conformance/everything_main.py)."""
    args = [sys.executable, "-m", "tests.conformance.everything_main", transport]
    return args + ([str(port)] if port is not None else [])


def npm_everything(transport: str, port: int | None = None) -> list[str]:
    """npm's @modelcontextprotocol/server-everything, its HTTP listener pinned to 127.0.0.1."""
    assert EVERYTHING.exists(), "run `bash .ci/install-test-servers.sh` to install server-everything"
    node = shutil.which("node") or "node"
    mode = "streamableHttp" if transport == "http" else "stdio"
    return [node, "--require", str(LOOPBACK), str(EVERYTHING), mode]


SERVERS = {"sdk-everything": sdk_everything, "npm-everything": npm_everything}


def direct_server(name: str, port: int) -> AbstractAsyncContextManager[None]:
    args = SERVERS[name]("http", port)
    return running_process(args, port=port, env={"PORT": str(port), "PYTHONPATH": _import_path()})


def _import_path() -> str:
    # The vendored server imports as tests.conformance.*; circuitbox from the checkout under test.
    return os.pathsep.join(p for p in (str(REPO), str(REPO / "src"), os.environ.get("PYTHONPATH", "")) if p)


def serve(config: Path, port: int) -> list[str]:
    args = [sys.executable, "-m", "circuitbox", "serve", "--config", str(config)]
    return [*args, "--transport", "http", "--port", str(port)]


@pytest.mark.parametrize("downstream", ["stdio", "http"])
@pytest.mark.parametrize("server", sorted(SERVERS))
async def test_every_scenario_that_passes_directly_passes_through_circuitbox(
    tmp_path: Path, server: str, downstream: str
) -> None:
    server_port, proxy_port = free_port(), free_port()
    async with direct_server(server, server_port):
        direct = await run_suite(f"http://127.0.0.1:{server_port}/mcp", tmp_path / "direct")
        if downstream == "http":
            entry: dict[str, Any] = {"type": "http", "url": f"http://127.0.0.1:{server_port}/mcp"}
        else:
            command, *args = SERVERS[server]("stdio")
            entry = {"command": command, "args": args, "cwd": str(REPO), "env": {"PYTHONPATH": _import_path()}}
        config = write_config(tmp_path, {"mcpServers": {server: {**entry, "namespace": ""}}})
        async with running_process(serve(config, proxy_port), port=proxy_port):
            through = await run_suite(f"http://127.0.0.1:{proxy_port}/mcp", tmp_path / "through")
    print(report(f"{server} as a {downstream} downstream", direct, through))
    lost = passed(direct) - passed(through)
    assert not lost, f"pass directly, fail through circuitbox: {sorted(lost)}\n{report(server, direct, through)}"
    assert passed(direct), "no scenario passed even directly: the run proves nothing"


@pytest.mark.parametrize("downstream", ["stdio", "http"])
async def test_every_2026_scenario_that_passes_directly_passes_through_circuitbox(
    tmp_path: Path, downstream: str
) -> None:
    """Spec 2026-07-28 (stateless requests, input-required results): the SDK's server speaks it over HTTP and over
    stdio, so circuitbox reaches it in that era for the requests that can need input (modern_lane.py; over stdio on
    a child of their own, modern_stdio.py)."""
    server_port, proxy_port = free_port(), free_port()
    async with direct_server("sdk-everything", server_port):
        direct = await run_suite(f"http://127.0.0.1:{server_port}/mcp", tmp_path / "direct", SPEC_2026)
        if downstream == "http":
            entry: dict[str, Any] = {"type": "http", "url": f"http://127.0.0.1:{server_port}/mcp"}
        else:
            command, *args = SERVERS["sdk-everything"]("stdio")
            entry = {"command": command, "args": args, "cwd": str(REPO), "env": {"PYTHONPATH": _import_path()}}
        config = write_config(tmp_path, {"mcpServers": {"sdk-everything": {**entry, "namespace": ""}}})
        async with running_process(serve(config, proxy_port), port=proxy_port):
            through = await run_suite(f"http://127.0.0.1:{proxy_port}/mcp", tmp_path / "through", SPEC_2026)
    print(report(f"spec {SPEC_2026}, sdk-everything as a {downstream} downstream", direct, through))
    lost = passed(direct) - passed(through)
    assert not lost, f"pass directly, fail through circuitbox: {sorted(lost)}\n{report('sdk', direct, through)}"
    assert {"input-required-result-multi-round", "server-stateless"} <= passed(direct), "the run proves nothing"
