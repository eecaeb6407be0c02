"""The proxy's closed hot path in process: `Proxy.call` on a closed circuit, side by side with another checkout.

    python benchmarks/bench_hot_path.py                          # this checkout only
    python benchmarks/bench_hot_path.py --baseline ../old/src    # interleaved against another checkout's src/
    python benchmarks/bench_hot_path.py --quick

What one forwarded call costs inside circuitbox, with nothing of the tool surface configured (no retry, no fallback,
no limits, `tool_list` at its default): catalog lookup, drain, guard, breaker permit, deadline, classification,
metrics events. The downstream is in memory and answers at once (no process, no transport), so the figure is
circuitbox's own work. With `--baseline`, every round runs each checkout in a fresh process, alternating, and the
table shows medians over rounds, so a noisy neighbour hurts both alike; `--surface` adds a run of this checkout with
`retry` and `fallback.last_known_good` set on a read-only tool, to show what they cost when used.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1] / "src"


def measure(calls: int, surface: bool) -> float:
    """CPU nanoseconds per `Proxy.call` (median of 5 blocks of `calls`): CPU time, not wall time, so that other
    processes on a busy machine do not count."""
    import anyio
    import mcp_types as types

    from circuitbox.config.load import parse_config
    from circuitbox.server.app import build_proxy
    from circuitbox.server.catalog import build_catalog
    from circuitbox.server.downstream import Downstream, Listing

    breaker: dict[str, Any] = {"failure_threshold": 1000, "minimum_calls": 100}
    if surface:
        breaker |= {"retry": {"attempts": 3}, "fallback": {"last_known_good": {"max_age": 60}}}
    config = parse_config({"mcpServers": {"c": {"command": "unused", "breaker": breaker}}}, env={})
    proxy, _ = build_proxy(config)
    answer = types.CallToolResult(content=[types.TextContent(text="ok")])

    class Answering(Downstream):
        async def request(self, request: Any, result_type: Any, progress: Any = None) -> Any:
            return answer

    downstream = Answering(config.servers["c"])
    downstream.session = object()  # type: ignore[assignment]
    hints = types.ToolAnnotations(read_only_hint=True)
    tool = types.Tool(name="echo", input_schema={"type": "object"}, annotations=hints)
    downstream.listing = Listing(tools=[tool])
    proxy.downstreams["c"] = downstream
    proxy.catalog = build_catalog([("c", "c", downstream.listing)])

    async def main() -> float:
        blocks = []
        for _ in range(5):
            began = time.process_time_ns()
            for i in range(calls):
                await proxy.call("c__echo", {"n": i})
            blocks.append((time.process_time_ns() - began) / calls)
        return statistics.median(blocks)

    return anyio.run(main)


def child(src: Path, calls: int, surface: bool) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    args = [sys.executable, __file__, "--child", "--calls", str(calls)] + (["--surface"] if surface else [])
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    return float(json.loads(done.stdout)["ns"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="another checkout's src/ directory to compare with")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--surface", action="store_true", help="also this checkout with retry + last_known_good")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps({"ns": measure(args.calls, args.surface)}))
        return
    if args.quick:
        args.rounds, args.calls = 3, 2_000
    contenders: list[tuple[str, Path, bool]] = [("this checkout", HERE, False)]
    if args.baseline:
        contenders.append(("baseline", args.baseline.resolve(), False))
    if args.surface:
        contenders.append(("this checkout, retry + last_known_good", HERE, True))
    results: dict[str, list[float]] = {name: [] for name, _, _ in contenders}
    for r in range(args.rounds):
        for name, src, surface in contenders[r % len(contenders) :] + contenders[: r % len(contenders)]:
            results[name].append(child(src, args.calls, surface))
    print(f"Proxy.call, closed circuit, in-memory downstream: medians of {args.rounds} rounds x 5 x {args.calls} calls")
    base = statistics.median(results["baseline"]) if args.baseline else None
    for name, values in results.items():
        ns = statistics.median(values)
        versus = f"  {ns / base:.3f}x baseline" if base else ""
        print(f"  {name:<40} {ns / 1000:8.2f} us per call{versus}")


if __name__ == "__main__":
    main()
