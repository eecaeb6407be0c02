"""What an open status page costs the proxy: throughput with one client streaming `/status/events` vs none.

    python benchmarks/bench_status_stream.py            # 12 blocks of 400 calls each way
    python benchmarks/bench_status_stream.py --quick    # 4 blocks

circuitbox runs in this process in front of the bundled chaos server (30 tools) over stdio; an SDK client calls
them round-robin over in-memory streams, so every call moves a breaker's counters and the status document has 30
breakers. The status routes are served here too, on stdio mode's metrics-port server, and a separate process
reads `/status/events` the way the page does (one document at once, then one a second and one per transition).
Blocks alternate between that reader connected and disconnected (it is told over its stdin and confirms), on the
same proxy and downstream. Measured per block: calls per second (wall) and this process's CPU time per call. On a
shared machine both move by several percent from block to block whatever the stream does, so the run also measures
what the stream adds directly: the CPU time of one document (built and encoded, 30 breakers), of which it sends
one a second plus one per transition; divided by the CPU a second of calls takes at full speed, that is the
throughput it can cost.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.abc
import mcp_types as types
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp import ClientSession
from mcp.shared.memory import create_client_server_memory_streams
from starlette.applications import Starlette

from circuitbox.config.load import load_config
from circuitbox.observability._asgi_server import serve_asgi
from circuitbox.observability.access import AccessGuard
from circuitbox.observability.status_page import page_document
from circuitbox.server.app import build_proxy, observability_routes

TOOLS = 30
BLOCK = 300  # calls per block: over a second each, so every connected block gets its once-a-second documents

# The page's side, in another process: on "on" it opens the event stream and answers once the first document is
# in; on "off" it closes it and answers.
READER = r"""
import sys, threading, httpx2
url = sys.argv[1]
stream = None
def drain(response):
    try:
        for _ in response.iter_bytes():
            pass
    except Exception:
        pass
client = httpx2.Client(timeout=None)
for line in sys.stdin:
    if line.strip() == "on":
        stream = client.stream("GET", url)
        response = stream.__enter__()
        lines = response.iter_lines()
        while not next(lines).startswith("data: "):
            pass
        threading.Thread(target=drain, args=(response,), daemon=True).start()
    elif stream is not None:
        response.close()
        stream = None
    print("ok", flush=True)
"""


async def run(blocks: int) -> tuple[dict[bool, list[tuple[float, float]]], float]:
    specs = [arg for i in range(TOOLS) for arg in ("--tool", f"t{i}=healthy")]
    downstream = {"command": sys.executable, "args": ["-m", "circuitbox", "chaos", *specs]}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "circuitbox.json"
        path.write_text(json.dumps({"environment": "production", "mcpServers": {"d": downstream}}))
        proxy, collector = build_proxy(load_config(path))
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    async with anyio.create_task_group() as tg:
        await proxy.start(tg)
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        app = AccessGuard(Starlette(routes=observability_routes(proxy, collector)), "127.0.0.1", port)
        tg.start_soon(serve_asgi, listener, app, ("127.0.0.1", port))
        server = proxy.build_server()
        reader = await anyio.open_process([sys.executable, "-c", READER, f"http://127.0.0.1:{port}/status/events"])
        assert reader.stdin is not None and reader.stdout is not None
        replies = BufferedByteReceiveStream(reader.stdout)

        async def tell(word: str) -> None:
            assert reader.stdin is not None
            await reader.stdin.send(f"{word}\n".encode())
            with anyio.fail_after(60):
                assert await replies.receive_until(b"\n", 100) == b"ok"

        async with create_client_server_memory_streams() as ((c_read, c_write), (s_read, s_write)):
            tg.start_soon(server.run, s_read, s_write, proxy.initialization_options(server))
            async with ClientSession(c_read, c_write) as session:
                await session.initialize()
                await proxy.wait_first_attempts()

                async def block(size: int) -> tuple[float, float]:
                    wall, cpu = time.perf_counter(), time.process_time()
                    for n in range(size):
                        params = types.CallToolRequestParams(name=f"d__t{n % TOOLS}", arguments={})
                        await session.send_request(types.CallToolRequest(params=params), types.CallToolResult)
                    return size / (time.perf_counter() - wall), (time.process_time() - cpu) / size

                await block(BLOCK)  # warm-up: every breaker exists
                began = time.process_time()
                for _ in range(200):
                    json.dumps(await page_document(proxy), default=str)
                per_document = (time.process_time() - began) / 200
                for i in range(2 * blocks):
                    on = i % 4 in (0, 3)  # on off off on: neither contender always goes first
                    await tell("on" if on else "off")
                    results[on].append(await block(BLOCK))
        await tell("off")
        await reader.stdin.aclose()
        reader.terminate()
        await reader.wait()
        tg.cancel_scope.cancel()
    return results, per_document


def table(results: dict[bool, list[tuple[float, float]]], per_document: float) -> str:
    def med(on: bool, i: int) -> float:
        return statistics.median(r[i] for r in results[on])

    off_rate, on_rate = med(False, 0), med(True, 0)
    off_cpu, on_cpu = med(False, 1), med(True, 1)
    return "\n".join(
        [
            f"{'contender':<30}{'calls/s (median)':>18}{'CPU per call (median)':>24}",
            f"{'no status page open':<30}{off_rate:>18.0f}{off_cpu * 1e6:>21.0f} us",
            f"{'one /status/events stream':<30}{on_rate:>18.0f}{on_cpu * 1e6:>21.0f} us",
            f"throughput {100 * (on_rate / off_rate - 1):+.1f}%, CPU per call {100 * (on_cpu / off_cpu - 1):+.1f}%; "
            f"{len(results[True])} blocks of {BLOCK} calls each way, {TOOLS} breakers",
            f"one document: {per_document * 1e3:.2f} ms CPU; at one a second that is "
            f"{100 * per_document:.2f}% of a core, {100 * per_document / (1 + per_document):.2f}% of the throughput "
            "of a proxy using a whole core for calls",
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    print(table(*anyio.run(run, 4 if args.quick else 16)))


if __name__ == "__main__":
    main()
