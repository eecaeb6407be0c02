"""stdio mode's small HTTP server for ASGI apps, over real loopback sockets: what it answers to requests it cannot
read, bodies, HEAD, a streaming response ended by the client hanging up, and a route that raises."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest

from circuitbox.observability import _asgi_server
from circuitbox.observability._asgi_server import serve_asgi
from circuitbox.observability.access import Receive, Scope, Send, read_form, reply

pytestmark = pytest.mark.anyio


class Routes:
    """An ASGI app with one route per behaviour under test."""

    def __init__(self) -> None:
        self.cancelled = anyio.Event()
        self.streaming = anyio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path == "/form":
            form = await read_form(receive)
            await reply(send, 200, repr(form).encode())
        elif path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"connection", b"keep-alive")]})
            await send({"type": "http.response.body", "body": b"fir", "more_body": True})
            await send({"type": "http.response.body", "body": b"st\n", "more_body": True})
            self.streaming.set()
            try:
                while True:
                    await receive()  # the request, then nothing until the client goes away
            except anyio.get_cancelled_exc_class():
                self.cancelled.set()
                raise
        elif path == "/raises":
            raise RuntimeError("a broken route")
        elif path == "/raises-late":
            await send({"type": "http.response.start", "status": 299, "headers": []})
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
            raise RuntimeError("broken halfway")
        elif path == "/client-gone":
            raise anyio.BrokenResourceError
        else:
            await reply(send, 200, f"{scope['method']} {path} {scope['query_string'].decode()}".encode())


@asynccontextmanager
async def serving(app: Routes) -> AsyncIterator[int]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve_asgi, listener, app, ("127.0.0.1", port))
        yield port
        tg.cancel_scope.cancel()


async def exchange(port: int, request: bytes) -> bytes:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        answer = b""
        try:
            while True:
                answer += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return answer


async def test_a_get_with_a_query_and_a_head_are_answered_and_the_connection_closed() -> None:
    async with serving(Routes()) as port:
        with anyio.fail_after(10):
            got = await exchange(port, b"GET /x%20y?a=1 HTTP/1.1\r\nHost: h\r\n\r\n")
            head = await exchange(port, b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close\r\n" in got
    assert got.endswith(b"\r\n\r\nGET /x y a=1")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n") and b"content-length: 8" in head


async def test_a_form_body_arriving_in_pieces_is_read_by_its_content_length() -> None:
    async with serving(Routes()) as port, await anyio.connect_tcp("127.0.0.1", port) as stream:
        with anyio.fail_after(10):
            await stream.send(b"POST /form HTTP/1.1\r\nHost: h\r\nContent-Length: 7\r\n\r\na=1")
            await anyio.wait_all_tasks_blocked()
            await stream.send(b"&b=2")
            answer = b""
            with pytest.raises(anyio.EndOfStream):
                while True:
                    answer += await stream.receive()
    assert answer.endswith(b"{'a': '1', 'b': '2'}")


@pytest.mark.parametrize(
    "request_",
    [
        b"NONSENSE\r\n\r\n",
        b"GET / SPDY/3\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: lots\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: " + b"a" * (_asgi_server.MAX_REQUEST_HEAD + 10) + b"\r\n\r\n",
    ],
)
async def test_a_request_it_cannot_read_gets_400(request_: bytes) -> None:
    async with serving(Routes()) as port:
        with anyio.fail_after(10):
            answer = await exchange(port, request_)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")


async def test_a_client_that_stalls_or_hangs_up_before_its_request_ends_gets_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_asgi_server, "READ_TIMEOUT", 0)
    async with serving(Routes()) as port:
        with anyio.fail_after(10):
            assert await exchange(port, b"GET / HTTP/1.1\r\n") == b""
    monkeypatch.undo()
    async with serving(Routes()) as port, await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(b"GET / HTT")
        await stream.send_eof()
        with anyio.fail_after(10), pytest.raises(anyio.EndOfStream):
            await stream.receive()


async def test_a_streaming_response_goes_out_as_sent_and_ends_when_the_client_hangs_up() -> None:
    app = Routes()
    async with serving(app) as port:
        with anyio.fail_after(10):
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                await stream.send(b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n")
                answer = b""
                while not answer.endswith(b"first\n"):
                    answer += await stream.receive()
                await app.streaming.wait()
            await app.cancelled.wait()
    assert answer.count(b"onnection: ") == 1 and b"Connection: close" in answer  # the app's keep-alive dropped


async def test_a_route_that_raises_gets_500_before_its_answer_and_a_cut_answer_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serving(Routes()) as port:
        with anyio.fail_after(10):
            early = await exchange(port, b"GET /raises HTTP/1.1\r\n\r\n")
            late = await exchange(port, b"GET /raises-late HTTP/1.1\r\n\r\n")
            gone = await exchange(port, b"GET /client-gone HTTP/1.1\r\n\r\n")
    assert early.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert late.startswith(b"HTTP/1.1 299 \r\n") and late.endswith(b"partial")
    assert gone == b""
    assert [r.getMessage() for r in caplog.records] == ["serving /raises failed", "serving /raises-late failed"]


async def test_circuitbox_status_refuses_an_answer_that_is_not_a_status_document() -> None:
    from circuitbox.commands.status import fetch_status

    async def not_status(scope: Scope, receive: Receive, send: Send) -> None:
        await reply(send, 200, b"[1, 2]", "application/json")

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve_asgi, listener, not_status, ("127.0.0.1", port))
        with pytest.raises(RuntimeError, match="not a circuitbox status document"):
            await fetch_status(f"http://127.0.0.1:{port}/mcp", None, 10)
        tg.cancel_scope.cancel()


async def test_circuitbox_status_says_why_it_cannot_reach_an_instance() -> None:
    from tests.net import free_port

    done = await anyio.run_process(
        [sys.executable, "-m", "circuitbox", "status", "--url", f"http://127.0.0.1:{free_port()}"], check=False
    )
    assert done.returncode == 1 and "cannot read status from" in done.stderr.decode()
    assert b"Traceback" not in done.stderr


def test_without_metrics_the_status_routes_are_served_and_metrics_is_not(tmp_path: Path) -> None:
    from circuitbox.config.load import load_config
    from circuitbox.server.app import build_proxy, observability_routes
    from tests.proxy.harness import chaos, write_config

    proxy, collector = build_proxy(load_config(write_config(tmp_path, {"mcpServers": {"c": chaos()}})), metrics=False)
    paths = [getattr(route, "path", "") for route in observability_routes(proxy, collector)]
    assert collector is None and "/metrics" not in paths and {"/status", "/status/events", "/healthz"} <= set(paths)
