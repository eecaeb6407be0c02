"""The one place circuitbox reads an SDK internal, because the SDK offers no public way (mcp 2.3).

`tests/proxy/test_sdk_private.py` fails when the SDK changes what this relies on.
"""

from __future__ import annotations

from typing import Any


def client_connection(session: Any) -> Any | None:
    """The connection behind a handshake-era `ServerSession`: one object per upstream client, whose `outbound`
    channel reaches that client outside any request (list changes, and the client identity relays are keyed by).
    The low-level request context exposes it only through the session's private `_connection`."""
    return getattr(session, "_connection", None)
