"""What a user gets from `pip install circuitbox` alone: run with the python of a clean venv holding only the wheel.

Imports every `circuitbox` module, then serves for real: the SDK's client talks to `circuitbox serve` over stdio and
over HTTP, in front of the bundled chaos server, and calls a tool through it. `circuitbox demo --quick` is run by
`.ci/run` itself, so its output shows in the CI log.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

import circuitbox

BIN = Path(sys.executable).parent
CIRCUITBOX = str(BIN / "circuitbox")


def import_everything() -> int:
    # `circuitbox.__main__` runs the CLI when imported: it is exercised as `python -m circuitbox --help` instead.
    found = pkgutil.walk_packages(circuitbox.__path__, "circuitbox.")
    names = [m.name for m in found if m.name != "circuitbox.__main__"]
    for name in names:
        importlib.import_module(name)
    subprocess.run([sys.executable, "-m", "circuitbox", "--help"], check=True, stdout=subprocess.DEVNULL)
    return len(names)


def write_config(folder: Path) -> Path:
    chaos = {"command": CIRCUITBOX, "args": ["chaos", "--tool", "echo=healthy"]}
    path = folder / "circuitbox.json"
    path.write_text(json.dumps({"environment": "testing", "mcpServers": {"chaos": chaos}}))
    return path


async def exercise(session: ClientSession, transport: str) -> None:
    with anyio.fail_after(60):
        await session.initialize()
        names = {tool.name for tool in (await session.list_tools()).tools}
        assert {"chaos__echo", "circuit_status"} <= names, f"{transport}: tools listed: {sorted(names)}"
        result = await session.call_tool("chaos__echo", {"text": "hello"})
        assert not result.is_error, f"{transport}: chaos__echo failed: {result.content}"
        status = await session.call_tool("circuit_status", {})
        assert not status.is_error and status.structured_content is not None
    print(f"wheel smoke: serve over {transport}: {len(names)} tools, a call through the breaker answered")


async def over_stdio(config: Path) -> None:
    params = StdioServerParameters(command=CIRCUITBOX, args=["serve", "--config", str(config)], cwd=str(config.parent))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await exercise(session, "stdio")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def over_http(config: Path) -> None:
    port = free_port()
    args = [CIRCUITBOX, "serve", "--config", str(config), "--transport", "http", "--port", str(port)]
    process = subprocess.Popen(args, cwd=config.parent, env=os.environ.copy())  # noqa: ASYNC220 (a smoke script)
    try:
        with anyio.fail_after(60):
            while True:  # another process's socket: nothing to wait on but the port itself
                try:
                    stream = await anyio.connect_tcp("127.0.0.1", port)
                    await stream.aclose()
                    break
                except OSError:
                    assert process.poll() is None, f"circuitbox serve --transport http exited with {process.returncode}"
                    await anyio.sleep(0.1)
        url = f"http://127.0.0.1:{port}/mcp"
        async with streamable_http_client(url) as (read, write), ClientSession(read, write) as session:
            await exercise(session, "http")
    finally:
        process.terminate()
        process.wait(timeout=30)


async def main() -> None:
    print(f"wheel smoke: imported {import_everything()} circuitbox modules")
    with tempfile.TemporaryDirectory(prefix="circuitbox-wheel-") as tmp:
        config = write_config(Path(tmp))
        await over_stdio(config)
        await over_http(config)


if __name__ == "__main__":
    anyio.run(main)
