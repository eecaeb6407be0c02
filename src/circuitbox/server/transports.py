"""Opening a downstream's transport (stdio, SSE or streamable HTTP) from its config: one opener for the proxy and
`circuitbox check --connect`; HTTP and SSE on the SDK's public client transports, stdio on `stdio_child`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, MutableSequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TextIO

import httpx2
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from circuitbox.config.load import ServerConfig
from circuitbox.config.model import MAX_MESSAGE_BYTES
from circuitbox.config.secrets import mask
from circuitbox.server.http11 import LeanHTTPTransport
from circuitbox.server.http_calls import open_http_link
from circuitbox.server.stdio_child import open_stdio_child

logger = logging.getLogger("circuitbox.downstream")

# As the SDK's own transports default: a server may hold a response stream open for minutes, nothing else should.
HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)


class MessageTooLargeError(httpx2.StreamError):
    """A downstream's HTTP response body is over `max_message_bytes`: refused, not read to the end."""


class _CappedStream(httpx2.AsyncByteStream):
    """A response body that stops with `MessageTooLargeError` past `limit` bytes."""

    def __init__(self, inner: httpx2.AsyncByteStream, limit: int, url: str) -> None:
        self._inner = inner
        self._limit = limit
        self._url = url

    def _refuse(self, size: str) -> MessageTooLargeError:
        logger.error("an HTTP response from %s was %s bytes, over max_message_bytes (%d): refused", self._url, size,
                     self._limit)  # fmt: skip
        return MessageTooLargeError(f"the server's answer is over max_message_bytes ({self._limit} bytes)")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._inner:
            seen += len(chunk)
            if seen > self._limit:
                raise self._refuse(f"more than {seen}")
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class _BoundedBodies(httpx2.AsyncBaseTransport):
    """Caps every response body but event streams, whose events the SDK's SSE decoder caps one by one."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return response
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        url = mask(str(request.url.copy_with(query=None)))  # the logs mask secrets too; a query never shows
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > self._limit:  # refused before a byte of it is read
            await response.aclose()
            raise _CappedStream(response.stream, self._limit, url)._refuse(length)
        response.stream = _CappedStream(response.stream, self._limit, url)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def http_client(headers: dict[str, str] | None = None, max_body: int = MAX_MESSAGE_BYTES) -> httpx2.AsyncClient:
    """An HTTP client for MCP over HTTP (use it as a context manager); redirects stay off, as the SDK expects; a
    response body over `max_body` bytes fails its request (`MessageTooLargeError`); plain `http://` requests go over
    circuitbox's lean HTTP/1.1 transport (http11.py), the rest over httpx's own."""
    return httpx2.AsyncClient(
        headers=headers or None,
        timeout=HTTP_TIMEOUT,
        transport=_BoundedBodies(LeanHTTPTransport(httpx2.AsyncHTTPTransport()), max_body),
    )


def open_transport(
    server: ServerConfig,
    errlog: TextIO | None = None,
    *,
    redact: Callable[[str], str] = str,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    stderr_tail: MutableSequence[str] | None = None,
) -> AbstractAsyncContextManager[tuple[Any, Any]]:
    """(read, write) streams to `server`; a stdio child's stderr goes to `errlog`, or by default to our log, line by
    line under the server's name, through `redact` (and, redacted, onto `stderr_tail`). A message over
    `max_message_bytes` is refused on every transport but SSE, whose SDK client caps an event at 1 MiB itself."""
    if server.transport == "stdio":
        assert server.command is not None
        return open_stdio_child(
            server.name,
            server.command,
            list(server.args),
            server.env,
            server.cwd,
            errlog=errlog,
            redact=redact,
            max_line=max_message_bytes,
            stderr_tail=stderr_tail,
        )
    assert server.url is not None
    if server.transport == "sse":
        return sse_client(server.url, headers=dict(server.headers) or None)
    return _http(server.url, dict(server.headers), max_message_bytes)


@asynccontextmanager
async def _http(url: str, headers: dict[str, str], limit: int) -> AsyncIterator[tuple[Any, Any]]:
    async with (
        http_client(headers, limit) as client,
        streamable_http_client(url, http_client=client, max_sse_event_size=limit) as streams,
        open_http_link(client, url, streams, limit) as (read, write),  # tools/call past the SDK's client
    ):
        yield read, write
