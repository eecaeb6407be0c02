"""`circuitbox demo`: watch breakers trip and heal in front of two chaos downstreams, with no setup.

circuitbox runs as a child process over stdio (exactly as an agent client would start it) in front of two bundled
chaos servers, `search` and `weather`. Scripted callers keep calling their tools while the demo makes every `search`
tool hang (or fail) for a while and then heals it. The same scenario runs twice on the same proxy: with the breakers,
then with every breaker forced to `disabled`; a summary compares the two.
"""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_SEED = 7


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a shorter scenario (about 25 s in all instead of 45 s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed for the callers (default {DEFAULT_SEED})")
    parser.add_argument(
        "--fault", choices=("hang", "error"), default="hang", help="what the outage does to 'search' (default hang)"
    )


def run(args: argparse.Namespace) -> int:
    import anyio

    from circuitbox.demo import broken_pipe
    from circuitbox.demo._plan import NORMAL, QUICK
    from circuitbox.demo._run import demo

    timing = QUICK if args.quick else NORMAL
    try:
        return anyio.run(demo, timing, args.seed, args.fault, sys.stdout)
    except Exception as exc:
        if not broken_pipe(exc):
            raise
        # The reader went away (`circuitbox demo | head`): stop quietly, as Python's docs advise.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
