"""Helpers for the chaos tests: the chaos server in memory, as a stdio child, and over raw pipes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.shared.memory import create_client_server_memory_streams

from circuitbox.chaos import ChaosState
from circuitbox.chaos._server import build_server
from tests.net import import_path_env

CHAOS = [sys.executable, "-m", "circuitbox", "chaos"]


@dataclass
class Inbox:
    """What the client's message_handler received, plus an event per list_changed."""

    messages: list[Any] = field(default_factory=list)
    list_changed: anyio.Event = field(default_factory=anyio.Event)

    async def __call__(self, message: Any) -> None:
        self.messages.append(message)
        if isinstance(message, types.ToolListChangedNotification):
            self.list_changed.set()

    @property
    def errors(self) -> list[Exception]:
        return [m for m in self.messages if isinstance(m, Exception)]


def tool_args(*tools: str, seed: int | None = 1) -> list[str]:
    args = [] if seed is None else ["--seed", str(seed)]
    for spec in tools:
        args += ["--tool", spec]
    return args


@asynccontextmanager
async def stdio_session(*args: str) -> AsyncIterator[tuple[ClientSession, Inbox]]:
    """A real `circuitbox chaos` child process over stdio, with an initialized SDK client session."""
    inbox = Inbox()
    params = StdioServerParameters(command=CHAOS[0], args=[*CHAOS[1:], *args], env=import_path_env() or None)
    with anyio.fail_after(20):
        async with (
            stdio_client(params) as (read, write),
            ClientSession(read, write, message_handler=inbox) as s,
        ):
            await s.initialize()
            yield s, inbox


@asynccontextmanager
async def memory_session(state: ChaosState, wire: Any = None) -> AsyncIterator[tuple[ClientSession, Inbox]]:
    """The chaos server in this process over memory streams (fast, and measured by coverage)."""
    server = build_server(state, wire)
    inbox = Inbox()
    async with create_client_server_memory_streams() as (client, srv), anyio.create_task_group() as tg:
        tg.start_soon(server.run, srv[0], srv[1], server.create_initialization_options())
        async with ClientSession(client[0], client[1], message_handler=inbox) as session:
            with anyio.fail_after(10):
                await session.initialize()
            yield session, inbox
        tg.cancel_scope.cancel()


async def stats(session: ClientSession) -> dict[str, Any]:
    result = await session.call_tool("chaos_control", {"action": "stats"})
    assert not result.is_error
    assert result.structured_content is not None
    return dict(result.structured_content)


async def wait_for_stat(session: ClientSession, tool: str, key: str, value: int) -> dict[str, Any]:
    """Poll the server's counters (bounded by the caller's fail_after) until tool's key reaches value."""
    while True:
        counters: dict[str, Any] = (await stats(session))["tools"][tool]
        if counters[key] >= value:
            return counters
        await anyio.sleep(0.02)


def text(result: types.CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, types.TextContent))


class RawPeer:
    """Speaks JSON-RPC lines to a chaos child by hand, to see exactly what is on its stdout."""

    def __init__(self, process: Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self._out = BufferedByteReceiveStream(process.stdout)
        self._next_id = 0

    async def send(self, method: str, params: dict[str, Any] | None = None, *, notify: bool = False) -> int:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        if not notify:
            self._next_id += 1
            message["id"] = self._next_id
        assert self.process.stdin is not None
        await self.process.stdin.send((json.dumps(message) + "\n").encode())
        return self._next_id

    async def line(self) -> str:
        return (await self._out.receive_until(b"\n", 1 << 20)).decode()

    async def handshake(self) -> None:
        init = {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        }
        request_id = await self.send("initialize", init)
        assert json.loads(await self.line())["id"] == request_id
        await self.send("notifications/initialized", notify=True)


@asynccontextmanager
async def raw_peer(*args: str) -> AsyncIterator[RawPeer]:
    process = await anyio.open_process(
        [*CHAOS, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    async with process:
        with anyio.fail_after(20):
            peer = RawPeer(process)
            await peer.handshake()
            yield peer
