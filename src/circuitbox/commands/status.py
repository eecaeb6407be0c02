"""`circuitbox status`: ask a running instance (HTTP transport) for its breakers and print a table.

It calls the instance's own `circuit_status` tool over MCP, so it needs no extra endpoint and obeys the same token.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8765", help="base URL of a circuitbox serving HTTP")
    parser.add_argument("--auth-token", help="bearer token (or $CIRCUITBOX_AUTH_TOKEN)")
    parser.add_argument("--json", action="store_true", help="print the raw structured status")
    parser.add_argument("--timeout", type=float, default=10.0)


async def fetch_status(url: str, token: str | None, timeout: float) -> dict[str, Any]:
    import anyio
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    from circuitbox.server.transports import http_client

    endpoint = url.rstrip("/") + ("" if url.rstrip("/").endswith("/mcp") else "/mcp")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    with anyio.fail_after(timeout):
        async with (
            http_client(headers) as http,
            streamable_http_client(endpoint, http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            result = await session.call_tool("circuit_status", {})
    if result.structured_content is None:
        raise RuntimeError("the instance answered circuit_status without structured content")
    return dict(result.structured_content)


def render(status: dict[str, Any]) -> str:
    lines = ["SERVER               CONNECTION   TOOLS  LAST ERROR"]
    for s in status["servers"]:
        lines.append(f"{s['server']:<20} {s['connection']:<12} {s['tools']:>5}  {s.get('last_error') or ''}")
    lines += ["", "SERVER               TOOL                       STATE         CALLS  FAIL%  RETRY IN"]
    for b in status["breakers"]:
        retry = f"{b['retry_after']:.1f}s" if b.get("retry_after") else ""
        lines.append(
            f"{b['server']:<20} {b['tool']:<26} {b['state']:<13} {b['calls']:>5}  "
            f"{b['failure_rate'] * 100:>4.0f}%  {retry}"
        )
    if not status["breakers"]:
        lines.append("(no tool called yet)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json

    import anyio

    token = args.auth_token or os.environ.get("CIRCUITBOX_AUTH_TOKEN")
    try:
        status = anyio.run(fetch_status, args.url, token, args.timeout)
    except Exception as exc:
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]  # type: ignore[assignment]
        print(f"circuitbox: cannot read status from {args.url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2) if args.json else render(status))
    return 0
