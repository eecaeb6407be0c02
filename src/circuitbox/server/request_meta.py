"""The `_meta` of the upstream request being served, for the downstream request that serves it.

A client's `_meta` keys (trace context, an extension's keys, ones circuitbox has never heard of) reach the downstream
as they came, except the progress token: each hop has its own (circuitbox asks the downstream for progress under a
token of its own and relays it back under the client's). Held in a context variable so that the guarded call's
layers (retries, fallbacks, deadlines) need not pass it along.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    LOG_LEVEL_META_KEY,
    PROTOCOL_VERSION_META_KEY,
)

# The progress token and the 2026-era envelope (protocol version, client info and capabilities, log level) belong to
# the upstream hop: a handshake-era downstream refuses a request carrying that envelope (-32600).
_PER_HOP = frozenset(
    {
        "progress_token",
        "progressToken",
        PROTOCOL_VERSION_META_KEY,
        CLIENT_INFO_META_KEY,
        CLIENT_CAPABILITIES_META_KEY,
        LOG_LEVEL_META_KEY,
    }
)
_current: ContextVar[dict[str, Any] | None] = ContextVar("circuitbox_request_meta", default=None)


def forwarded(meta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What of a request's `_meta` goes on to the downstream (None when nothing does)."""
    kept = {key: value for key, value in (meta or {}).items() if key not in _PER_HOP}
    return kept or None


@contextmanager
def serving(meta: Mapping[str, Any] | None) -> Iterator[None]:
    """While an upstream request with this `_meta` is being served."""
    token = _current.set(forwarded(meta))
    try:
        yield
    finally:
        _current.reset(token)


def current() -> dict[str, Any] | None:
    """The `_meta` to send downstream for the upstream request being served, if any."""
    return _current.get()
