"""`circuitbox status`: ask a running instance for its breakers and print a table.

It reads `/status.json` (the `circuit_status` document), which both the HTTP listener and a stdio-mode instance's
metrics port serve, behind the same token.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from circuitbox.observability.status_page import cluster_line


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
    """The `circuit_status` document of the instance at `url` (a base URL; a trailing `/mcp` is dropped).

    Raises:
        Refused: the instance answered an HTTP error status.
    """
    import httpx2

    base = url.rstrip("/").removesuffix("/mcp")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(timeout=timeout, follow_redirects=False) as http:
        response = await http.get(f"{base}/status.json", headers=headers)
    if response.status_code != 200:
        raise Refused(response.status_code)
    document = response.json()
    if not isinstance(document, dict) or "breakers" not in document:
        raise RuntimeError("the answer is not a circuitbox status document")
    return document


def render(status: dict[str, Any]) -> str:
    from circuitbox.server.own_tools import crash_loop_note

    lines = ["SERVER               CONNECTION   TOOLS  LAST ERROR"]
    for s in status["servers"]:
        note = crash_loop_note(s)
        error = (s.get("last_error") or "") + note if s.get("last_error") else note.removeprefix("; ")
        lines.append(f"{s['server']:<20} {s['connection']:<12} {s['tools']:>5}  {error}")
    lines += ["", "SERVER               TOOL                       STATE         CALLS  FAIL%  RETRY IN"]
    for b in status["breakers"]:
        retry = f"{b['retry_after']:.1f}s" if b.get("retry_after") else ""
        lines.append(
            f"{b['server']:<20} {b['tool']:<26} {b['state']:<13} {b['calls']:>5}  "
            f"{b['failure_rate'] * 100:>4.0f}%  {retry}"
        )
    if not status["breakers"]:
        lines.append("(no tool called yet)")
    cluster = status.get("cluster")
    if cluster is not None:  # a replica of a fleet: is it sharing its breakers right now?
        lines += ["", f"CLUSTER {cluster_line(cluster)}"]
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
        return (
            "HTTP 404: no circuitbox status there; --url takes the base URL of `circuitbox serve --transport http` "
            "or of a stdio instance's metrics port"
        )
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
