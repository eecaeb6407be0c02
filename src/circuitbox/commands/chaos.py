"""`circuitbox chaos`: run the fault-injecting MCP server (stdio by default, or streamable HTTP at /mcp)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from circuitbox.chaos._behaviours import (
    DEFAULT_TOOLS,
    SYNTAX,
    Behaviour,
    BehaviourError,
    parse_behaviour,
    parse_tool,
)

EPILOG = f"""\
behaviours (--tool NAME=BEHAVIOUR, repeatable):
{SYNTAX}

default tools when no --tool or --spec is given:
  {" ".join(f"{n}={b}" for n, b in DEFAULT_TOOLS.items())}

--spec takes JSON or a JSON file's path: {{"seed": 7, "tools": {{"echo": "healthy", "slow": "latency:0.5"}}}}
The tool chaos_control changes behaviours at run time and reports per-tool counters."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "--tool", action="append", default=[], metavar="NAME=BEHAVIOUR", help="a tool and its behaviour"
    )
    parser.add_argument("--spec", metavar="JSON|PATH", help="tools and seed as JSON; --tool entries override it")
    parser.add_argument(
        "--read-only", action="append", default=[], metavar="NAME", help="list tool NAME with readOnlyHint"
    )
    parser.add_argument(
        "--idempotent", action="append", default=[], metavar="NAME", help="list tool NAME with idempotentHint"
    )
    parser.add_argument("--seed", type=int, help="seed for fail and latency ranges (per tool), for reproducible runs")
    parser.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8766, help="HTTP port (default 8766); the endpoint is /mcp")
    parser.add_argument("--name", default="circuitbox-chaos", help="server name announced to clients")
    parser.add_argument("--startup-delay", type=float, default=0.0, metavar="S", help="wait S seconds before serving")
    parser.add_argument("--log-level", default="WARNING", help="stderr log level (default WARNING)")


class ConfigError(Exception):
    """Flags or spec that do not describe a valid tool set."""


def _load_spec(text: str) -> dict[str, Any]:
    source = text if text.lstrip().startswith("{") else Path(text).read_text(encoding="utf-8")
    try:
        spec = json.loads(source)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--spec is not valid JSON: {exc}") from None
    if not isinstance(spec, dict) or set(spec) - {"seed", "tools"}:
        raise ConfigError('--spec must be an object with only "seed" and "tools"')
    if not isinstance(spec.get("tools", {}), dict) or not isinstance(spec.get("seed", 0), int | None):
        raise ConfigError('--spec: "tools" must map names to behaviour strings and "seed" must be an integer')
    return spec


def tools_from_args(args: argparse.Namespace) -> tuple[dict[str, Behaviour], int | None]:
    """The tool set and seed the flags describe.

    Raises:
        ConfigError: a bad --spec or --tool.
    """
    spec = _load_spec(args.spec) if args.spec else {}
    tools: dict[str, Behaviour] = {}
    try:
        for name, text in spec.get("tools", {}).items():
            if not isinstance(text, str):
                raise ConfigError(f"--spec: tool {name!r} must be a behaviour string such as 'latency:0.5'")
            tools[name] = parse_behaviour(text)
        for item in args.tool:
            name, behaviour = parse_tool(item)
            tools[name] = behaviour
        if not args.spec and not args.tool:
            tools = {n: parse_behaviour(b) for n, b in DEFAULT_TOOLS.items()}
    except BehaviourError as exc:
        raise ConfigError(str(exc)) from None
    if "chaos_control" in tools:
        raise ConfigError("chaos_control is the control tool's name; choose another")
    seed = args.seed if args.seed is not None else spec.get("seed")
    return tools, seed


def hints_from_args(args: argparse.Namespace) -> dict[str, frozenset[str]]:
    """Tool name -> the annotations `--read-only` and `--idempotent` give it."""
    hints: dict[str, set[str]] = {}
    for flag, hint in ((args.read_only, "readOnly"), (args.idempotent, "idempotent")):
        for name in flag:
            hints.setdefault(name, set()).add(hint)
    return {name: frozenset(found) for name, found in hints.items()}


async def _serve(args: argparse.Namespace, tools: dict[str, Behaviour], seed: int | None) -> None:
    import anyio

    from circuitbox.chaos._state import ChaosState
    from circuitbox.chaos._transport import serve_http, serve_stdio

    await anyio.sleep(args.startup_delay)
    state = ChaosState(tools, seed=seed, hints=hints_from_args(args))
    if args.transport == "http":
        await serve_http(state, name=args.name, host=args.host, port=args.port)
    else:
        await serve_stdio(state, name=args.name)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        tools, seed = tools_from_args(args)
    except (ConfigError, OSError) as exc:
        print(f"circuitbox chaos: error: {exc}", file=sys.stderr)
        return 2
    import anyio

    anyio.run(_serve, args, tools, seed)
    return 0
