"""`circuitbox status`: ask a running instance (HTTP transport) for its breakers and print a table.

It calls the instance's own `circuit_status` tool over MCP, so it needs no extra endpoint and obeys the same token.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


class Refused(Exception):
    """The instance answered an HTTP error status (401: the token is missing or wrong)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8765", help="base URL of a circuitbox serving HTTP")
    parser.add_argument("--auth-token-file", metavar="PATH", help="file holding the instance's bearer token")
    parser.add_argument(
        "--auth-token",
        help="the bearer token itself (other local users can read it in the process list: prefer "
        "--auth-token-file or $CIRCUITBOX_AUTH_TOKEN)",
    )
    parser.add_argument("--json", action="store_true", help="print the raw structured status")
    parser.add_argument("--timeout", type=float, default=10.0)


async def fetch_status(url: str, token: str | None, timeout: float) -> dict[str, Any]:
    import anyio
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    from circuitbox.server.transports import http_client

    endpoint = url.rstrip("/") + ("" if url.rstrip("/").endswith("/mcp") else "/mcp")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    refused: list[int] = []

    async def note(response: Any) -> None:
        if response.status_code >= 400:  # the SDK reports only "an error response": keep which one
            refused.append(response.status_code)

    try:
        with anyio.fail_after(timeout):
            async with http_client(headers) as http:
                http.event_hooks["response"].append(note)
                async with (
                    streamable_http_client(endpoint, http_client=http) as (read, write),
                    ClientSession(read, write) as session,
                ):
                    await session.initialize()
                    result = await session.call_tool("circuit_status", {})
    except Exception:
        if refused:
            raise Refused(refused[0]) from None
        raise
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


def refusal(status: int, token: str | None) -> str:
    """What an HTTP error status from the instance means, and what to do about it."""
    if status == 401:
        how = "--auth-token-file PATH, $CIRCUITBOX_AUTH_TOKEN or --auth-token TOKEN"
        if token is None:
            return f"HTTP 401: the instance requires its bearer token; pass it with {how}"
        return f"HTTP 401: the instance refused the token given; pass the one it was started with ({how})"
    if status in (403, 421):
        return (
            f"HTTP {status}: the instance refused this host name or origin (DNS-rebinding protection): use the "
            "address it listens on, or start it with --allowed-host NAME"
        )
    if status == 404:
        return "HTTP 404: no MCP endpoint there; --url takes the base URL of `circuitbox serve --transport http`"
    return f"HTTP {status} from the instance"


def run(args: argparse.Namespace) -> int:
    import json

    import anyio

    from circuitbox.commands.serve import auth_token

    try:
        token = auth_token(args)
    except ValueError as exc:
        print(f"circuitbox: {exc}", file=sys.stderr)
        return 2
    try:
        status = anyio.run(fetch_status, args.url, token, args.timeout)
    except Refused as exc:
        print(f"circuitbox: cannot read status from {args.url}: {refusal(exc.status, token)}", file=sys.stderr)
        return 1
    except Exception as exc:
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]  # type: ignore[assignment]
        print(f"circuitbox: cannot read status from {args.url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2) if args.json else render(status))
    return 0
