"""Fixtures that run the proxy for real: `circuitbox serve` as a child process, downstreams as real MCP servers."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client

from tests.net import import_path_env, wait_for_port

REPO = Path(__file__).resolve().parents[2]
EVERYTHING = REPO / ".cache/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"


def chaos(
    *tools: str, seed: int = 1, read_only: tuple[str, ...] = (), idempotent: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A server entry running the bundled chaos server over stdio with the given `--tool` specs (the tools named in
    `read_only` / `idempotent` listed with those annotations)."""
    args = ["-m", "circuitbox", "chaos", "--seed", str(seed)]
    for spec in tools:
        args += ["--tool", spec]
    for name in read_only:
        args += ["--read-only", name]
    for name in idempotent:
        args += ["--idempotent", name]
    entry: dict[str, Any] = {"command": sys.executable, "args": args}
    if env := import_path_env():
        entry["env"] = env
    return entry


def time_server() -> dict[str, Any]:
    exe = shutil.which("mcp-server-time")
    if exe:
        return {"command": exe, "args": ["--local-timezone", "UTC"]}
    return {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}


def everything_server(transport: str = "stdio") -> dict[str, Any]:
    assert EVERYTHING.exists(), "run `bash .ci/install-test-servers.sh` to install server-everything"
    return {"command": shutil.which("node") or "node", "args": [str(EVERYTHING), transport]}


def write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    config.setdefault("environment", "testing")
    path = tmp_path / "circuitbox.json"
    path.write_text(json.dumps(config))
    return path


@asynccontextmanager
async def proxy_session(
    tmp_path: Path,
    config: dict[str, Any],
    *,
    message_handler: Callable[[Any], Any] | None = None,
    extra_args: list[str] | None = None,
    errlog: TextIO | None = None,
    **callbacks: Any,
) -> AsyncIterator[ClientSession]:
    """`circuitbox serve` over stdio as a child process, driven by the SDK's real client."""
    path = write_config(tmp_path, config)
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "circuitbox", "serve", "--config", str(path), *(extra_args or [])],
        env={
            "PYTHONUNBUFFERED": "1",
            **import_path_env(),
            **{k: v for k, v in os.environ.items() if k.startswith("COVERAGE")},
        },
        cwd=str(tmp_path),
    )
    async with (
        stdio_client(params, errlog=errlog or sys.stderr) as (read, write),
        ClientSession(read, write, message_handler=message_handler, read_timeout_seconds=60, **callbacks) as session,
    ):
        with anyio.fail_after(30):
            await session.initialize()
        yield session


@asynccontextmanager
async def running_process(args: list[str], *, port: int, env: dict[str, str] | None = None) -> AsyncIterator[None]:
    """A server process listening on 127.0.0.1:`port`, stopped (by its PID) when the block ends."""
    process = await anyio.open_process(args, env={**os.environ, **(env or {})}, stdout=None, stderr=None)
    try:
        await wait_for_port(port)
        yield
    finally:
        process.terminate()
        with anyio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


def everything_http_args(transport: str) -> list[str]:
    node = shutil.which("node") or "node"
    return [node, "--require", str(Path(__file__).with_name("loopback.cjs")), str(EVERYTHING), transport]


def pid_of(config_path: Path) -> int:
    """The PID of the `circuitbox serve` process started with `config_path` (unique per test)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in cmdline and str(config_path).encode() in cmdline:
            return int(entry.name)
    raise LookupError(f"no circuitbox serve process for {config_path}")
