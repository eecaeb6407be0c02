"""Opening a downstream's transport (stdio, SSE or streamable HTTP) from its config: one opener for the proxy and
`circuitbox check --connect`; HTTP and SSE on the SDK's public client transports, stdio on `stdio_child`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TextIO

import httpx2
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from circuitbox.config.load import ServerConfig
from circuitbox.server.stdio_child import open_stdio_child

# As the SDK's own transports default: a server may hold a response stream open for minutes, nothing else should.
HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)


def http_client(headers: dict[str, str] | None = None) -> httpx2.AsyncClient:
    """An HTTP client for MCP over HTTP (use it as a context manager); redirects stay off, as the SDK expects."""
    return httpx2.AsyncClient(headers=headers or None, timeout=HTTP_TIMEOUT)


def open_transport(
    server: ServerConfig, errlog: TextIO | None = None, *, redact: Callable[[str], str] = str
) -> AbstractAsyncContextManager[tuple[Any, Any]]:
    """(read, write) streams to `server`; a stdio child's stderr goes to `errlog`, or by default to our log, line by
    line under the server's name, through `redact`."""
    if server.transport == "stdio":
        assert server.command is not None
        return open_stdio_child(
            server.name, server.command, list(server.args), server.env, server.cwd, errlog=errlog, redact=redact
        )
    assert server.url is not None
    if server.transport == "sse":
        return sse_client(server.url, headers=dict(server.headers) or None)
    return _http(server.url, dict(server.headers))


@asynccontextmanager
async def _http(url: str, headers: dict[str, str]) -> AsyncIterator[tuple[Any, Any]]:
    async with http_client(headers) as client, streamable_http_client(url, http_client=client) as streams:
        yield streams[0], streams[1]
