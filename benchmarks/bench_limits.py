"""What bulkheads and rate limits cost per guarded call, side by side in one run.

    python benchmarks/bench_limits.py            # 15 rounds x 20,000 calls per contender
    python benchmarks/bench_limits.py --quick    # 5 rounds x 2,000 calls (a smoke run)

The guard runs in this process in front of a downstream that answers at once (no transport, no other process), so
the figures are the guard's own CPU per call, where a limit's cost is not hidden by a transport's milliseconds.
Contenders, all through `Guard.call` on the closed hot path:

- `before limits`: the guard without its limits layer (`_limited` only calls through the breaker), as it was;
- `no limits`: a tool with none of `max_concurrent`, `rate_limit`, `server_max_concurrent` (the default);
- `limits`: the same tool with `max_concurrent`, `server_max_concurrent` and a `rate_limit` high enough never to
  refuse, so every call takes a token, a tool slot and a server slot and gives the slots back.

They take turns call by call (which goes first rotates too), each call timed on its own; a round's figure is its
median call, the table shows medians over rounds, so a noisy neighbour hurts all alike and a burst of it is
ignored; `added by` is the median of the per-round differences.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import anyio
import mcp_types as types

from circuitbox.breakers import BreakerRegistry
from circuitbox.config.load import parse_config
from circuitbox.server.downstream import Downstream
from circuitbox.server.guard import Guard

RESULT = types.CallToolResult(content=[types.TextContent(text="ok")])
LIMITS = {"max_concurrent": 64, "rate_limit": {"calls": 10**9, "per": 1}}


class Instant(Downstream):
    """A connected downstream that answers every request at once with the same result."""

    session: Any

    async def request(self, request: Any, result_type: Any, progress: Any = None) -> Any:
        return RESULT


class Unlimited(Guard):
    """The guard as it was before limits existed: `_limited` is only the call through the breaker."""

    async def _limited(self, downstream: Any, tool: Any, arguments: Any, progress: Any, published: Any, d: Any) -> Any:
        return await self._run(downstream, tool, arguments, progress, published, d)


Contender = tuple[Guard, Downstream]


async def interleaved(contenders: list[Contender], calls: int) -> list[list[float]]:
    """Seconds of each call per contender, the contenders taking turns call by call (the first of each turn
    rotating), so that a burst of noise hits them alike."""
    times: list[list[float]] = [[] for _ in contenders]
    clock = time.perf_counter
    n = len(contenders)
    for i in range(calls):
        for j in range(n):
            which = (i + j) % n
            guard, downstream = contenders[which]
            began = clock()
            result = await guard.call(downstream, "echo", None, published=f"{downstream.name}__echo")
            times[which].append(clock() - began)
            assert result is RESULT
    return times


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 rounds x 2,000 calls")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args(argv)
    rounds, calls = (5, 2_000) if args.quick else (args.rounds, args.calls)
    config = parse_config(
        {
            "environment": "production",
            "mcpServers": {
                "plain": {"command": "unused", "preset": "none"},
                "limited": {
                    "command": "unused",
                    "preset": "none",
                    "server_max_concurrent": 64,
                    "tools": {"echo": LIMITS},
                },
            },
        },
        env={},
    )
    plain, limited = (Instant(config.servers[name]) for name in ("plain", "limited"))
    for downstream in (plain, limited):
        downstream.session = object()  # connected, as far as the guard asks
    labels = ("before limits", "no limits", "limits")
    contenders: list[Contender] = [
        (Unlimited(config, BreakerRegistry()), plain),
        (Guard(config, BreakerRegistry()), plain),
    ]
    contenders.append((contenders[1][0], limited))
    await interleaved(contenders, 1_000)  # warm-up: breakers, policies and limits created
    medians: list[list[float]] = [[] for _ in contenders]
    for _ in range(rounds):
        for kept, measured in zip(medians, await interleaved(contenders, calls), strict=True):
            kept.append(statistics.median(measured))
    print(f"Guard.call on the closed hot path, {rounds} rounds x {calls:,} calls each, taking turns call by call;")
    print("median call of each round, then the median over rounds (us):")
    for label, values in zip(labels, medians, strict=True):
        print(f"  {label:<14} {statistics.median(values) * 1e6:7.2f}")
    for label, (a, b) in (("no limits", (0, 1)), ("limits", (1, 2))):
        diffs = [y - x for x, y in zip(medians[a], medians[b], strict=True)]
        base = statistics.median(medians[a])
        added = statistics.median(diffs)
        print(f"  added by {label:<9} {added * 1e6:+6.2f} us ({added / base:+.1%}; {labels[b]} - {labels[a]})")
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main, sys.argv[1:]))
