"""The lean HTTP/1.1 transport (server/http11.py) under an httpx client, against a scripted TCP server: each test
says what the server answers, byte for byte, and checks what the client reads and which connections it used."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import httpx2
import pytest

from circuitbox.server import http11
from circuitbox.server.http11 import LeanHTTPTransport
from circuitbox.server.transports import http_client

pytestmark = pytest.mark.anyio

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    b"6;ext=1\r\nevent:\r\n3\r\n a\n\r\n0\r\nx-trailer: 1\r\n\r\n"
)
CLOSE = object()  # in a script: the server closes the connection there
HANG = object()  # in a script: the server reads the request and never answers


class Server:
    """Answers each request read with the next item of `script` (bytes, CLOSE or HANG); records the requests
    (head and body as read) and the connection each came on."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.requests: list[tuple[int, bytes]] = []
        self.connections = 0
        self.port = 0
        self.ended = anyio.Event()  # a connection has been closed by the server

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        self.connections += 1
        number = self.connections
        buffer = b""
        try:
            async with stream:
                await self._serve(stream, number, buffer)
        finally:
            self.ended.set()

    async def _serve(self, stream: anyio.abc.SocketStream, number: int, buffer: bytes) -> None:
        while self.script:
            try:
                while b"\r\n\r\n" not in buffer:
                    buffer += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
            while len(buffer) < length:
                buffer += await stream.receive()
            body, buffer = buffer[:length], buffer[length:]
            self.requests.append((number, head + b"\r\n\r\n" + body))
            answer = self.script.pop(0)
            if answer is CLOSE:
                return
            if answer is HANG:
                await anyio.sleep_forever()
            await stream.send(answer)
            if self.script and self.script[0] is CLOSE:
                self.script.pop(0)
                return


@asynccontextmanager
async def serving(*script: Any) -> AsyncIterator[tuple[Server, httpx2.AsyncClient]]:
    server = Server(list(script))
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    server.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server.handle)
        async with httpx2.AsyncClient(
            base_url=f"http://127.0.0.1:{server.port}", transport=LeanHTTPTransport(httpx2.AsyncHTTPTransport())
        ) as client:
            with anyio.fail_after(10):
                yield server, client
        tg.cancel_scope.cancel()


async def test_a_post_goes_out_as_httpx_builds_it_and_its_connection_serves_the_next_request() -> None:
    async with serving(OK, OK) as (server, client):
        first = await client.post("/mcp", content=b'{"a":1}', headers={"mcp-session-id": "s"})
        second = await client.get("/mcp")
    assert (first.status_code, first.json(), first.http_version, first.reason_phrase) == (200, {}, "HTTP/1.1", "OK")
    assert second.json() == {}
    assert server.connections == 1
    head = server.requests[0][1].lower().split(b"\r\n")
    assert head[0] == b"post /mcp http/1.1"  # lowered, as every line here
    assert b"mcp-session-id: s" in head and b"content-length: 7" in head and head[-1] == b'{"a":1}'


async def test_a_chunked_body_is_decoded_and_its_trailer_read_so_the_connection_is_reused() -> None:
    async with serving(CHUNKED, OK) as (server, client):
        async with client.stream("POST", "/mcp", content=b"{}") as response:
            body = b"".join([chunk async for chunk in response.aiter_raw()])
        assert body == b"event: a\n"
        assert (await client.post("/mcp", content=b"{}")).json() == {}
    assert server.connections == 1


async def test_informational_answers_are_skipped_and_a_body_to_the_connection_s_end_is_read_to_it() -> None:
    untold = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it"
    async with serving(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + untold, CLOSE, OK) as (server, client):
        response = await client.post("/mcp", content=b"{}")
        assert (response.status_code, response.text) == (200, "all of it")
        assert (await client.post("/mcp", content=b"{}")).json() == {}
    assert server.connections == 2


@pytest.mark.parametrize("framing", [b"connection: close\r\ncontent-length: 2", b"content-length: 2"])
async def test_a_connection_the_server_closes_or_said_it_would_close_is_not_reused(framing: bytes) -> None:
    answer = b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n\r\n{}"
    async with serving(answer, CLOSE, OK) as (server, client):
        assert (await client.post("/mcp", content=b"{}")).json() == {}
        await server.ended.wait()  # on loopback its end has reached our socket once the server's close returned
        assert (await client.post("/mcp", content=b"{}")).json() == {}
    assert server.connections == 2


async def test_a_body_left_unread_closes_its_connection() -> None:
    async with serving(CHUNKED, OK) as (server, client):
        async with client.stream("POST", "/mcp", content=b"{}") as response:
            assert response.status_code == 200  # not a byte of the body read
        assert (await client.post("/mcp", content=b"{}")).json() == {}
    assert server.connections == 2


async def test_an_idle_connection_past_the_keepalive_expiry_is_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    async with serving(OK, OK) as (server, client):
        await client.post("/mcp", content=b"{}")
        monkeypatch.setattr(http11, "KEEPALIVE_EXPIRY", 0)
        await client.post("/mcp", content=b"{}")
    assert server.connections == 2


@pytest.mark.parametrize(
    ("script", "error"),
    [
        ([CLOSE], httpx2.RemoteProtocolError),
        ([b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{}", CLOSE], httpx2.RemoteProtocolError),
        ([b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"], httpx2.RemoteProtocolError),
        ([b"SMTP ready\r\n\r\n"], httpx2.RemoteProtocolError),
        ([b"HTTP/1.1 200 OK\r\n folded: header\r\n\r\n"], httpx2.RemoteProtocolError),
        ([b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n{}"], httpx2.RemoteProtocolError),
        ([HANG], httpx2.ReadTimeout),
    ],
)
async def test_a_server_that_breaks_http_fails_the_request_with_httpx_s_error(script: list[Any], error: type) -> None:
    async with serving(*script) as (_, client):
        with pytest.raises(error):
            await client.post("/mcp", content=b"{}", timeout=httpx2.Timeout(5, read=0.2))


async def test_a_refused_connection_is_a_connect_error() -> None:
    async with serving() as (server, client):
        port = server.port
    async with httpx2.AsyncClient(transport=LeanHTTPTransport(httpx2.AsyncHTTPTransport())) as client:
        with pytest.raises(httpx2.ConnectError):
            await client.post(f"http://127.0.0.1:{port}/mcp", content=b"{}")


class Recording(httpx2.AsyncBaseTransport):
    def __init__(self) -> None:
        self.seen: list[httpx2.Request] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.seen.append(request)
        return httpx2.Response(204)


@pytest.mark.parametrize(
    "send",
    [
        lambda c: c.post("https://example.test/mcp", content=b"{}"),
        lambda c: c.post("http://example.test/mcp", content=_chunks()),  # no length known: chunked upload
        lambda c: c.post("http://example.test/mcp", content=b"{}", extensions={"sni_hostname": "other.test"}),
    ],
)
async def test_what_the_lean_transport_does_not_speak_goes_to_httpx_s_own(send: Callable[[Any], Any]) -> None:
    inner = Recording()
    async with httpx2.AsyncClient(transport=LeanHTTPTransport(inner)) as client:
        assert (await send(client)).status_code == 204
    assert len(inner.seen) == 1


async def _chunks() -> AsyncIterator[bytes]:
    yield b"{}"


async def test_the_proxy_s_http_client_sends_plain_http_over_the_lean_transport() -> None:
    async with serving(OK) as (server, _), http_client() as client:
        assert (await client.post(f"http://127.0.0.1:{server.port}/mcp", content=b"{}")).json() == {}
        lean = client._transport._inner
        assert isinstance(lean, LeanHTTPTransport) and lean._idle[("127.0.0.1", server.port)]


@pytest.mark.parametrize("header", [{"x-key": "secret\r\nx-other: 1"}, {"x-key": "a\nb"}, {"x key": "v"}])
async def test_a_header_that_would_break_the_head_is_refused_before_anything_is_sent(header: dict[str, str]) -> None:
    async with serving(OK) as (server, client):
        with pytest.raises(httpx2.LocalProtocolError, match="Illegal header"):
            await client.post("/mcp", content=b"{}", headers=header)
        assert (await client.post("/mcp", content=b"{}")).json() == {}  # its slot was not lost either
    assert server.requests[0][1].count(b"x-other") == 0 and len(server.requests) == 1
