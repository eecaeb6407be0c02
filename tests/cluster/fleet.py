"""A fleet for the scale-out tests: `circuitbox serve --transport http` replicas as real processes, all in front
of one chaos server over HTTP, sharing breakers through a real redis-server; each driven by the SDK's client."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import mcp_types as types
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from circuitbox.server.transports import http_client
from tests.net import free_port, import_path_env, wait_for_port
from tests.proxy.harness import running_process

GROUP = "fleet"


def _env() -> dict[str, str]:
    return {"PYTHONUNBUFFERED": "1", **import_path_env()}


@asynccontextmanager
async def chaos_http(*tools: str) -> AsyncIterator[ChaosServer]:
    """The bundled chaos server over streamable HTTP (one downstream all replicas share)."""
    port = free_port()
    args = [sys.executable, "-m", "circuitbox", "chaos", "--transport", "http", "--port", str(port)]
    for tool in tools:
        args += ["--tool", tool]
    async with running_process(args, port=port, env=_env()), session_at(f"http://127.0.0.1:{port}/mcp") as session:
        yield ChaosServer(f"http://127.0.0.1:{port}/mcp", session)


@dataclass
class ChaosServer:
    url: str
    session: ClientSession

    async def set(self, tool: str, behaviour: str) -> None:
        await control(self.session, {"action": "set", "tool": tool, "behaviour": behaviour})

    async def stats(self, tool: str) -> dict[str, Any]:
        return dict((await control(self.session, {"action": "stats"}))["tools"][tool])


async def control(session: ClientSession, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await session.call_tool("chaos_control", arguments)
    assert not result.is_error, result
    assert result.structured_content is not None
    return dict(result.structured_content)


@asynccontextmanager
async def session_at(url: str) -> AsyncIterator[ClientSession]:
    async with (
        http_client() as client,
        streamable_http_client(url, http_client=client) as (read, write),
        ClientSession(read, write, read_timeout_seconds=60) as session,
    ):
        with anyio.fail_after(60):  # a replica on two busy shared cores can take a while
            await session.initialize()
        yield session


def replica_config(redis_url: str, chaos_url: str, **breaker: Any) -> dict[str, Any]:
    return {
        "environment": "testing",
        "admin": {"enabled": True},
        "cluster": {"redis_url": redis_url, "group": GROUP},
        "mcpServers": {"down": {"type": "http", "url": chaos_url, "breaker": {"jitter": 0, **breaker}}},
    }


@dataclass
class Replica:
    name: str
    port: int
    config: Path
    process: anyio.abc.Process
    session: ClientSession

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def call(self, tool: str = "work", arguments: dict[str, Any] | None = None) -> types.CallToolResult:
        result = await self.session.call_tool(f"down__{tool}", arguments or {})
        assert isinstance(result, types.CallToolResult)
        return result

    async def status(self, tool: str = "work") -> dict[str, Any]:
        result = await self.session.call_tool("circuit_status", {"server": "down", "tool": tool})
        assert result.structured_content is not None
        return dict(result.structured_content)

    async def breaker(self, tool: str = "work") -> dict[str, Any]:
        rows = (await self.status(tool))["breakers"]
        assert len(rows) == 1, rows
        return dict(rows[0])

    async def metrics(self) -> str:
        async with httpx2.AsyncClient() as client:
            return (await client.get(f"{self.url}/metrics")).text

    async def admin(self, tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
        result = await self.session.call_tool(tool, arguments)
        assert not result.is_error, result
        return result

    def kill(self) -> None:
        """SIGKILL, as a crash would: the replica releases nothing."""
        os.kill(self.process.pid, signal.SIGKILL)


async def spawn(tmp_path: Path, name: str, config: dict[str, Any]) -> tuple[anyio.abc.Process, int, Path]:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    port = free_port()
    args = [sys.executable, "-m", "circuitbox", "serve", "--config", str(path), "--transport", "http"]
    args += ["--port", str(port)]
    process = await anyio.open_process(args, env={**os.environ, **_env()}, stdout=None, stderr=None)
    return process, port, path


@asynccontextmanager
async def replica(
    tmp_path: Path, name: str, config: dict[str, Any], spawned: tuple[anyio.abc.Process, int, Path] | None = None
) -> AsyncIterator[Replica]:
    """One `circuitbox serve --transport http` process on a free port, with a client session; stopped by PID."""
    process, port, path = spawned or await spawn(tmp_path, name, config)
    try:
        await wait_for_port(port, limit=60)
        async with session_at(f"http://127.0.0.1:{port}/mcp") as session:
            yield Replica(name, port, path, process, session)
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.terminate()
                with anyio.move_on_after(10):
                    await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


@asynccontextmanager
async def fleet(tmp_path: Path, count: int, config: dict[str, Any]) -> AsyncIterator[list[Replica]]:
    """`count` replicas of one config, started side by side."""
    spawned = [await spawn(tmp_path, f"r{i}", config) for i in range(count)]
    try:
        async with AsyncExitStack() as stack:
            replicas = [
                await stack.enter_async_context(replica(tmp_path, f"r{i}", config, spawned[i])) for i in range(count)
            ]
            yield replicas
    finally:
        for process, _, _ in spawned:  # one that never got to its context (another failed to start first)
            if process.returncode is None:
                process.kill()
                await process.wait()


async def eventually(check: Callable[[], Any], limit: float = 60) -> Any:
    """Until `await check()` is truthy (another process's state: polled), its value."""
    with anyio.fail_after(limit):
        while True:
            value = await check()
            if value:
                return value
            await anyio.sleep(0.02)


def breaker_meta(result: types.CallToolResult) -> dict[str, Any] | None:
    meta = result.meta or {}
    found = meta.get("circuitbox/breaker")
    return dict(found) if found else None
