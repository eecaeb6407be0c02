"""A lean HTTP/1.1 transport for httpx, for plain `http://` downstreams: every MCP POST over a kept-alive connection.

Under load, httpx's default transport (httpcore) is most of what an HTTP downstream's call costs the proxy: h11's
event machinery for each request and response, the request's head and body written as two packets (so the server
wakes twice to read one request), and a connection pool that probes the socket of every idle connection on every
request. This transport speaks only what an MCP client needs and does it directly: the request's head and body go
out in one write, the response's head is parsed once, its body is read as its framing says (Content-Length,
chunked, or to the connection's end), and a connection whose response was read to its end goes back to the pool.
Only the connection about to be reused is checked for having been closed by the server (and dropped past the same
keep-alive expiry as httpx's); at most `MAX_CONNECTIONS` are open at once, as httpx's default limit.

It is httpx's public transport interface, under the same client: headers, cookies, auth, redirects, event hooks and
the body cap (`transports._BoundedBodies`) stay httpx's and circuitbox's. What it does not do (another scheme, TLS,
a request body of unknown length, request extensions other than timeouts) goes to httpx's own transport, `inner`;
proxied URLs never reach it (httpx routes them to its proxy transports). Errors are httpx's exception types, as
httpcore raises them: a failed connect `ConnectError`, a connection lost before or while reading `ReadError` or
`RemoteProtocolError`, an expired timeout the matching `*Timeout`.
"""

from __future__ import annotations

import re
import select
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.abc
import httpx2

MAX_CONNECTIONS = 100  # httpx's default limit
MAX_IDLE = 20  # idle connections kept per origin (httpx's default max_keepalive_connections)
KEEPALIVE_EXPIRY = 5.0  # seconds an idle connection is kept (httpx's default)
MAX_HEAD = 64 * 1024  # a response head larger than this is refused (h11's default limit)
READ_SIZE = 64 * 1024
_NO_BODY = frozenset({204, 304})
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(rb"[^\x00\r\n]*")


class _Connection:
    """One TCP connection, with what was read past the last response's end (none, for a reusable one)."""

    __slots__ = ("buffer", "fd", "idle_since", "stream")

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.fd: int = stream.extra(anyio.abc.SocketAttribute.raw_socket).fileno()
        self.buffer = b""
        self.idle_since = 0.0

    def usable(self) -> bool:
        """Whether the server has not closed it (nor sent anything unasked) while it was idle: its socket is not
        readable (its end, or bytes nobody asked for, would make it so)."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        return not poller.poll(0)


class LeanHTTPTransport(httpx2.AsyncBaseTransport):
    """HTTP/1.1 over plain TCP for the requests it can take; the rest to `inner` (httpx's own transport)."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._slots = anyio.Semaphore(MAX_CONNECTIONS)
        self._closed = False

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = _plain_body(request)
        if body is None or self._closed:
            return await self._inner.handle_async_request(request)
        timeouts = request.extensions.get("timeout", {})
        url = request.url
        origin = (url.host, url.port or 80)
        head = b"".join([request.method.encode(), b" ", url.raw_path, b" HTTP/1.1\r\n", *_header_lines(request)])
        with _mapped(httpx2.PoolTimeout, httpx2.ConnectError), anyio.fail_after(timeouts.get("pool")):
            await self._slots.acquire()
        try:
            connection = await self._connection(origin, timeouts.get("connect"))
            try:
                with _mapped(httpx2.WriteTimeout, httpx2.WriteError), anyio.fail_after(timeouts.get("write")):
                    await connection.stream.send(head + body)
                reader = _Reader(connection, timeouts.get("read"))
                while True:
                    status, reason, version, headers = await reader.head()
                    if status >= 200 or status == 101:
                        break  # informational answers (100 Continue, 103 Early Hints) precede the response
                framing = _framing(request.method, status, headers)
            except BaseException:
                await _close(connection)
                raise
        except BaseException:
            self._slots.release()
            raise
        reusable = _keeps_alive(version, [*headers, *request.headers.raw])
        stream = _Body(self, origin, reader, framing, reusable)
        extensions = {"http_version": version, "reason_phrase": reason}
        return httpx2.Response(status, headers=headers, stream=stream, extensions=extensions)

    async def _connection(self, origin: tuple[str, int], timeout: float | None) -> _Connection:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if now - connection.idle_since < KEEPALIVE_EXPIRY and connection.usable():
                return connection
            await _close(connection)
        with _mapped(httpx2.ConnectTimeout, httpx2.ConnectError), anyio.fail_after(timeout):
            stream = await anyio.connect_tcp(*origin)
        return _Connection(stream)

    async def _release(self, origin: tuple[str, int], connection: _Connection | None) -> None:
        """A request's end: its connection back to the pool (None: it was closed), its slot free."""
        self._slots.release()
        if connection is None:
            return
        idle = self._idle.setdefault(origin, [])
        if self._closed or len(idle) >= MAX_IDLE:
            await _close(connection)
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                await _close(connection)
        await self._inner.aclose()


class _Reader:
    """Reads a response off a connection: its head, then its body as its framing says."""

    def __init__(self, connection: _Connection, timeout: float | None) -> None:
        self.connection = connection
        self._timeout = timeout

    async def _more(self) -> bytes:
        """The next bytes the server sent; b"" at the connection's end."""
        with _mapped(httpx2.ReadTimeout, httpx2.ReadError), anyio.fail_after(self._timeout):
            try:
                return await self.connection.stream.receive(READ_SIZE)
            except anyio.EndOfStream:
                return b""

    async def head(self) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
        """(status, reason, HTTP version, headers) of the next response head."""
        connection = self.connection
        buffer = connection.buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            if len(buffer) > MAX_HEAD:
                raise httpx2.RemoteProtocolError("the server's response head is too large")
            more = await self._more()
            if not more:
                raise httpx2.RemoteProtocolError("Server disconnected without sending a response.")
            buffer += more
        connection.buffer = buffer[end + 4 :]
        lines = buffer[:end].split(b"\r\n")
        try:
            version, status, reason = [*lines[0].split(b" ", 2), b""][:3]
            if not version.startswith(b"HTTP/1.") or len(status) != 3:
                raise ValueError(lines[0])
            headers = []
            for line in lines[1:]:
                name, sep, value = line.partition(b":")
                if not sep or not name or name != name.strip() or line[:1] in b" \t":
                    raise ValueError(line)
                headers.append((name, value.strip(b" \t")))
            return int(status), reason, version, headers
        except ValueError as exc:
            raise httpx2.RemoteProtocolError(f"malformed response head: {exc}") from None

    async def exactly(self, size: int) -> AsyncIterator[bytes]:
        """The next `size` bytes, as they come."""
        connection = self.connection
        while size:
            if not connection.buffer:
                connection.buffer = await self._more()
                if not connection.buffer:
                    raise httpx2.RemoteProtocolError("peer closed connection without sending complete message body")
            chunk, connection.buffer = connection.buffer[:size], connection.buffer[size:]
            size -= len(chunk)
            yield chunk

    async def line(self) -> bytes:
        connection = self.connection
        while (end := connection.buffer.find(b"\r\n")) < 0:
            if len(connection.buffer) > MAX_HEAD:
                raise httpx2.RemoteProtocolError("a chunk's size line is too long")
            more = await self._more()
            if not more:
                raise httpx2.RemoteProtocolError("peer closed connection without sending complete message body")
            connection.buffer += more
        line, connection.buffer = connection.buffer[:end], connection.buffer[end + 2 :]
        return line

    async def chunked(self) -> AsyncIterator[bytes]:
        while True:
            size_line = (await self.line()).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise httpx2.RemoteProtocolError(f"malformed chunk size: {size_line!r}") from None
            if size == 0:
                while await self.line():  # the trailer section, up to its empty line
                    pass
                return
            async for chunk in self.exactly(size):
                yield chunk
            if await self.line():
                raise httpx2.RemoteProtocolError("a chunk's data is not followed by its line end")

    async def to_end(self) -> AsyncIterator[bytes]:
        connection = self.connection
        if connection.buffer:
            yield connection.buffer
            connection.buffer = b""
        while more := await self._more():
            yield more


class _Body(httpx2.AsyncByteStream):
    """A response's body; read to its end, its connection goes back to the pool, else it is closed with the body."""

    def __init__(
        self, transport: LeanHTTPTransport, origin: tuple[str, int], reader: _Reader, framing: Any, reusable: bool
    ) -> None:
        self._transport = transport
        self._origin = origin
        self._reader = reader
        self._framing = framing  # None: no body; an int: its length; "chunked"; "close": up to the connection's end
        self._reusable = reusable and framing != "close"
        self._open = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        framing, reader = self._framing, self._reader
        if framing == "chunked":
            parts = reader.chunked()
        elif framing == "close":
            parts = reader.to_end()
        else:
            parts = reader.exactly(framing or 0)
        async for part in parts:
            yield part
        reusable = self._reusable and not reader.connection.buffer  # bytes past the end: the stream is not sane
        await self._end(reader.connection if reusable else None)

    async def aclose(self) -> None:
        await self._end(None)

    async def _end(self, keep: _Connection | None) -> None:
        if not self._open:
            return
        self._open = False
        if keep is None:
            await _close(self._reader.connection)
        await self._transport._release(self._origin, keep)


def _header_lines(request: httpx2.Request) -> list[bytes]:
    """The request's header lines and the head's end. A name that is no token or a value with a line break (a
    configured header that would smuggle another one in) is refused as h11 refuses it."""
    lines = []
    for name, value in request.headers.raw:
        if not _TOKEN.fullmatch(name):
            raise httpx2.LocalProtocolError(f"Illegal header name {name!r}")
        if not _VALUE.fullmatch(value):
            raise httpx2.LocalProtocolError(f"Illegal header value {value!r}")
        lines.append(b"%s: %s\r\n" % (name, value))
    lines.append(b"\r\n")
    return lines


def _plain_body(request: httpx2.Request) -> bytes | None:
    """The body of a request this transport takes (plain HTTP, a body of known length, timeouts its only
    extension), else None."""
    if request.url.scheme != "http" or not request.extensions.keys() <= {"timeout"}:
        return None
    if "transfer-encoding" in request.headers or not isinstance(request.stream, httpx2.ByteStream):
        return None
    return request.content


def _framing(method: str, status: int, headers: list[tuple[bytes, bytes]]) -> int | str | None:
    """How the response's body is delimited (RFC 9112, 6.3)."""
    if status == 101:  # switched to another protocol (never asked for): nothing more is HTTP on it
        return "close"
    if method == "HEAD" or status in _NO_BODY or status < 200:
        return None
    encodings = [v.lower() for k, v in headers if k.lower() == b"transfer-encoding"]
    if encodings:
        return "chunked" if encodings[-1].rsplit(b",", 1)[-1].strip() == b"chunked" else "close"
    lengths = {v.strip() for k, v in headers if k.lower() == b"content-length"}
    if not lengths:
        return "close"
    if len(lengths) > 1 or not all(c in b"0123456789" for c in next(iter(lengths))) or not next(iter(lengths)):
        raise httpx2.RemoteProtocolError("malformed Content-Length")
    return int(next(iter(lengths)))


def _keeps_alive(version: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
    connection = b",".join(v.lower() for k, v in headers if k.lower() == b"connection")
    return version == b"HTTP/1.1" and b"close" not in connection


@contextmanager
def _mapped(timeout: type[httpx2.TransportError], failure: type[httpx2.TransportError]) -> Iterator[None]:
    """anyio's and the OS's errors as httpx's."""
    try:
        yield
    except TimeoutError as exc:
        raise timeout(str(exc) or timeout.__name__) from exc
    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
        raise failure(str(exc) or type(exc).__name__) from exc


async def _close(connection: _Connection) -> None:
    with anyio.CancelScope(shield=True):
        await connection.stream.aclose()
