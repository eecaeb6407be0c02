"""The `circuitbox` command: one sub-command per module, imported only when chosen.

Each sub-command lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`, so importing
the CLI stays cheap (`mcp` takes over a second to import) and every part owns its own flags.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("circuitbox.commands.serve", "run the proxy (stdio by default, or --transport http)"),
    "demo": ("circuitbox.commands.demo", "watch breakers trip and heal in front of chaos downstreams (no setup)"),
    "init": ("circuitbox.commands.init", "move an agent client's servers behind circuitbox (writes circuitbox.json)"),
    "check": ("circuitbox.commands.check", "validate a config and print the effective policy per server/tool"),
    "status": ("circuitbox.commands.status", "print the breakers of a running instance (HTTP)"),
    "chaos": ("circuitbox.commands.chaos", "run the bundled fault-injecting MCP server"),
    "dashboard": ("circuitbox.commands.dashboard", "print a Grafana dashboard JSON"),
    "alerts": ("circuitbox.commands.alerts", "print a Prometheus alert rules file"),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="circuitbox", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # only the chosen command's module is imported
            importlib.import_module(module).add_arguments(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130
