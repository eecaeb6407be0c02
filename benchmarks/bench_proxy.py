"""Proxy overhead, side by side in one run: direct client -> downstream, a bare pass-through proxy, circuitbox.

    python benchmarks/bench_proxy.py            # full run (a few minutes)
    python benchmarks/bench_proxy.py --quick    # fewer rounds and calls (about a minute)
    python benchmarks/bench_proxy.py --json     # the medians as JSON too

Every contender talks to the same downstream (the bundled chaos server, `echo=healthy`) with the SDK's real client.
The bare proxy (built below with the same SDK: list + call forwarded, nothing else) is the floor any SDK-based
Python MCP proxy pays. Rounds are interleaved (each round runs every contender once, in rotating order) and every
figure is a median over rounds, so a noisy neighbour hurts all contenders alike; ratios are ratios of medians.

Measured, as the proxy issue lists them:
- stdio: sequential echo latency and the latency each proxy adds to direct, the proxy process's own CPU time per
  sequential call, sequential throughput, throughput with 8 and 64 calls in flight;
- tools/list of 1,000 downstream tools;
- initialize: from spawning the process to its initialize answer (and, for circuitbox, to its first tools/list,
  which waits for the downstream), vs a direct server's start;
- fast-fail inside the proxy: from the request read off the proxy's input stream to the answer written to its
  output stream, for a call whose circuit is open, next to a forwarded call (in-process, memory streams);
- the stdio downstream hop inside the proxy: a forwarded call's request written to the child, its answer read and
  handed back, against a child that answers at once (a fresh process per round);
- memory: the proxy's resident set growth for 1,000 idle HTTP sessions on one shared stdio downstream;
- HTTP upstream: 20 clients x N calls at once, direct (the chaos server over HTTP) vs circuitbox with an HTTP and
  with a stdio downstream; every call's answer is checked, so nothing lost is counted too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import mcp_types as types
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

CHAOS = [sys.executable, "-m", "circuitbox", "chaos", "--tool", "echo=healthy", "--tool", "down=error"]
BREAKER = {"failure_threshold": 3, "timeout": 3600, "minimum_calls": 100}


def _child_env() -> dict[str, str]:
    """Our PYTHONPATH for the servers we start: they import the same circuitbox as this benchmark."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": path} if path else {}


@asynccontextmanager
async def connect(command: list[str], source: str | None = None) -> AsyncIterator[ClientSession]:
    """`source`: the src folder of another circuitbox checkout the command runs from."""
    env = {**_child_env(), **({"PYTHONPATH": source} if source else {})}
    params = StdioServerParameters(command=command[0], args=command[1:], env=env or None)
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        await session.list_tools()  # as agents do before calling: circuitbox then knows its one stdio client
        yield session


@asynccontextmanager
async def connect_http(url: str) -> AsyncIterator[ClientSession]:
    async with (
        httpx2.AsyncClient(timeout=60) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


# -- the bare pass-through proxy (runs as a child process of this benchmark) -----------------------------------------


async def bare_proxy(downstream: list[str]) -> None:
    from mcp.server import Server
    from mcp.server.stdio import stdio_server

    async with connect(downstream) as session:

        async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
            return await session.send_request(types.ListToolsRequest(), types.ListToolsResult)

        async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
            request = types.CallToolRequest(
                params=types.CallToolRequestParams(name=params.name, arguments=params.arguments)
            )
            return await session.send_request(request, types.CallToolResult)

        server = Server("bare", on_list_tools=list_tools, on_call_tool=call_tool)
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())


# -- measurements ---------------------------------------------------------------------------------------------------


async def sequential(session: ClientSession, tool: str, calls: int) -> tuple[float, float]:
    """(median seconds per call, calls per second over the whole run)."""
    times = []
    began = time.perf_counter()
    for i in range(calls):
        t0 = time.perf_counter()
        await session.call_tool(tool, {"message": f"m{i}"})
        times.append(time.perf_counter() - t0)
    return statistics.median(times), calls / (time.perf_counter() - began)


async def throughput(session: ClientSession, tool: str, calls: int, in_flight: int) -> float:
    """Calls per second with `in_flight` concurrent callers."""
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await session.call_tool(tool, {"message": "x"})

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(in_flight):
            tg.start_soon(worker)
    return calls / (time.perf_counter() - began)


async def all_tools(session: ClientSession) -> list[types.Tool]:
    """Every tool, following the cursor (circuitbox pages merged lists; a direct server may answer in one page)."""
    tools: list[types.Tool] = []
    cursor: str | None = None
    while True:
        page = await session.list_tools(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
        tools += page.tools
        cursor = page.next_cursor
        if not cursor:
            return tools


async def list_time(session: ClientSession, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        await all_tools(session)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def circuitbox_command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "circuitbox", "serve", "--config", str(config), "--log-level", "WARNING", *extra]


def write_config(folder: Path, name: str, server: dict[str, Any]) -> Path:
    path = folder / f"{name}.json"
    entry = {"namespace": "", "breaker": BREAKER, **server}
    path.write_text(json.dumps({"environment": "production", "mcpServers": {"d": entry}}))
    return path


def stdio_entry(command: list[str]) -> dict[str, Any]:
    return {"command": command[0], "args": command[1:], "env": _child_env()}


def rotate(items: list[Any], r: int) -> list[Any]:
    k = r % len(items)
    return items[k:] + items[:k]


def medians(rows: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    return {name: {m: statistics.median(v) for m, v in row.items()} for name, row in rows.items()}


async def bench_stdio(
    folder: Path, rounds: int, calls: int, baseline: str | None = None
) -> dict[str, dict[str, float]]:
    """`baseline`: the src folder of another circuitbox checkout, whose two circuitbox contenders run in the same
    interleaved rounds as this one's (their downstream is this checkout's chaos server, as everyone's)."""
    config = write_config(folder, "echo", stdio_entry(CHAOS))
    contenders: list[tuple[str, list[str], str | None]] = [
        ("direct", CHAOS, None),
        ("bare proxy", [sys.executable, __file__, "--bare-proxy", "--", *CHAOS], None),
        ("circuitbox", circuitbox_command(config), None),
        ("circuitbox, metrics off", circuitbox_command(config, "--no-metrics"), None),
    ]
    if baseline is not None:
        contenders += [
            ("baseline", circuitbox_command(config), baseline),
            ("baseline, metrics off", circuitbox_command(config, "--no-metrics"), baseline),
        ]
    rows: dict[str, dict[str, list[float]]] = {name: {} for name, _, _ in contenders}
    sessions: dict[str, ClientSession] = {}
    middle: dict[str, int] = {}  # the proxy process of each contender that has one (our child; direct's is the server)
    async with AsyncExitStack() as stack:
        for name, cmd, src in contenders:
            before = _children()
            sessions[name] = await stack.enter_async_context(connect(cmd, src))
            if name != "direct":
                (middle[name],) = _children() - before
        for session in sessions.values():  # warm-up: imports, caches, the first breaker
            await sequential(session, "echo", 20)
        for r in range(rounds):
            for name, _, _ in rotate(contenders, r):
                session, row = sessions[name], rows[name]
                used = _cpu_seconds(middle[name]) if name in middle else 0.0
                latency, rate = await sequential(session, "echo", calls)
                if name in middle:  # what the proxy itself spends on a call: a figure the machine's noise barely moves
                    row.setdefault("cpu", []).append((_cpu_seconds(middle[name]) - used) / calls)
                row.setdefault("latency", []).append(latency)
                row.setdefault("sequential", []).append(rate)
                for n in (8, 64):
                    row.setdefault(f"tput{n}", []).append(await throughput(session, "echo", calls * 2, n))
    return medians(rows)


# A downstream that answers every request line at once: the hop's own cost, not a server's.
ECHO_CHILD = (
    "import json, sys\n"
    "for line in sys.stdin:\n"
    "    answer = {'jsonrpc': '2.0', 'id': json.loads(line)['id'], 'result': {'content': []}}\n"
    "    sys.stdout.write(json.dumps(answer) + '\\n')\n"
    "    sys.stdout.flush()\n"
)


async def bench_downstream_hop(calls: int, rounds: int, baseline: str | None = None) -> dict[str, float]:
    """The stdio downstream hop inside the proxy (`--downstream-hop-here`), a fresh process per round, interleaved
    with the checkout at `baseline` when given; the median over rounds of each round's median call."""
    contenders: list[tuple[str, str | None]] = [("circuitbox", None)]
    if baseline is not None:
        contenders.append(("baseline", baseline))
    rows: dict[str, list[float]] = {name: [] for name, _ in contenders}
    for r in range(rounds):
        for name, source in rotate(contenders, r):
            env = {**os.environ, **({"PYTHONPATH": source} if source else {})}
            command = [sys.executable, __file__, "--downstream-hop-here", str(calls)]
            done = await anyio.run_process(command, env=env, stderr=None)
            rows[name].append(json.loads(done.stdout))
    return {name: statistics.median(row) for name, row in rows.items()}


async def downstream_hop_here(calls: int) -> float:
    """Median seconds of `DirectCalls.call` on a stdio child that answers at once, wired as `Downstream` wires it
    (the child's streams, the session's reading task; the reader's hook where the checkout has one): the request
    written to the child's stdin, its answer read, parsed and handed to the waiting call."""
    from circuitbox.server._streams import WatchedStream
    from circuitbox.server.direct_calls import DirectCalls
    from circuitbox.server.stdio_child import open_stdio_child

    async with open_stdio_child("echo", sys.executable, ["-c", ECHO_CHILD], {}) as (read, write):
        direct = DirectCalls(WatchedStream(read, anyio.Event()), write)
        if hasattr(read, "intercept"):  # a checkout before the hook has none
            read.intercept = direct.intercept
        async with anyio.create_task_group() as tg:

            async def session_reader() -> None:
                async for _ in direct:
                    pass

            tg.start_soon(session_reader)
            for _ in range(200):  # warm-up
                await direct.call({"name": "echo"})
            times = []
            for _ in range(calls):
                began = time.perf_counter()
                await direct.call({"name": "echo"})
                times.append(time.perf_counter() - began)
            tg.cancel_scope.cancel()
    return statistics.median(times)


async def bench_listing(folder: Path, rounds: int) -> dict[str, float]:
    many = [*CHAOS[:4]] + [arg for i in range(1000) for arg in ("--tool", f"tool_{i:04d}=healthy")]
    config = write_config(folder, "many", stdio_entry(many))
    contenders = [
        ("direct", many),
        ("bare proxy", [sys.executable, __file__, "--bare-proxy", "--", *many]),
        ("circuitbox", circuitbox_command(config)),
    ]
    times: dict[str, list[float]] = {name: [] for name, _ in contenders}
    async with AsyncExitStack() as stack:
        sessions = {name: await stack.enter_async_context(connect(cmd)) for name, cmd in contenders}
        for name, session in sessions.items():
            assert len(await all_tools(session)) >= 1000, name
        for r in range(rounds):
            for name, _ in rotate(contenders, r):
                times[name].append(await list_time(sessions[name]))
    return {name: statistics.median(v) for name, v in times.items()}


def _children() -> set[int]:
    """PIDs of this process's children (Linux: each thread's list)."""
    return {int(pid) for task in Path("/proc/self/task").iterdir() for pid in (task / "children").read_text().split()}


def _cpu_seconds(pid: int) -> float:
    """CPU time `pid`'s threads have run so far (the scheduler's own count, in nanoseconds: no 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that has just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


async def bench_initialize(folder: Path, rounds: int, baseline: str | None = None) -> dict[str, Any]:
    """Spawn -> initialize answered, for each contender; circuitbox also to its first (complete) tools/list.
    `baseline`: the src folder of another circuitbox checkout, whose `serve` joins the same interleaved rounds.

    Also ("cpu") the CPU time the contender's own process had used when its answer arrived (not its downstream's):
    on a busy machine the wall time mostly measures the neighbours, the CPU time what the start costs."""
    import compileall

    import circuitbox

    # As an installed wheel has them: with no bytecode (PYTHONDONTWRITEBYTECODE, a fresh checkout) every start
    # would compile circuitbox's sources again (+70 ms), which no user's start pays.
    for source in [Path(circuitbox.__file__).parent, *([Path(baseline)] if baseline else [])]:
        compileall.compile_dir(source, quiet=1)
    config = write_config(folder, "echo", stdio_entry(CHAOS))
    contenders: list[tuple[str, list[str], str | None]] = [
        ("direct", CHAOS, None),
        ("bare proxy", [sys.executable, __file__, "--bare-proxy", "--", *CHAOS], None),
        ("circuitbox", circuitbox_command(config), None),
    ]
    if baseline is not None:
        contenders.append(("baseline", circuitbox_command(config), baseline))
    times: dict[str, list[float]] = {name: [] for name, _, _ in contenders}
    times["circuitbox, first tools/list"] = []
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in contenders}
    for r in range(rounds):
        for name, cmd, source in rotate(contenders, r):
            env = {"PYTHONPATH": source} if source else _child_env()
            params = StdioServerParameters(command=cmd[0], args=cmd[1:], env=env or None)
            before = _children()
            began = time.perf_counter()
            async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                times[name].append(time.perf_counter() - began)
                (pid,) = _children() - before
                cpu[name].append(_cpu_seconds(pid))
                if name == "circuitbox":
                    assert any(t.name == "echo" for t in await all_tools(session))
                    times["circuitbox, first tools/list"].append(time.perf_counter() - began)
    result: dict[str, Any] = {name: statistics.median(v) for name, v in times.items()}
    result["cpu"] = {name: statistics.median(v) for name, v in cpu.items()}
    return result


async def bench_fast_fail(calls: int, rounds: int, baseline: str | None = None) -> dict[str, Any]:
    """Fast-fail inside the proxy, `rounds` fresh processes each (`--fast-fail-here`), interleaved with the
    checkout at `baseline` when given; medians over rounds."""
    contenders: list[tuple[str, str | None]] = [("circuitbox", None)]
    if baseline is not None:
        contenders.append(("baseline", baseline))
    rows: dict[str, dict[str, list[float]]] = {name: {} for name, _ in contenders}
    for r in range(rounds):
        for name, source in rotate(contenders, r):
            env = {**os.environ, **({"PYTHONPATH": source} if source else {})}
            command = [sys.executable, __file__, "--fast-fail-here", str(calls)]
            done = await anyio.run_process(command, env=env, stderr=None)
            for key, value in json.loads(done.stdout).items():
                rows[name].setdefault(key, []).append(value)
    return medians(rows)


async def fast_fail_here(calls: int) -> dict[str, float]:
    """Inside the proxy: from a request line read off its input pipe to its answer line written to its output
    pipe, for a call its open circuit refuses, next to a forwarded call (a real chaos server behind).

    The proxy runs in this process as `serve` runs it over stdio (app.py): the loop's own pipe transports on two
    OS pipes, the reader task, `AnswerMalformed`, the fast lane and the SDK's server; this function is the agent
    at the pipes' other ends. The two instants are read inside the proxy (the reader's parse of the line, the
    answer's write), so the agent's own scheduling is not in the figure. Run against an older checkout (through
    `--baseline`), the proxy is wired as that checkout's `serve` wires it."""
    from circuitbox.config.load import parse_config
    from circuitbox.server import _pipes
    from circuitbox.server._streams import AnswerMalformed
    from circuitbox.server.app import build_proxy
    from circuitbox.server.lane import fast_lane

    server_entry = {**stdio_entry(CHAOS), "namespace": "", "breaker": {"failure_threshold": 3}}
    proxy, _ = build_proxy(parse_config({"environment": "production", "mcpServers": {"d": server_entry}}))
    proxy.stdio_upstream = True
    loop = asyncio.get_running_loop()
    read_at: dict[Any, float] = {}
    written_at: dict[Any, float] = {}
    parse_line = _pipes.parse_line

    def timed_parse(line: bytes) -> Any:
        began = time.perf_counter()
        item = parse_line(line)
        read_at.setdefault(getattr(item.message, "id", None), began)  # a line the lane declined: read before
        return item

    _pipes.parse_line = timed_parse  # type: ignore[assignment]
    tapped = getattr(_pipes, "TappedStream", None)
    offer_line = getattr(tapped, "offer_line", None)
    if tapped is not None and offer_line is not None:  # the wire form: the lane sees the raw line before any parse

        def timed_offer(self: Any, line: bytes) -> bool:
            began = time.perf_counter()
            taken = offer_line(self, line)
            read_at[json.loads(line).get("id")] = began
            return bool(taken)

        tapped.offer_line = timed_offer

    async def pipe_pair() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        read_fd, write_fd = os.pipe()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", 0))
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(write_fd, "wb", 0)
        )
        return reader, asyncio.StreamWriter(transport, protocol, None, loop)

    stdin, agent_out = await pipe_pair()
    agent_in, stdout = await pipe_pair()
    write = stdout.write

    def timed_write(data: bytes) -> None:
        write(data)
        written = time.perf_counter()
        written_at[json.loads(data).get("id")] = written

    stdout.write = timed_write  # type: ignore[method-assign]

    @asynccontextmanager
    async def streams() -> AsyncIterator[tuple[Any, Any, Any]]:
        """(read, write, tap) as this checkout's `serve` has them."""
        if hasattr(_pipes, "pipe_streams"):
            async with _pipes.pipe_streams(stdin, stdout) as (read, writes):
                yield read, writes, read
            return
        to_server, reads = anyio.create_memory_object_stream[Any](0)  # before the reader handed calls on
        writes = _pipes.PipeWriter(stdout)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_pipes._read_until, None, stdin, to_server)
            yield reads, writes, None
            tg.cancel_scope.cancel()

    async def serve() -> None:
        server = proxy.build_server()
        proxy.serve_one_client(server)
        async with streams() as (read, writes, tap):
            lane = (
                fast_lane(proxy, AnswerMalformed(read, writes), writes, tap)
                if tap
                else fast_lane(proxy, AnswerMalformed(read, writes), writes)
            )
            async with lane as upstream:
                await server.run(upstream, writes, proxy.initialization_options(server))

    next_id = 0

    async def request(method: str, params: dict[str, Any]) -> tuple[dict[str, Any], float]:
        nonlocal next_id
        next_id += 1
        agent_out.write(json.dumps({"jsonrpc": "2.0", "id": next_id, "method": method, "params": params}).encode())
        agent_out.write(b"\n")
        while True:  # notifications (list_changed as the downstream connects) are not the answer
            data = json.loads(await agent_in.readline())
            if data.get("id") is not None:
                break
        assert data["id"] == next_id, data
        return data, written_at.pop(next_id) - read_at.pop(next_id)

    timings: dict[str, list[float]] = {"rejected": [], "forwarded": []}
    async with anyio.create_task_group() as tg:
        await proxy.start(tg)
        tg.start_soon(serve)
        client_info = {"name": "bench", "version": "0"}
        await request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": client_info})
        agent_out.write(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n')
        await request("tools/list", {})
        for _ in range(3):
            await request("tools/call", {"name": "down", "arguments": {}})
        for i in range(calls):
            data, elapsed = await request("tools/call", {"name": "down", "arguments": {}})
            state = data.get("result", {}).get("_meta", {}).get("circuitbox/breaker", {}).get("state")
            assert state == "open", data
            timings["rejected"].append(elapsed)
            data, elapsed = await request("tools/call", {"name": "echo", "arguments": {"message": f"m{i}"}})
            assert not data["result"].get("isError"), data
            timings["forwarded"].append(elapsed)
        tg.cancel_scope.cancel()
    return {key: statistics.median(values) for key, values in timings.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for_port(port: int, limit: float = 60) -> None:
    with anyio.fail_after(limit):
        while True:
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.05)
                continue
            await stream.aclose()
            return


@asynccontextmanager
async def http_server(command: list[str], port: int, source: str | None = None) -> AsyncIterator[anyio.abc.Process]:
    """`command` listening on `port`; `source`: the src folder of another circuitbox checkout it runs from."""
    env = {**os.environ, **_child_env()}
    if source is not None:
        env["PYTHONPATH"] = source
    process = await anyio.open_process(
        command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=None
    )
    try:
        await wait_for_port(port)
        yield process
    finally:
        process.terminate()
        with anyio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def bench_sessions(folder: Path, sessions: int) -> dict[str, float]:
    """RSS of `circuitbox serve --transport http` before and after `sessions` initialized, idle HTTP sessions."""
    port = free_port()
    config = write_config(folder, "echo", stdio_entry(CHAOS))
    url = f"http://127.0.0.1:{port}/mcp"
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "0"},
        },
    }
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    async with (
        http_server(circuitbox_command(config, "--transport", "http", "--port", str(port)), port) as process,
        httpx2.AsyncClient(timeout=60) as http,
    ):
        async with connect_http(url) as warm:  # the downstream connected, one session served and closed
            await warm.call_tool("echo", {"message": "warm"})
        before = rss_mb(process.pid)
        opened = 0
        for _ in range(sessions):
            response = await http.post(url, json=init, headers=headers)
            session_id = response.headers.get("mcp-session-id")
            assert response.status_code == 200 and session_id, response.status_code
            response = await http.post(url, json=initialized, headers={**headers, "mcp-session-id": session_id})
            assert response.status_code == 202, response.status_code
            opened += 1
        after = rss_mb(process.pid)
    return {"sessions": opened, "before": before, "after": after, "per_session_kb": (after - before) * 1024 / opened}


async def http_load(url: str, clients: int, calls: int) -> tuple[float, int]:
    """(calls per second, answers missing or wrong) with `clients` sessions each making `calls` sequential calls."""
    lost = 0

    async def client(n: int) -> None:
        nonlocal lost
        async with connect_http(url) as session:
            for i in range(calls):
                result = await session.call_tool("echo", {"message": f"c{n}-{i}"})
                text = result.content[0].text if result.content and hasattr(result.content[0], "text") else ""
                if result.is_error or f"c{n}-{i}" not in text:
                    lost += 1

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for n in range(clients):
            tg.start_soon(client, n)
    return clients * calls / (time.perf_counter() - began), lost


async def bench_http(
    folder: Path, rounds: int, clients: int, calls: int, baseline: str | None = None
) -> dict[str, dict[str, float]]:
    """`baseline`: the src folder of another circuitbox checkout (say main before a change), whose two contenders
    run in the same interleaved rounds as this one's."""
    names = ["direct", "http downstream", "stdio downstream"]
    if baseline is not None:
        names += ["baseline, http downstream", "baseline, stdio downstream"]
    ports = {name: free_port() for name in names}
    chaos_http = [*CHAOS, "--transport", "http", "--port", str(ports["direct"])]
    via_http = write_config(folder, "via-http", {"url": f"http://127.0.0.1:{ports['direct']}/mcp"})
    via_stdio = write_config(folder, "via-stdio", stdio_entry(CHAOS))
    configs = {"http downstream": via_http, "stdio downstream": via_stdio}
    servers: list[tuple[str, list[str], str | None]] = [("direct", chaos_http, None)]
    for name in names[1:]:
        config = configs[name.removeprefix("baseline, ")]
        command = circuitbox_command(config, "--transport", "http", "--port", str(ports[name]))
        servers.append((name, command, baseline if name.startswith("baseline") else None))
    rows: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    async with AsyncExitStack() as stack:
        for name, cmd, source in servers:  # the direct server first: circuitbox's HTTP downstream is that very server
            await stack.enter_async_context(http_server(cmd, ports[name], source))
        urls = {name: f"http://127.0.0.1:{port}/mcp" for name, port in ports.items()}
        for url in urls.values():
            await http_load(url, 2, 5)  # warm-up
        for r in range(rounds):
            for name, _, _ in rotate(servers, r):
                rate, lost = await http_load(urls[name], clients, calls)
                rows[name].setdefault("rate", []).append(rate)
                rows[name].setdefault("lost", []).append(lost)
    return medians(rows)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    rounds, calls = (3, 50) if quick else (7, 200)
    http_calls = 20 if quick else 200
    folder = Path(tempfile.mkdtemp(prefix="circuitbox-bench-"))
    http_rounds = args.http_rounds or (2 if quick else 5)
    init_rounds = args.init_rounds or rounds
    data: dict[str, Any] = {"rounds": rounds, "calls": calls, "http_calls": http_calls, "http_rounds": http_rounds}
    data["init_rounds"] = init_rounds
    parts = {
        "stdio": lambda: bench_stdio(folder, rounds, calls, args.baseline),
        "listing": lambda: bench_listing(folder, rounds),
        "initialize": lambda: bench_initialize(folder, init_rounds, args.baseline),
        "fast_fail": lambda: bench_fast_fail(calls * 4, 3 if quick else rounds, args.baseline),
        "downstream_hop": lambda: bench_downstream_hop(calls * 10, 3 if quick else rounds, args.baseline),
        "sessions": lambda: bench_sessions(folder, 1000),
        "http": lambda: bench_http(folder, http_rounds, 20, http_calls, args.baseline),
    }
    for name, run in parts.items():
        if not args.only or name in args.only:
            began = time.perf_counter()
            data[name] = await run()
            print(f"{name}: {time.perf_counter() - began:.0f} s", file=sys.stderr)
    return data


def report(data: dict[str, Any]) -> str:
    lines = [f"proxy benchmark: {data['rounds']} interleaved rounds x {data['calls']} calls, medians"]
    if "stdio" in data:
        res = data["stdio"]
        direct, bare = res["direct"], res["bare proxy"]
        bare_added = bare["latency"] - direct["latency"]
        lines += [
            "",
            "| stdio | echo latency (ms) | added (ms) | vs bare's added | proxy CPU/call (us) | sequential calls/s "
            "| vs direct | 8 in flight | vs direct | 64 in flight | vs direct |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, row in res.items():
            added = row["latency"] - direct["latency"]
            cpu = f"{row['cpu'] * 1e6:.0f}" if "cpu" in row else ""
            lines.append(
                f"| {name} | {row['latency'] * 1e3:.2f} | {added * 1e3:+.2f} | "
                f"{(added / bare_added if bare_added > 0 else float('nan')):.2f}x | {cpu} | "
                f"{row['sequential']:.0f} | {row['sequential'] / direct['sequential']:.2f}x | "
                f"{row['tput8']:.0f} | {row['tput8'] / direct['tput8']:.2f}x | "
                f"{row['tput64']:.0f} | {row['tput64'] / direct['tput64']:.2f}x |"
            )
    if "listing" in data:
        listing = data["listing"]
        lines += ["", "| tools/list of 1,000 tools | ms | vs direct |", "|---|---:|---:|"]
        lines += [f"| {k} | {v * 1e3:.1f} | {v / listing['direct']:.2f}x |" for k, v in listing.items()]
    if "initialize" in data:
        init = dict(data["initialize"])
        cpu = init.pop("cpu")
        head = f"| spawn to initialize answered, {data['init_rounds']} rounds | ms | vs direct | CPU ms | vs direct |"
        lines += ["", head, "|---|---:|---:|---:|---:|"]
        for k, v in init.items():
            used = f"{cpu[k] * 1e3:.0f} | {cpu[k] / cpu['direct']:.2f}x" if k in cpu else " |"
            lines.append(f"| {k} | {v * 1e3:.0f} | {v / init['direct']:.2f}x | {used} |")
    if "fast_fail" in data:
        lines += ["", "| inside the proxy, request line read to answer line written | open circuit (us) | forwarded "
                  "call (us) |", "|---|---:|---:|"]  # fmt: skip
        for k, v in data["fast_fail"].items():
            lines.append(f"| {k} | {v['rejected'] * 1e6:.0f} | {v['forwarded'] * 1e6:.0f} |")
    if "downstream_hop" in data:
        lines += ["", "| inside the proxy, stdio downstream tools/call round trip to a child that answers at once "
                  "| us |", "|---|---:|"]  # fmt: skip
        lines += [f"| {k} | {v * 1e6:.0f} |" for k, v in data["downstream_hop"].items()]
    if "sessions" in data:
        sessions = data["sessions"]
        lines += [
            "",
            f"memory: {sessions['sessions']:.0f} idle HTTP sessions on one stdio downstream: RSS "
            f"{sessions['before']:.0f} MB -> {sessions['after']:.0f} MB "
            f"(+{sessions['after'] - sessions['before']:.1f} MB, {sessions['per_session_kb']:.0f} kB a session)",
        ]
    if "http" in data:
        http = data["http"]
        lines += [
            "",
            f"| HTTP upstream, 20 clients x {data['http_calls']} calls, {data['http_rounds']} rounds "
            "| calls/s | vs direct | lost |",
            "|---|---:|---:|---:|",
        ]
        for k, v in http.items():
            name = k if k == "direct" or k.startswith("baseline") else f"circuitbox, {k}"
            lines.append(f"| {name} | {v['rate']:.0f} | {v['rate'] / http['direct']['rate']:.2f}x | {v['lost']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and calls")
    parser.add_argument("--json", action="store_true", help="print the medians as JSON after the tables")
    parser.add_argument("--only", type=lambda s: s.split(","), help="comma-separated parts: stdio,listing,...")
    parser.add_argument("--http-rounds", type=int, help="interleaved rounds of the HTTP part (default 5)")
    parser.add_argument("--init-rounds", type=int, help="interleaved rounds of the initialize part (default 7)")
    parser.add_argument(
        "--baseline",
        metavar="SRC",
        help="the src folder of another circuitbox checkout: its stdio, downstream hop, HTTP, fast-fail and initialize "
        "contenders join the same rounds",
    )
    parser.add_argument("--bare-proxy", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fast-fail-here", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--downstream-hop-here", type=int, help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_proxy:
        anyio.run(bare_proxy, args.rest)
        return
    if args.fast_fail_here:
        print(json.dumps(anyio.run(fast_fail_here, args.fast_fail_here)))
        return
    if args.downstream_hop_here:
        print(json.dumps(anyio.run(downstream_hop_here, args.downstream_hop_here)))
        return
    data = anyio.run(bench, args)
    print(report(data))
    if args.json:
        print(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
