"""Scale-out costs, side by side in one run, against a real redis-server started here (no persistence).

    python benchmarks/bench_cluster.py            # full run (a few minutes)
    python benchmarks/bench_cluster.py --quick    # fewer rounds, calls and trips (about a minute)
    python benchmarks/bench_cluster.py --json     # the figures as JSON too

Measured:
- the closed hot path with a cluster configured vs without: `await breaker.call(noop)` on a breaker whose registry
  has a connected `ClusterStore` and on one without (engine, ns per call), and a sequential tools/call through
  `circuitbox serve` over stdio with and without a `cluster` key in front of the same chaos server (proxy, us per
  call). Rounds are interleaved and every figure is a median over rounds;
- fail-fast propagation over N trips: a breaker tripped in this process, and the time until a follower replica in
  another process has it open (both read CLOCK_MONOTONIC, one clock on one host), through pub/sub and, with the
  follower dropping every pub/sub message, through the once-a-second resync alone.
Needs redis-server: `bash .ci/install-redis.sh` unpacks one into .cache/redis (or set $CIRCUITBOX_REDIS_SERVER).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client

from circuitbox.breakers import BreakerRegistry, CircuitBreakerConfig, CircuitState, Permit, StateTransition
from circuitbox.cluster import ClusterStore

REPO = Path(__file__).resolve().parents[1]
HOUR = 3600.0


def redis_binary() -> str:
    found = os.environ.get("CIRCUITBOX_REDIS_SERVER")
    bundled = REPO / ".cache/redis/bin/redis-server"
    found = found or (str(bundled) if bundled.exists() else shutil.which("redis-server"))
    if not found:
        sys.exit("bench_cluster: no redis-server; run `bash .ci/install-redis.sh`")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def redis_server(folder: Path) -> AsyncIterator[str]:
    port = free_port()
    args = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = await anyio.open_process([*args, "--dir", str(folder)], stdout=subprocess.DEVNULL)
    try:
        with anyio.fail_after(30):
            while True:
                try:
                    await (await anyio.connect_tcp("127.0.0.1", port)).aclose()
                    break
                except OSError:
                    await anyio.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        await process.wait()


async def noop() -> None:
    return None


async def connected_store(url: str, group: str, tg: Any) -> ClusterStore:
    store = ClusterStore(url, group)
    tg.start_soon(store.run)
    with anyio.fail_after(30):
        while not store.connected:
            await anyio.sleep(0.01)
    return store


async def bench_engine(url: str, rounds: int, calls: int) -> dict[str, float]:
    """ns per `await breaker.call(noop)`, closed, with and without a connected store."""
    config = CircuitBreakerConfig(timeout=HOUR, max_timeout=HOUR)
    samples: dict[str, list[float]] = {"without cluster": [], "with cluster": []}
    async with anyio.create_task_group() as tg:
        store = await connected_store(url, "bench-engine", tg)
        clustered = BreakerRegistry()
        clustered.set_store(store)
        breakers = {"without cluster": BreakerRegistry().get_or_create("b", config)}
        breakers["with cluster"] = clustered.get_or_create("b", config)
        for r in range(rounds):
            for label in sorted(breakers, reverse=bool(r % 2)):
                call = breakers[label].call
                start = time.perf_counter_ns()
                for _ in range(calls):
                    await call(noop)
                samples[label].append((time.perf_counter_ns() - start) / calls)
        tg.cancel_scope.cancel()
    return {label: statistics.median(values) for label, values in samples.items()}


def child_env() -> dict[str, str]:
    env = {"PYTHONUNBUFFERED": "1"}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


@asynccontextmanager
async def proxy(config: Path) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "circuitbox", "serve", "--config", str(config)], env=child_env()
    )
    with open(os.devnull, "w") as quiet:  # noqa: ASYNC230 (opening /dev/null does not block)
        async with stdio_client(params, errlog=quiet) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            await session.call_tool("c__echo", {"message": "warm-up"})
            yield session


async def bench_proxy(folder: Path, url: str, rounds: int, calls: int) -> dict[str, float]:
    """us per sequential tools/call through circuitbox over stdio, with and without a cluster key."""
    chaos = {"command": sys.executable, "args": ["-m", "circuitbox", "chaos", "--tool", "echo=healthy"]}
    chaos["env"] = child_env()
    paths = {}
    for label, extra in (("without cluster", {}), ("with cluster", {"cluster": {"redis_url": url, "group": "b"}})):
        path = folder / f"{label.replace(' ', '-')}.json"
        path.write_text(json.dumps({"environment": "production", "mcpServers": {"c": chaos}, **extra}))
        paths[label] = path
    samples: dict[str, list[float]] = {label: [] for label in paths}
    async with proxy(paths["without cluster"]) as plain, proxy(paths["with cluster"]) as clustered:
        sessions = {"without cluster": plain, "with cluster": clustered}
        for r in range(rounds):
            for label in sorted(sessions, reverse=bool(r % 2)):
                session = sessions[label]
                start = time.perf_counter()
                for i in range(calls):
                    result = await session.call_tool("c__echo", {"message": str(i)})
                    assert not result.is_error
                samples[label].append((time.perf_counter() - start) / calls * 1e6)
    return {label: statistics.median(values) for label, values in samples.items()}


async def follow(url: str, group: str, drop_pubsub: bool) -> None:
    """The follower replica: print `name monotonic-seconds` for every breaker it sees open."""
    if drop_pubsub:
        from circuitbox.cluster import _link

        _link.Link.heard = lambda self, data: None  # type: ignore[method-assign]
    registry = BreakerRegistry()

    def opened(event: object) -> None:
        if isinstance(event, StateTransition) and event.to_state is CircuitState.OPEN:
            print(event.breaker, time.monotonic(), flush=True)

    registry.add_listener(opened)
    async with anyio.create_task_group() as tg:
        store = await connected_store(url, group, tg)
        registry.set_store(store)
        print("ready", flush=True)
        async for line in anyio.wrap_file(sys.stdin):  # names to create: a breaker must exist to be imposed on
            registry.get_or_create(line.strip())
            print("created", flush=True)


async def bench_propagation(url: str, trips: int, drop_pubsub: bool) -> dict[str, float]:
    group = f"bench-prop-{int(drop_pubsub)}"
    args = [sys.executable, __file__, "--follow", url, "--group", group]
    args += ["--drop-pubsub"] if drop_pubsub else []
    process = await anyio.open_process(args, env={**os.environ, **child_env()})
    assert process.stdout is not None and process.stdin is not None
    lines = anyio.streams.text.TextReceiveStream(process.stdout)
    buffer = ""

    async def line() -> str:
        nonlocal buffer
        while "\n" not in buffer:
            buffer += await lines.receive()
        first, buffer = buffer.split("\n", 1)
        return first

    delays: list[float] = []
    rng = random.Random(7)
    config = CircuitBreakerConfig(failure_threshold=1, timeout=HOUR, max_timeout=HOUR)
    try:
        with anyio.fail_after(60):
            assert await line() == "ready"
        async with anyio.create_task_group() as tg:
            store = await connected_store(url, group, tg)
            registry = BreakerRegistry()
            registry.set_store(store)
            for i in range(trips):
                name = f"trip{i}"
                await process.stdin.send(f"{name}\n".encode())
                with anyio.fail_after(30):
                    assert await line() == "created"
                breaker = registry.get_or_create(name, config)
                await anyio.sleep(rng.random())  # a trip at any moment of the follower's resync period
                permit = breaker.acquire()
                assert isinstance(permit, Permit)
                tripped_at = time.monotonic()
                permit.failure("transport", "refused")
                with anyio.fail_after(30):
                    seen, at = (await line()).split()
                assert seen == name
                delays.append(float(at) - tripped_at)
            tg.cancel_scope.cancel()
    finally:
        process.terminate()
        await process.wait()
    delays.sort()
    return {
        "p50_ms": statistics.median(delays) * 1000,
        "p99_ms": delays[min(len(delays) - 1, int(len(delays) * 0.99))] * 1000,
        "max_ms": delays[-1] * 1000,
        "trips": len(delays),
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    rounds, calls, trips = (5, 20_000, 30) if args.quick else (15, 100_000, 100)
    proxy_rounds, proxy_calls = (4, 100) if args.quick else (10, 300)
    with tempfile.TemporaryDirectory() as folder:
        async with redis_server(Path(folder)) as url:
            return {
                "engine_ns_per_call": await bench_engine(url, rounds, calls),
                "proxy_us_per_call": await bench_proxy(Path(folder), url, proxy_rounds, proxy_calls),
                "propagation_pubsub": await bench_propagation(url, trips, drop_pubsub=False),
                "propagation_resync_only": await bench_propagation(url, trips, drop_pubsub=True),
            }


def report(data: dict[str, Any]) -> str:
    lines = ["closed hot path, median over rounds:"]
    for key, unit in (("engine_ns_per_call", "ns"), ("proxy_us_per_call", "us")):
        without, with_ = data[key]["without cluster"], data[key]["with cluster"]
        lines.append(
            f"  {key.split('_')[0]:7} without cluster {without:9.1f} {unit}   with cluster {with_:9.1f} {unit}"
            f"   ({(with_ / without - 1) * 100:+.1f}%)"
        )
    lines.append("fail-fast propagation to another replica (process), over the trips:")
    for key in ("propagation_pubsub", "propagation_resync_only"):
        p = data[key]
        lines.append(
            f"  {key.split('_', 1)[1]:12} p50 {p['p50_ms']:7.1f} ms   p99 {p['p99_ms']:7.1f} ms   "
            f"max {p['max_ms']:7.1f} ms   ({p['trips']} trips)"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--follow", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--group", default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--drop-pubsub", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.follow:
        anyio.run(follow, args.follow, args.group, args.drop_pubsub)
        return
    data = anyio.run(bench, args)
    print(report(data))
    if args.json:
        print(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
