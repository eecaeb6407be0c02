"""Helpers for the resilience suite: timed calls, load, chaos counters, the proxy's PID and RSS, a raw JSON-RPC client.

The proxy always runs for real (`circuitbox serve` as a child process) in front of real chaos downstreams; the SDK
client comes from `tests.proxy.harness.proxy_session`, the raw client below talks newline-delimited JSON-RPC over the
process's pipes so a test can count answers per request id and send bytes no SDK would send.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import mcp_types as types
from anyio.abc import Process
from mcp import ClientSession, MCPError

from tests.proxy.harness import write_config

Kind = Literal["ok", "error", "fast_fail", "rpc_error"]
META_KEY = "circuitbox/breaker"
SERVER_META_KEY = "circuitbox/server"  # answered at once: the server is restarting (no breaker involved)
HANDSHAKE_VERSION = "2025-06-18"


# -- timed calls through the SDK client -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    tool: str
    seconds: float
    kind: Kind
    text: str
    meta: dict[str, Any]

    @property
    def breaker(self) -> dict[str, Any]:
        return dict(self.meta.get(META_KEY) or {})


def text_of(result: types.CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, types.TextContent))


async def timed_call(session: ClientSession, tool: str, arguments: dict[str, Any] | None = None) -> Answer:
    """One call, timed with perf_counter from send to answer; a JSON-RPC error is an answer too."""
    began = time.perf_counter()
    try:
        result = await session.call_tool(tool, arguments or {})
    except MCPError as exc:
        return Answer(tool, time.perf_counter() - began, "rpc_error", str(exc), {})
    seconds = time.perf_counter() - began
    assert isinstance(result, types.CallToolResult)
    meta = dict(result.meta or {})
    fast = META_KEY in meta or SERVER_META_KEY in meta
    kind: Kind = "ok" if not result.is_error else ("fast_fail" if fast else "error")
    return Answer(tool, seconds, kind, text_of(result), meta)


@dataclass
class Load:
    """Answers gathered by `run_load`, per tool."""

    answers: list[Answer] = field(default_factory=list)

    def of(self, tool: str) -> list[Answer]:
        return [a for a in self.answers if a.tool == tool]

    def kinds(self, tool: str) -> Counter[str]:
        return Counter(a.kind for a in self.of(tool))

    def slowest(self) -> float:
        return max((a.seconds for a in self.answers), default=0.0)

    def figures(self, tool: str | None = None) -> dict[str, float]:
        seconds = [a.seconds for a in self.answers if tool is None or a.tool == tool]
        return {
            "calls": len(seconds),
            "p50": percentile(seconds, 50),
            "p99": percentile(seconds, 99),
            "max": max(seconds),
        }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


async def run_load(
    session: ClientSession,
    lanes: Iterable[tuple[str, int]],
    *,
    seconds: float,
    pause: float = 0.01,
    arguments: Callable[[str, int], dict[str, Any]] | None = None,
) -> Load:
    """`lanes`: (tool, callers) pairs; each caller calls its tool in a loop for `seconds`, `pause` s apart (pacing).

    The loop stops issuing calls after `seconds`; calls in flight then still get their answers.
    """
    load = Load()
    end = time.perf_counter() + seconds

    async def caller(tool: str) -> None:
        number = 0
        while time.perf_counter() < end:
            number += 1
            args = arguments(tool, number) if arguments else {"message": f"{tool} {number}"}
            load.answers.append(await timed_call(session, tool, args))
            await anyio.sleep(pause)

    async with anyio.create_task_group() as tg:
        for tool, callers in lanes:
            for _ in range(callers):
                tg.start_soon(caller, tool)
    return load


# -- what the proxy and the chaos servers report ----------------------------------------------------------------------


async def structured(session: ClientSession, tool: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    result = await session.call_tool(tool, arguments or {})
    assert isinstance(result, types.CallToolResult)
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    return dict(result.structured_content)


async def chaos_stats(session: ClientSession, server: str) -> dict[str, Any]:
    return await structured(session, f"{server}__chaos_control", {"action": "stats"})


async def breaker_row(session: ClientSession, server: str, tool: str) -> dict[str, Any]:
    rows = (await structured(session, "circuit_status", {"server": server, "tool": tool}))["breakers"]
    assert len(rows) == 1, rows
    return dict(rows[0])


async def server_row(session: ClientSession, server: str) -> dict[str, Any]:
    return dict((await structured(session, "circuit_status", {"server": server}))["servers"][0])


async def wait_connected(session: ClientSession, server: str, connects: int = 1, limit: float = 30) -> None:
    """Polls circuit_status (an external process's state) until `server` is connected at least `connects` times."""
    with anyio.fail_after(limit):
        while True:
            row = await server_row(session, server)
            if row["connection"] == "connected" and row.get("connects", 1) >= connects:
                return
            await anyio.sleep(0.05)


# -- the proxy process from the outside -------------------------------------------------------------------------------


def proxy_pid(config: Path) -> int:
    """The PID of the `circuitbox serve --config CONFIG` process (found by its command line in /proc)."""
    wanted = str(config).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and wanted in argv:
            found.append(int(entry.name))
    assert len(found) == 1, f"expected one proxy process for {config}, found {found}"
    return found[0]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


# -- a raw JSON-RPC client on the proxy's pipes -----------------------------------------------------------------------


class RawClient:
    """Newline-delimited JSON-RPC on a `circuitbox serve` process: send anything, count every answer per id."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.answers: dict[int | str, list[dict[str, Any]]] = {}
        self.unmatched: list[dict[str, Any]] = []
        self._waiters: dict[int | str, anyio.Event] = {}
        self._lock = anyio.Lock()
        self._next = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    def new_id(self) -> int:
        self._next += 1
        return self._next

    async def send_bytes(self, data: bytes) -> None:
        assert self.process.stdin is not None
        async with self._lock:
            await self.process.stdin.send(data)

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_bytes(json.dumps(message).encode() + b"\n")

    async def request(self, method: str, params: dict[str, Any] | None = None, *, limit: float = 30) -> dict[str, Any]:
        """Send a request and wait for its answer (the first one, if a bug ever sent two)."""
        request_id = self.new_id()
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        return await self.exchange(request_id, json.dumps(message).encode() + b"\n", limit=limit)

    async def exchange(self, request_id: int | str, data: bytes, *, limit: float = 30) -> dict[str, Any]:
        """Send raw bytes that carry request `request_id` and wait for its answer."""
        event = self._waiters.setdefault(request_id, anyio.Event())
        await self.send_bytes(data)
        with anyio.fail_after(limit):
            await event.wait()
        return self.answers[request_id][0]

    async def read_forever(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    self._dispatch(json.loads(line))

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "id" not in message or not ("result" in message or "error" in message):
            return  # a notification or a request from the server: not an answer
        request_id = message["id"]
        if request_id is None:
            self.unmatched.append(message)
            return
        self.answers.setdefault(request_id, []).append(message)
        self._waiters.setdefault(request_id, anyio.Event()).set()

    async def initialize(self) -> dict[str, Any]:
        params = {
            "protocolVersion": HANDSHAKE_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "circuitbox-resilience", "version": "1"},
        }
        answer = await self.request("initialize", params)
        await self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return answer

    async def call_tool(self, name: str, arguments: dict[str, Any], *, limit: float = 30) -> dict[str, Any]:
        return await self.request("tools/call", {"name": name, "arguments": arguments}, limit=limit)


@asynccontextmanager
async def raw_proxy(tmp_path: Path, config: dict[str, Any]) -> AsyncIterator[RawClient]:
    """`circuitbox serve` as a child process with raw pipes, initialized; its stderr goes to tmp_path/proxy.log."""
    path = write_config(tmp_path, config)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with (tmp_path / "proxy.log").open("wb") as log:
        process = await anyio.open_process(
            [sys.executable, "-m", "circuitbox", "serve", "--config", str(path), "--log-level", "WARNING"],
            env=env,
            cwd=str(tmp_path),
            stderr=log,
        )
        client = RawClient(process)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.read_forever)
                await client.initialize()
                yield client
                tg.cancel_scope.cancel()
        finally:
            await _stop(process)


async def _stop(process: Process) -> None:
    with anyio.CancelScope(shield=True):
        if process.stdin is not None:
            await process.stdin.aclose()
        with anyio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
