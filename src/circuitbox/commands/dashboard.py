"""`circuitbox dashboard`: print (or write) the Grafana dashboard JSON."""

from __future__ import annotations

import argparse
import json
import sys

from circuitbox.observability.dashboard import UID, build_dashboard


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", help="write to this file instead of stdout")
    parser.add_argument("--title", default="circuitbox: circuit breakers", help="dashboard title")
    parser.add_argument("--uid", default=UID, help=f"dashboard uid (default {UID})")


def run(args: argparse.Namespace) -> int:
    text = json.dumps(build_dashboard(title=args.title, uid=args.uid), indent=2) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0
