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
