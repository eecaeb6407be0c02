"""Proxy overhead, side by side in one run: direct client -> downstream, a bare pass-through proxy, circuitbox.

    python benchmarks/bench_proxy.py            # full run (a few minutes)
    python benchmarks/bench_proxy.py --quick    # fewer rounds

Every contender talks to the same downstream (the bundled chaos server, `echo=healthy`) over stdio with the SDK's
real client. The bare proxy (built below with the same SDK: list + call forwarded, nothing else) is the floor any
Python MCP proxy pays. Rounds are interleaved (each round runs every contender once, in rotating order) and the
table shows medians over rounds, so a noisy neighbour hurts all contenders alike.

Measured: sequential echo latency, throughput with 8 and 64 calls in flight, the fast-fail answer of an open
circuit vs a successful round trip, and tools/list of 1,000 downstream tools. circuitbox runs with its metrics
collector on and off (`--no-metrics`), to show the collector's cost.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp import ClientSession, StdioServerParameters, stdio_client

CHAOS = [sys.executable, "-m", "circuitbox", "chaos", "--tool", "echo=healthy", "--tool", "down=error"]


@asynccontextmanager
async def connect(command: list[str]) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=command[0], args=command[1:])
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
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


async def sequential(session: ClientSession, tool: str, calls: int) -> float:
    """Median seconds per call."""
    times = []
    for i in range(calls):
        began = time.perf_counter()
        await session.call_tool(tool, {"message": f"m{i}"})
        times.append(time.perf_counter() - began)
    return statistics.median(times)


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


async def list_time(session: ClientSession, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        await session.list_tools()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def circuitbox_command(config: Path, metrics: bool = True) -> list[str]:
    cmd = [sys.executable, "-m", "circuitbox", "serve", "--config", str(config), "--log-level", "WARNING"]
    return cmd if metrics else [*cmd, "--no-metrics"]


def write_config(folder: Path, downstream: list[str], name: str) -> Path:
    path = folder / f"{name}.json"
    server = {
        "command": downstream[0],
        "args": downstream[1:],
        "namespace": "",
        "breaker": {"failure_threshold": 3, "timeout": 3600, "minimum_calls": 100},
    }
    path.write_text(json.dumps({"environment": "production", "mcpServers": {"d": server}}))
    return path


Contender = tuple[str, list[str], str]  # name, command, echo tool name


async def bench(rounds: int, calls: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="circuitbox-bench-"))
    config = write_config(folder, CHAOS, "echo")
    contenders: list[Contender] = [
        ("direct", CHAOS, "echo"),
        ("bare proxy", [sys.executable, __file__, "--bare-proxy", "--", *CHAOS], "echo"),
        ("circuitbox", circuitbox_command(config), "echo"),
        ("circuitbox, metrics off", circuitbox_command(config, metrics=False), "echo"),
    ]
    results: dict[str, dict[str, list[float]]] = {name: {} for name, _, _ in contenders}
    async with _sessions(contenders) as sessions:
        for name, session in sessions.items():  # warm-up: imports, caches, first breaker creation
            await sequential(session, contenders[[c[0] for c in contenders].index(name)][2], 20)
        for r in range(rounds):
            order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
            for name, _, tool in order:
                session = sessions[name]
                row = results[name]
                row.setdefault("latency", []).append(await sequential(session, tool, calls))
                for n in (8, 64):
                    row.setdefault(f"tput{n}", []).append(await throughput(session, tool, calls * 2, n))
        fast_fail = await _fast_fail(sessions["circuitbox"], calls)
    listing = await _listing(folder, rounds)
    in_process = await _fast_fail_in_process(calls)
    return {
        "fast_fail_in_process": in_process,
        "results": {k: {m: statistics.median(v) for m, v in row.items()} for k, row in results.items()},
        "fast_fail": fast_fail,
        "listing": listing,
        "rounds": rounds,
        "calls": calls,
    }


@asynccontextmanager
async def _sessions(contenders: list[Contender]) -> AsyncIterator[dict[str, ClientSession]]:
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:
        sessions = {name: await stack.enter_async_context(connect(cmd)) for name, cmd, _ in contenders}
        yield sessions


async def _fast_fail(session: ClientSession, calls: int) -> dict[str, float]:
    """Open the `down` tool's circuit, then time rejected calls against successful echo round trips."""
    for _ in range(3):
        await session.call_tool("down", {})
    rejected = await sequential(session, "down", calls)
    ok = await sequential(session, "echo", calls)
    result = await session.call_tool("down", {})
    assert (result.meta or {}).get("circuitbox/breaker", {}).get("state") == "open"
    return {"rejected": rejected, "success": ok}


async def _fast_fail_in_process(calls: int) -> dict[str, float]:
    """The same comparison with the agent in-process (memory streams): what the proxy itself takes to refuse a
    call, without the agent-side stdio hop that the end-to-end figure includes."""
    from mcp import Client

    from circuitbox.config.load import parse_config
    from circuitbox.server.app import build_proxy

    server = {"command": CHAOS[0], "args": CHAOS[1:], "namespace": "", "breaker": {"failure_threshold": 3}}
    proxy, _ = build_proxy(parse_config({"environment": "production", "mcpServers": {"d": server}}))
    # Time spent inside circuitbox's own call path (catalog, breaker, forward or refuse), without the SDK's
    # per-message work on either side.
    inside: dict[str, list[float]] = {"down": [], "echo": []}
    routed = proxy.call

    async def timed_call(name: str, *args: Any, **kwargs: Any) -> types.CallToolResult:
        began = time.perf_counter()
        try:
            return await routed(name, *args, **kwargs)
        finally:
            inside[name].append(time.perf_counter() - began)

    proxy.call = timed_call  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        await proxy.start(tg)
        async with Client(proxy.build_server(), mode="legacy") as client:
            for _ in range(3):
                await client.call_tool("down", {})
            inside["down"].clear()
            inside["echo"].clear()
            timings: dict[str, list[float]] = {"rejected": [], "success": []}
            for i in range(calls):
                for tool, key in (("down", "rejected"), ("echo", "success")):
                    began = time.perf_counter()
                    await client.call_tool(tool, {"message": f"m{i}"})
                    timings[key].append(time.perf_counter() - began)
        tg.cancel_scope.cancel()
    timings["rejected_inside"], timings["success_inside"] = inside["down"], inside["echo"]
    return {key: statistics.median(values) for key, values in timings.items()}


async def _listing(folder: Path, rounds: int) -> dict[str, float]:
    many = [*CHAOS[:4]] + [arg for i in range(1000) for arg in ("--tool", f"tool_{i:04d}=healthy")]
    config = write_config(folder, many, "many")
    times: dict[str, list[float]] = {"direct": [], "circuitbox": []}
    async with connect(many) as direct, connect(circuitbox_command(config)) as proxied:
        assert len((await proxied.list_tools()).tools) >= 1000
        for _ in range(rounds):
            times["direct"].append(await list_time(direct))
            times["circuitbox"].append(await list_time(proxied))
    return {k: statistics.median(v) for k, v in times.items()}


def report(data: dict[str, Any]) -> str:
    res = data["results"]
    bare = res["bare proxy"]
    lines = [
        f"proxy benchmark: {data['rounds']} interleaved rounds x {data['calls']} calls, medians",
        "",
        "| contender | echo latency (ms) | vs bare | calls/s, 8 in flight | vs bare "
        "| calls/s, 64 in flight | vs bare |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in res.items():
        lines.append(
            f"| {name} | {row['latency'] * 1e3:.2f} | {row['latency'] / bare['latency']:.2f}x | "
            f"{row['tput8']:.0f} | {row['tput8'] / bare['tput8']:.2f}x | "
            f"{row['tput64']:.0f} | {row['tput64'] / bare['tput64']:.2f}x |"
        )
    ff, fi, listing = data["fast_fail"], data["fast_fail_in_process"], data["listing"]
    lines += [
        "",
        f"fast-fail while open: {ff['rejected'] * 1e3:.3f} ms vs successful round trip {ff['success'] * 1e3:.3f} ms "
        f"({ff['success'] / ff['rejected']:.1f}x faster; both include the agent's own stdio hop to the proxy)",
        f"fast-fail with the agent in-process: {fi['rejected'] * 1e3:.3f} ms vs successful round trip "
        f"{fi['success'] * 1e3:.3f} ms ({fi['success'] / fi['rejected']:.1f}x faster)",
        f"inside circuitbox's call path: refusal {fi['rejected_inside'] * 1e6:.0f} us vs forwarded call "
        f"{fi['success_inside'] * 1e6:.0f} us ({fi['success_inside'] / fi['rejected_inside']:.0f}x faster)",
        f"tools/list of 1,000 tools: direct {listing['direct'] * 1e3:.1f} ms, through circuitbox "
        f"{listing['circuitbox'] * 1e3:.1f} ms ({listing['circuitbox'] / listing['direct']:.2f}x)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bare-proxy", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_proxy:
        anyio.run(bare_proxy, args.rest)
        return
    rounds, calls = (3, 50) if args.quick else (7, 200)
    data = anyio.run(bench, rounds, calls)
    print(report(data))


Runner = Callable[[], Awaitable[None]]

if __name__ == "__main__":
    main()
