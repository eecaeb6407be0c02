"""A minimal HTTP/1.1 server for an ASGI app, on anyio: what stdio mode's metrics port runs.

Not uvicorn: `uvicorn.Server.serve()` takes over SIGINT/SIGTERM for the whole process, runs only on asyncio and
skips its shutdown when cancelled. One request per connection (`Connection: close`), bodies by Content-Length
only (GET, HEAD and small form posts), responses streamed as the app sends them (server-sent events), and
`http.disconnect` delivered when the client hangs up.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import anyio
import anyio.abc

from circuitbox.observability.access import ASGIApp, Message

logger = logging.getLogger("circuitbox.observability")

MAX_REQUEST_HEAD = 16 * 1024
MAX_REQUEST_BODY = 64 * 1024
READ_TIMEOUT = 10.0


class BadRequest(Exception):
    """The request head cannot be read as HTTP/1.1."""


async def serve_asgi(
    listener: anyio.abc.Listener[anyio.abc.SocketStream], app: ASGIApp, server: tuple[str, int]
) -> None:
    """Serve `app` on an already bound `listener` until cancelled; the listener is closed then."""

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(READ_TIMEOUT):
                    scope, body = await _read_request(stream, server)
            except BadRequest:
                await _plain(stream, 400, b"bad request\n")
                return
            except (TimeoutError, anyio.BrokenResourceError, anyio.EndOfStream, OSError):
                return  # a client that hangs up or stalls gets nothing
            await _run(app, scope, body, stream)

    async with listener:
        await listener.serve(handle)


async def _read_request(stream: anyio.abc.SocketStream, server: tuple[str, int]) -> tuple[dict[str, Any], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
        if len(data) > MAX_REQUEST_HEAD:
            raise BadRequest("request head too large")
    head, body = data.split(b"\r\n\r\n", 1)
    request_line, *lines = head.decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(request_line)
    method, target, _version = parts
    headers = []
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise BadRequest(line)
        headers.append((name.strip().lower().encode("latin-1"), value.strip().encode("latin-1")))
    length = next((v for k, v in headers if k == b"content-length"), b"0")
    if not length.isdigit() or int(length) > MAX_REQUEST_BODY:
        raise BadRequest("body length")
    while len(body) < int(length):
        body += await stream.receive()
    path, _, query = target.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(path),
        "raw_path": path.encode("latin-1"),
        "query_string": query.encode("latin-1"),
        "root_path": "",
        "headers": headers,
        "server": server,
        "client": None,
    }
    return scope, body[: int(length)]


async def _run(app: ASGIApp, scope: dict[str, Any], body: bytes, stream: anyio.abc.SocketStream) -> None:
    start: list[Message] = []  # the app's http.response.start, until the head is written
    head_only = scope["method"] == "HEAD"
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await anyio.sleep_forever()  # a hang-up cancels the app (watch_hangup below) instead of saying so
        raise AssertionError  # pragma: no cover

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.append(message)
            return
        if start:  # the first body: the head goes first
            head = start.pop()
            status = int(head["status"])
            lines = "".join(
                f"{bytes(k).decode('latin-1')}: {bytes(v).decode('latin-1')}\r\n"
                for k, v in head.get("headers", ())
                if bytes(k).lower() != b"connection"
            )
            await stream.send(f"HTTP/1.1 {status} {_reason(status)}\r\n{lines}Connection: close\r\n\r\n".encode())
            sent.set()
        chunk = message.get("body", b"")
        if chunk and not head_only:
            await stream.send(chunk)

    async def watch_hangup(done: Callable[[], None]) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            while True:
                await stream.receive()  # one request per connection: anything more is ignored
        done()

    sent = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_hangup, tg.cancel_scope.cancel)
        try:
            await app(scope, receive, send)
        except (anyio.BrokenResourceError, OSError):
            pass  # the client left while we wrote
        except Exception:  # a broken route must not take the endpoint down
            logger.exception("serving %s failed", scope["path"])
            if not sent.is_set():
                await _plain(stream, 500, b"internal error\n")
        tg.cancel_scope.cancel()


_PHRASES = {s.value: s.phrase for s in HTTPStatus}


def _reason(status: int) -> str:
    return _PHRASES.get(status, "")


async def _plain(stream: anyio.abc.SocketStream, status: int, body: bytes) -> None:
    head = (
        f"HTTP/1.1 {status} {_reason(status)}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with contextlib.suppress(anyio.BrokenResourceError, OSError):
        await stream.send(head.encode() + body)
