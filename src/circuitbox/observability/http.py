"""Serving a CollectorRegistry at /metrics: an ASGI app for the proxy's HTTP listener, and a tiny standalone
server for stdio mode's --metrics-port.

The standalone server is a minimal HTTP/1.1 responder on anyio rather than uvicorn: `uvicorn.Server.serve()`
takes over SIGINT/SIGTERM for the whole process, runs only on asyncio and skips its shutdown when cancelled,
while a scrape endpoint needs nothing but GET with `Connection: close`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import anyio
import anyio.abc
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

if TYPE_CHECKING:
    from starlette.routing import Route

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

logger = logging.getLogger("circuitbox.observability")

_MAX_REQUEST_HEAD = 16 * 1024
_READ_TIMEOUT = 10.0


def render(registry: CollectorRegistry, accept: str | None, names: list[str] | None = None) -> tuple[bytes, str]:
    """The exposition for one scrape: OpenMetrics when `accept` asks for it, else the text format 0.0.4.

    `names` (the `name[]` query parameters Prometheus' federation and debugging use) restricts the output
    to those sample names.
    """
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry.restricted_registry(names) if names else registry), content_type


def _names(query: str) -> list[str]:
    return [v for k, v in parse_qsl(query) if k == "name[]"]


class MetricsApp:
    """An ASGI app serving a registry on GET/HEAD at whatever path it is mounted on.

    A class, not a function, so that Starlette's `Route(path, MetricsApp(...))` treats it as an ASGI app
    rather than as a request -> response endpoint.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan and websockets: nothing to do
            return
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await _asgi_reply(send, 405, b"method not allowed\n", "text/plain; charset=utf-8", allow=True)
            return
        accept = next(
            (v.decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == b"accept"),
            None,
        )
        query = scope.get("query_string", b"").decode("latin-1")
        body, content_type = render(self.registry, accept, _names(query))
        await _asgi_reply(send, 200, b"" if method == "HEAD" else body, content_type, length=len(body))


def metrics_app(registry: CollectorRegistry) -> MetricsApp:
    """The ASGI app for the proxy's HTTP listener: `Route("/metrics", metrics_app(registry))`."""
    return MetricsApp(registry)


def metrics_route(registry: CollectorRegistry, path: str = "/metrics") -> Route:
    """A Starlette `Route` for the proxy's HTTP app (imported lazily: Starlette comes with mcp)."""
    from starlette.routing import Route

    return Route(path, endpoint=MetricsApp(registry), methods=["GET", "HEAD"])


async def _asgi_reply(
    send: Send, status: int, body: bytes, content_type: str, *, length: int | None = None, allow: bool = False
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body) if length is None else length).encode()),
    ]
    if allow:
        headers.append((b"allow", b"GET, HEAD"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def start_metrics_server(
    registry: CollectorRegistry,
    host: str = "127.0.0.1",
    port: int = 9464,
    *,
    path: str = "/metrics",
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `registry` at http://host:port/path until cancelled; only `host` is bound (127.0.0.1 by default).

    Use it with `await task_group.start(...)`: it reports the bound port (useful with `port=0`) once the
    socket listens. Runs on asyncio and trio.
    """
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port, reuse_port=False)
    async with listener:
        bound = listener.extra(anyio.abc.SocketAttribute.local_port)
        task_status.started(bound)

        async def handle(stream: anyio.abc.SocketStream) -> None:
            async with stream:
                try:
                    with anyio.fail_after(_READ_TIMEOUT):
                        head = await _read_head(stream)
                except (TimeoutError, anyio.BrokenResourceError, anyio.EndOfStream, ValueError, OSError):
                    return  # a client that hangs up, stalls or sends garbage gets nothing
                try:
                    reply = _respond(registry, head, path)
                except Exception:  # a broken collector must not take the endpoint down
                    logger.exception("rendering /metrics failed")
                    reply = _http(500, b"internal error\n", "text/plain; charset=utf-8")
                try:
                    await stream.send(reply)
                except (anyio.BrokenResourceError, OSError):
                    return

        await listener.serve(handle)


async def _read_head(stream: anyio.abc.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
        if len(data) > _MAX_REQUEST_HEAD:
            raise ValueError("request head too large")
    return data.split(b"\r\n\r\n", 1)[0]


def _respond(registry: CollectorRegistry, head: bytes, path: str) -> bytes:
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3:
        return _http(400, b"bad request\n", "text/plain; charset=utf-8")
    method, target, _version = parts
    target_path, _, query = target.partition("?")
    if target_path != path:
        return _http(404, b"not found; metrics are at " + path.encode() + b"\n", "text/plain; charset=utf-8")
    if method not in ("GET", "HEAD"):
        return _http(405, b"method not allowed\n", "text/plain; charset=utf-8", extra="Allow: GET, HEAD\r\n")
    accept = None
    for line in header_lines:
        name, _, value = line.partition(":")
        if name.strip().lower() == "accept":
            accept = value.strip()
    body, content_type = render(registry, accept, _names(query))
    return _http(200, body, content_type, head_only=method == "HEAD")


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
}


def _http(status: int, body: bytes, content_type: str, *, extra: str = "", head_only: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n"
    )
    return head.encode("latin-1") + (b"" if head_only else body)
