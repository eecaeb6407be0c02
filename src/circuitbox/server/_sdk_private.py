"""The one place circuitbox reads SDK internals, because the SDK offers no public way (mcp 2.3).

`tests/proxy/test_sdk_private.py` fails when the SDK changes what this relies on.
"""

from __future__ import annotations

from typing import Any


def client_connection(session: Any) -> Any | None:
    """The connection behind a handshake-era `ServerSession`: one object per upstream client, whose `outbound`
    channel reaches that client outside any request (list changes, and the client identity relays are keyed by).
    The low-level request context exposes it only through the session's private `_connection`."""
    return getattr(session, "_connection", None)


def later_revision_fields(method: str, version: str) -> frozenset[str]:
    """Result keys that `ClientSession.send_request` drops from a `version` session's result of `method` before
    building its typed result (fields of later revisions, whose constraints would otherwise apply):
    `direct_calls.py` answers past the session and must drop the same ones."""
    from mcp.client import session

    found: frozenset[str] = session._later_revision_fields(method, version)
    return found


async def send_unvalidated(session: Any, data: dict[str, Any], progress: Any = None) -> dict[str, Any]:
    """Send a request (`data`: its wire form, method and params) on a `ClientSession` and return the raw result.

    `ClientSession.send_request` validates a `tools/call` answer as a `CallToolResult`, so it refuses the
    `CreateTaskResult` a task-augmented call gets (2025-11-25 tasks; the SDK has no tasks runtime). This is
    `send_request` without that check: the session's own per-version stamp, then its dispatcher.

    Raises:
        MCPError: the server answered with an error or the connection closed.
    """
    opts: dict[str, Any] = {}
    session._stamp(data, opts)
    if progress is not None:
        opts["on_progress"] = progress
    result: dict[str, Any] = await session._dispatcher.send_raw_request(data["method"], data.get("params"), opts)
    return result
