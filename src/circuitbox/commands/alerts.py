"""`circuitbox alerts`: print (or write) the Prometheus alerting rules file."""

from __future__ import annotations

import argparse
import sys

from circuitbox.observability.alerts import Thresholds, build_rules, to_yaml

_D = Thresholds()


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", help="write to this file instead of stdout")
    parser.add_argument(
        "--failure-rate",
        type=_fraction,
        default=_D.failure_rate,
        help=f"alert when this fraction of calls fails (default {_D.failure_rate})",
    )
    parser.add_argument(
        "--min-calls",
        type=int,
        default=_D.min_calls,
        help=f"... and at least this many calls ran in the window (default {_D.min_calls})",
    )
    parser.add_argument(
        "--health",
        type=_fraction,
        default=_D.health,
        help=f"alert when the health score stays below this (default {_D.health})",
    )
    parser.add_argument(
        "--open-margin",
        type=float,
        default=_D.open_margin,
        help=f"seconds beyond its timeout a circuit may stay open (default {_D.open_margin:g})",
    )
    parser.add_argument(
        "--fallbacks-per-minute",
        type=float,
        default=_D.fallbacks_per_minute,
        help=f"alert above this many fallback answers per minute (default {_D.fallbacks_per_minute:g})",
    )
    parser.add_argument("--window", default=_D.window, help=f"rate window (default {_D.window})")


def run(args: argparse.Namespace) -> int:
    thresholds = Thresholds(
        failure_rate=args.failure_rate,
        min_calls=args.min_calls,
        health=args.health,
        open_margin=args.open_margin,
        fallbacks_per_minute=args.fallbacks_per_minute,
        window=args.window,
    )
    text = to_yaml(build_rules(thresholds))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0
