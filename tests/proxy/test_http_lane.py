"""The HTTP upstream's fast lane (server/http_lane.py): the proxy's streamable HTTP app runs in-process and is driven
by raw ASGI messages, so that what the lane sends can be compared, message for message and byte for byte, with what
the SDK's transport sends for the same request (the lane switched off); its downstream is a real chaos server
process. The real-process test at the end runs `circuitbox serve --transport http` with the SDK's own client."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.server.transport_security import TransportSecuritySettings

from circuitbox.breakers import CircuitState
from circuitbox.config.load import parse_config
from circuitbox.server import http_lane
from circuitbox.server.app import build_proxy
from circuitbox.server.http_lane import HTTPLane
from circuitbox.server.http_sessions import mcp_http_app
from circuitbox.server.proxy import Proxy
from tests.net import free_port
from tests.proxy.harness import chaos, running_process, write_config
from tests.proxy.test_http_front_end import serve_args

pytestmark = pytest.mark.anyio

TOOLS = ("echo=healthy", "boom=error", "slow=latency:0.6", "hang=hang")
HOST = "127.0.0.1:8765"
SECURITY = TransportSecuritySettings(
    enable_dns_rebinding_protection=True, allowed_hosts=["127.0.0.1:*"], allowed_origins=["http://127.0.0.1:*"]
)
ACCEPT = "application/json, text/event-stream"


class Exchange:
    """One HTTP request to the app: the ASGI messages it sent back, and a hang-up the test can make."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.started = anyio.Event()
        self.hang_up = anyio.Event()
        self.done = anyio.Event()

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.sent[0]["headers"]}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])

    def events(self) -> list[dict[str, Any]]:
        text = self.body.decode()
        return [json.loads(line[len("data: ") :]) for line in text.split("\r\n") if line.startswith("data: ")]


class App:
    """The proxy's MCP endpoint, as `http_app` builds it (less the access guard and malformed-message answers in
    front, which the lane sits behind), with its lane."""

    def __init__(self, app: Any, proxy: Proxy, lane: HTTPLane) -> None:
        self.app = app
        self.proxy = proxy
        self.lane = lane
        self.manager = app.routes[0].app.session_manager

    async def post(self, body: Any, session: str | None = None, **headers: str) -> Exchange:
        async with anyio.create_task_group() as tg:
            exchange = self.start(body, session, tg, **headers)
            with anyio.fail_after(30):
                await exchange.done.wait()
        return exchange

    def start(self, body: Any, session: str | None, tg: Any, **headers: str) -> Exchange:
        """The request, sent in a task of `tg`; its exchange fills as the app answers."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        head = {"host": HOST, "accept": ACCEPT, "content-type": "application/json", **headers}
        if session is not None:
            head["mcp-session-id"] = session
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/mcp",
            "raw_path": b"/mcp",
            "query_string": b"",
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in head.items() if v],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8765),
        }
        exchange = Exchange()
        read = False

        async def receive() -> dict[str, Any]:
            nonlocal read
            if not read:
                read = True
                return {"type": "http.request", "body": raw, "more_body": False}
            await exchange.hang_up.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            exchange.sent.append(message)
            if message["type"] == "http.response.start":
                exchange.started.set()

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            finally:
                exchange.done.set()
                exchange.hang_up.set()  # after the response, a server's receive() reports the end

        tg.start_soon(run)
        return exchange

    async def open_session(self, version: str = "2025-11-25", capabilities: dict[str, Any] | None = None) -> str:
        info = {"name": "raw", "version": "0"}
        params = {"protocolVersion": version, "capabilities": capabilities or {}, "clientInfo": info}
        opened = await self.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params})
        assert opened.status == 200, opened.body
        session = opened.headers["mcp-session-id"]
        initialized = await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
        assert initialized.status == 202
        return session

    async def call(self, session: str, request_id: Any, name: str, arguments: Any = None, **headers: str) -> Exchange:
        params = {"name": name, "arguments": {} if arguments is None else arguments}
        request = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
        return await self.post(request, session, **headers)

    async def both_ways(self, session: str, request: dict[str, Any]) -> tuple[Exchange, Exchange]:
        """The same request answered by the SDK's transport (lane off), then with the lane on."""
        self.lane.enabled = False
        by_sdk = await self.post(request, session)
        self.lane.enabled = True
        return by_sdk, await self.post(request, session)


@asynccontextmanager
async def lane_app(*tools: str, idle_timeout: float = 600, **server: Any) -> AsyncIterator[App]:
    entry = {**chaos(*(tools or TOOLS)), "namespace": "", **server}
    proxy, _ = build_proxy(parse_config({"environment": "testing", "mcpServers": {"d": entry}}), metrics=False)
    lane = HTTPLane(proxy)
    async with anyio.create_task_group() as tg:
        await proxy.start(tg)
        app = mcp_http_app(
            proxy.build_server(),
            path="/mcp",
            security=SECURITY,
            max_sessions=100,
            session_idle_timeout=idle_timeout,
            lane=lane,
        )
        async with app.router.lifespan_context(app):
            await proxy.wait_first_attempts()
            yield App(app, proxy, lane)
        tg.cancel_scope.cancel()


def uncounted(exchange: Exchange) -> list[Any]:
    """The ASGI messages sent, with the chaos server's call counter (the one thing two calls' answers differ in)
    blanked in the body."""
    return [
        {**m, "body": re.sub(rb'\\?"call\\?": ?\d+', b'"call": N', m["body"])} if "body" in m else m
        for m in exchange.sent
    ]


def tool_call(request_id: Any, name: str, arguments: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


async def test_a_call_is_answered_by_the_lane_with_the_bytes_the_sdk_s_transport_sends() -> None:
    async with lane_app() as app:
        session = await app.open_session()
        by_sdk, by_lane = await app.both_ways(session, tool_call(7, "echo", {"message": "same"}))
        assert app.lane.taken == 1
        assert uncounted(by_lane) == uncounted(by_sdk)  # headers, framing, event, end: message for message
        assert [m["type"] for m in by_lane.sent] == ["http.response.start", "http.response.body", "http.response.body"]
        assert by_lane.headers["content-type"].startswith("text/event-stream")
        assert by_lane.headers["mcp-session-id"] == session
        assert by_lane.events()[0]["result"]["structuredContent"]["arguments"]["message"] == "same"
        # A string id and an isError result are framed the same way too.
        by_sdk, by_lane = await app.both_ways(session, tool_call("s", "boom", {}))
        assert app.lane.taken == 2
        assert by_lane.sent == by_sdk.sent
        assert by_lane.events()[0]["result"]["isError"] is True


async def test_a_call_its_open_breaker_rejects_is_answered_by_the_lane_as_by_the_sdk() -> None:
    async with lane_app(breaker={"failure_threshold": 1, "timeout": 600}) as app:
        session = await app.open_session()
        await app.call(session, 0, "boom")  # opens its circuit
        assert app.proxy.breaker("d", "boom").state is CircuitState.OPEN
        by_sdk, by_lane = await app.both_ways(session, tool_call(1, "boom", {}))
        assert app.lane.taken == 2
        # The same answer but for the seconds to the next probe, which count down between the two.
        seconds = re.compile(rb"\d+\.\d+")
        assert [seconds.sub(b"S", m.get("body", b"")) for m in by_lane.sent] == [
            seconds.sub(b"S", m.get("body", b"")) for m in by_sdk.sent
        ]
        assert by_lane.sent[0] == by_sdk.sent[0]
        result = by_lane.events()[0]["result"]
        assert result["isError"] is True and result["_meta"]["circuitbox/breaker"]["state"] == "open"
        app.proxy.breaker("d", "echo").force(CircuitState.FORCED_OPEN)
        by_sdk, by_lane = await app.both_ways(session, tool_call(2, "echo", {"message": "x"}))
        assert app.lane.taken == 3
        assert by_lane.sent == by_sdk.sent


async def test_an_older_client_gets_its_version_s_shape_from_the_lane() -> None:
    async with lane_app() as app:
        session = await app.open_session("2025-03-26")
        by_sdk, by_lane = await app.both_ways(session, tool_call(1, "echo", {"message": "x"}))
        assert app.lane.taken == 1
        assert uncounted(by_lane) == uncounted(by_sdk)
        assert by_lane.events()[0]["result"]["content"] == [{"type": "text", "text": "x"}]


@pytest.mark.parametrize(
    "request_",
    [
        tool_call(1, "nope", {}),  # unknown tool
        tool_call(1, "echo", ["not", "an", "object"]),  # bad params
        tool_call(1, "circuit_status", {}),  # circuitbox's own tool
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "task": {}}},
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "_meta": {"progressToken": 1}}},
        {"jsonrpc": "2.0", "id": None, "method": "tools/call", "params": {"name": "echo"}},  # not a valid request
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call"',  # not JSON
        [tool_call(1, "echo", {})],  # a batch
    ],
)
async def test_requests_the_lane_is_not_sure_of_go_to_the_sdk_with_their_body(request_: Any) -> None:
    async with lane_app() as app:
        session = await app.open_session()
        by_sdk, by_lane = await app.both_ways(session, request_)
        assert app.lane.taken == 0
        assert uncounted(by_lane) == uncounted(by_sdk)
        assert by_lane.status in (200, 202, 400)  # 202 and 400 become the spec's answers in front (malformed.py)


async def test_the_transport_s_own_checks_still_answer_before_the_lane_takes_anything() -> None:
    async with lane_app() as app:
        session = await app.open_session()
        assert (await app.call(session, 1, "echo", origin="http://evil.example")).status == 403
        assert (await app.call(session, 2, "echo", host="evil.example:8765")).status == 421
        assert (await app.call(session, 3, "echo", accept="application/json")).status == 406
        assert (await app.call(session, 4, "echo", **{"content-type": "text/plain"})).status == 400
        assert (await app.call("0" * 32, 5, "echo")).status == 404  # no such session
        assert app.lane.taken == 0
        assert (await app.call(session, 6, "echo", origin="http://127.0.0.1:8765")).status == 200
        assert app.lane.taken == 1


async def test_a_client_that_declared_sampling_elicitation_or_roots_is_served_by_the_sdk() -> None:
    async with lane_app() as app:
        for declared in ({"sampling": {}}, {"elicitation": {}}, {"roots": {}}):
            session = await app.open_session(capabilities=declared)
            answer = await app.call(session, 1, "echo", {"message": "x"})
            assert answer.events()[0]["result"]["structuredContent"]["arguments"]["message"] == "x"
        assert app.lane.taken == 0


async def test_a_per_client_connection_is_the_sdk_s_path_to_open() -> None:
    async with lane_app(session="per_client") as app:
        session = await app.open_session()
        assert (await app.call(session, 1, "echo", {"message": "x"})).status == 200
        assert app.lane.taken == 0


async def test_a_lane_call_holds_its_session_open_and_the_idle_countdown_restarts_after_it() -> None:
    async with lane_app(idle_timeout=30) as app, anyio.create_task_group() as tg:
        session = await app.open_session()
        transport = app.manager._server_instances[session]
        request = tool_call(1, "slow", {})
        exchange = app.start(request, session, tg)
        with anyio.fail_after(30):
            await exchange.started.wait()
        assert transport.idle_scope.deadline == float("inf")  # busy: neither idled out nor evicted
        with anyio.fail_after(30):
            await exchange.done.wait()
        assert app.lane.taken == 1
        assert anyio.current_time() < transport.idle_scope.deadline < anyio.current_time() + 30


async def test_keep_alive_comments_go_out_while_a_call_runs_as_sse_starlette_sends_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_lane, "PING_INTERVAL", 0.1)
    async with lane_app() as app:
        session = await app.open_session()
        exchange = await app.call(session, 1, "slow")
        assert app.lane.taken == 1
        chunks = [m["body"] for m in exchange.sent[1:]]
        assert re.fullmatch(rb": ping - \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+\+00:00\r\n\r\n", chunks[0])
        assert chunks[-2].startswith(b"event: message\r\ndata: ") and chunks[-1] == b""


async def test_a_client_hanging_up_mid_call_cancels_the_call() -> None:
    async with lane_app() as app, anyio.create_task_group() as tg:
        session = await app.open_session()
        exchange = app.start(tool_call(1, "hang", {}), session, tg)
        with anyio.fail_after(30):
            await exchange.started.wait()
            while not app.proxy.drain.in_flight:  # the call reached the guard
                await anyio.sleep(0.01)
        exchange.hang_up.set()
        with anyio.fail_after(30):
            await exchange.done.wait()
        assert [m["type"] for m in exchange.sent] == ["http.response.start"]  # nothing after a hang-up
        assert app.proxy.drain.in_flight == 0
        assert app.proxy.breaker("d", "hang").state is CircuitState.CLOSED  # a cancelled call counts neither way
        assert (await app.call(session, 2, "echo", {"message": "after"})).status == 200


async def test_a_session_deleted_mid_call_gets_the_end_of_its_stream_without_the_answer() -> None:
    async with lane_app() as app, anyio.create_task_group() as tg:
        session = await app.open_session()
        exchange = app.start(tool_call(1, "slow", {}), session, tg)
        with anyio.fail_after(30):
            await exchange.started.wait()
        await app.manager._server_instances[session].terminate()
        with anyio.fail_after(30):
            await exchange.done.wait()
        assert exchange.body == b""
        assert (await app.call(session, 2, "echo")).status == 404


async def test_through_serve_two_sdk_clients_call_at_once_and_idle_and_deleted_sessions_end(tmp_path: Path) -> None:
    idle = 1.0
    config = write_config(
        tmp_path,
        {"http": {"session_idle_timeout": idle}, "mcpServers": {"c": {**chaos("echo=healthy"), "namespace": ""}}},
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    async with running_process(serve_args(config, port), port=port):

        async def calls(client: Client, name: str) -> None:
            for i in range(50):
                result = await client.call_tool("echo", {"message": f"{name}-{i}"})
                assert not result.is_error and result.structured_content["arguments"]["message"] == f"{name}-{i}"

        with anyio.fail_after(120):
            async with (
                Client(url, mode="legacy") as first,
                Client(url, mode="legacy") as second,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(calls, first, "a")
                tg.start_soon(calls, second, "b")
        # Closed by its client (DELETE) or idled out: its id answers 404 either way.
        headers = {"Accept": ACCEPT, "Content-Type": "application/json"}
        initialize = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "r", "version": "0"},
            },
        }
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        async with httpx2.AsyncClient(timeout=30) as raw:
            sessions = []
            for _ in range(2):
                opened = await raw.post(url, json=initialize, headers=headers)
                sid = opened.headers["mcp-session-id"]
                await raw.post(url, json=initialized, headers={**headers, "mcp-session-id": sid})
                answer = await raw.post(
                    url, json=tool_call(2, "echo", {"message": "m"}), headers={**headers, "mcp-session-id": sid}
                )
                assert answer.status_code == 200 and '"message":"m"' in answer.text.replace(" ", "")
                sessions.append(sid)
            deleted = await raw.delete(url, headers={**headers, "mcp-session-id": sessions[0]})
            assert deleted.status_code == 200
            after = tool_call(3, "echo", {"message": "m"})
            assert (
                await raw.post(url, json=after, headers={**headers, "mcp-session-id": sessions[0]})
            ).status_code == 404
            # Idle close is the server's own timer: nothing to wait on from here (a request would restart it).
            await anyio.sleep(idle * 3)
            assert (
                await raw.post(url, json=after, headers={**headers, "mcp-session-id": sessions[1]})
            ).status_code == 404
