"""Unit tests of the modern lane's own logic: how it reads a downstream's answer (JSON, an event stream, garbage),
and the seal on the requestState it hands out. The real round trip is in test_modern_lane.py."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, cast

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import MCPError
from mcp.server.context import ServerRequestContext

from circuitbox.breakers.testing import FakeClock
from circuitbox.config.load import ServerConfig, parse_config
from circuitbox.server import modern_lane
from circuitbox.server.downstream import Downstream, Listing
from circuitbox.server.modern_lane import (
    HttpWire,
    ModernLane,
    ModernRequest,
    StateSeal,
    StdioModernLane,
    open_modern_lane,
)
from circuitbox.server.modern_stdio import StdioWire
from tests.net import free_port

pytestmark = pytest.mark.anyio

CLIENT = ModernRequest(meta={types.PROTOCOL_VERSION_META_KEY: "2026-07-28"}, input_responses=None, request_state=None)
CALL = types.CallToolRequest(params=types.CallToolRequestParams(name="region", arguments={"region": "eu"}))
SCHEMA = {"type": "object", "properties": {"region": {"type": "string", "x-mcp-header": "Region"}}}


def lane(answer: Callable[[httpx2.Request], httpx2.Response]) -> ModernLane:
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(answer))
    return ModernLane("srv", HttpWire("srv", "http://127.0.0.1:1/mcp", client, 1 << 20))


def events(*messages: Any) -> httpx2.Response:
    body = "".join(f"data: {json.dumps(m) if m is not None else ''}\n\n" for m in messages)
    return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)


async def test_an_event_stream_answer_relays_its_progress_and_log_messages_and_skips_what_it_does_not_relay() -> None:
    seen: list[httpx2.Request] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        sent = json.loads(request.content)
        token = sent["params"]["_meta"]["progressToken"]
        return events(
            None,  # a priming event
            {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "other", "progress": 9}},
            {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "x"}},
            {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": token, "progress": 1}},
            {"jsonrpc": "2.0", "id": sent["id"], "result": {"content": [{"type": "text", "text": "eu"}]}},
        )

    progress: list[float] = []
    logged: list[dict[str, Any]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async def on_log(params: dict[str, Any]) -> None:
        logged.append(params)

    result = await lane(answer).request(CALL, types.CallToolResult, on_progress, CLIENT, SCHEMA, on_log)
    assert isinstance(result, types.CallToolResult) and "eu" in str(result.content)
    assert progress == [1]
    assert logged == [{"level": "info", "data": "x"}]  # the request's log messages, for its client
    (request,) = seen
    assert request.headers["mcp-name"] == "region" and request.headers["mcp-param-region"] == "eu"
    assert request.headers["mcp-protocol-version"] == "2026-07-28" and request.headers["mcp-method"] == "tools/call"


async def test_a_downstream_error_keeps_its_code_and_data() -> None:
    def answer(request: httpx2.Request) -> httpx2.Response:
        error = {"code": -32021, "message": "needs sampling", "data": {"requiredCapabilities": {"sampling": {}}}}
        return httpx2.Response(400, json={"jsonrpc": "2.0", "id": json.loads(request.content)["id"], "error": error})

    with pytest.raises(MCPError) as raised:
        await lane(answer).request(CALL, types.CallToolResult, None, CLIENT)
    assert raised.value.error.code == -32021 and raised.value.error.data == {"requiredCapabilities": {"sampling": {}}}


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (lambda _: httpx2.Response(400, text="Bad Request: missing session"), types.INTERNAL_ERROR),
        (lambda _: httpx2.Response(200, json={"jsonrpc": "2.0", "id": 1}), types.INTERNAL_ERROR),
        (lambda _: httpx2.Response(200, json=[1, 2]), types.INTERNAL_ERROR),
        (lambda _: events(None), types.CONNECTION_CLOSED),
        (lambda _: events("not an object"), types.CONNECTION_CLOSED),
    ],
    ids=["not json", "no result", "not an answer", "stream ends unanswered", "stream of garbage"],
)
async def test_an_answer_that_is_not_json_rpc_is_an_error_never_a_result(
    answer: Callable[[httpx2.Request], httpx2.Response], code: int
) -> None:
    with pytest.raises(MCPError) as raised:
        await lane(answer).request(CALL, types.CallToolResult, None, CLIENT)
    assert raised.value.error.code == code


async def test_a_connection_that_fails_is_a_closed_connection() -> None:
    def answer(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("All connection attempts failed", request=request)

    with pytest.raises(MCPError) as raised:
        await lane(answer).request(CALL, types.CallToolResult, None, CLIENT)
    assert raised.value.error.code == types.CONNECTION_CLOSED
    assert not await lane(answer).discover()  # and such a server is reached in the handshake era only


async def test_discover_says_whether_the_server_speaks_the_era() -> None:
    def speaks(versions: list[str]) -> Callable[[httpx2.Request], httpx2.Response]:
        def answer(request: httpx2.Request) -> httpx2.Response:
            result = {"supportedVersions": versions, "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}}
            request_id = json.loads(request.content)["id"]
            return httpx2.Response(200, json={"jsonrpc": "2.0", "id": request_id, "result": result})

        return answer

    assert await lane(speaks(["2025-11-25", "2026-07-28"])).discover()
    assert not await lane(speaks(["2025-11-25"])).discover()


async def test_the_requeststate_handed_out_is_sealed_and_comes_back_as_the_servers_own() -> None:
    sent: list[dict[str, Any]] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        sent.append(body["params"])
        needed = {"resultType": "input_required", "inputRequests": {}, "requestState": "server-state"}
        return httpx2.Response(200, json={"jsonrpc": "2.0", "id": body["id"], "result": needed})

    first = await lane(answer).request(CALL, types.CallToolResult, None, CLIENT)
    assert isinstance(first, types.InputRequiredResult) and first.request_state not in (None, "server-state")
    assert first.request_state is not None
    retry = ModernRequest(CLIENT.meta, {"k": {"action": "accept"}}, first.request_state)
    await lane(answer).request(CALL, types.CallToolResult, None, retry)
    assert sent[1]["requestState"] == "server-state" and sent[1]["inputResponses"] == {"k": {"action": "accept"}}
    other = types.CallToolRequest(params=types.CallToolRequestParams(name="other", arguments={}))
    with pytest.raises(MCPError) as raised:  # issued for another tool
        await lane(answer).request(other, types.CallToolResult, None, retry)
    assert raised.value.error.code == types.INVALID_PARAMS and len(sent) == 2


@pytest.mark.parametrize("token", ["", "nodot", "!!!.abc", "e30.abc"])
async def test_a_forged_or_altered_requeststate_is_refused(token: str) -> None:
    seal = StateSeal(b"k" * 32)
    good = seal.seal(("srv", "tools/call", "t"), "state")
    assert seal.unseal(("srv", "tools/call", "t"), good) == "state"
    for bad in (token, good + "x", StateSeal(b"j" * 32).seal(("srv", "tools/call", "t"), "state")):
        with pytest.raises(MCPError):
            seal.unseal(("srv", "tools/call", "t"), bad)
    forged_list = seal.seal(("srv", "tools/call"), "t")  # a valid seal of a shorter binding
    with pytest.raises(MCPError):
        seal.unseal(("srv", "tools/call", "t"), forged_list)


async def test_a_requeststate_is_good_for_its_lifetime_and_refused_after_it(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    seal = StateSeal(b"k" * 32, clock=clock)
    assert seal.lifetime == 600  # ten minutes, as the era bridge's
    token = seal.seal(("srv", "tools/call", "t"), "state")
    clock.advance(600)
    assert seal.unseal(("srv", "tools/call", "t"), token) == "state"
    clock.advance(0.001)
    with pytest.raises(MCPError) as raised:
        seal.unseal(("srv", "tools/call", "t"), token)
    assert raised.value.error.code == types.INVALID_PARAMS and "expired" in raised.value.error.message

    # Through the lane: an expired state is refused before the server sees the retry.
    monkeypatch.setattr(modern_lane, "SEAL", StateSeal(lifetime=5, clock=clock))
    sent: list[dict[str, Any]] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        sent.append(body["params"])
        needed = {"resultType": "input_required", "inputRequests": {}, "requestState": "server-state"}
        return httpx2.Response(200, json={"jsonrpc": "2.0", "id": body["id"], "result": needed})

    first = await lane(answer).request(CALL, types.CallToolResult, None, CLIENT)
    assert isinstance(first, types.InputRequiredResult) and first.request_state is not None
    clock.advance(5.5)
    with pytest.raises(MCPError) as late:
        await lane(answer).request(
            CALL, types.CallToolResult, None, ModernRequest(CLIENT.meta, {}, first.request_state)
        )
    assert late.value.error.code == types.INVALID_PARAMS and len(sent) == 1


async def test_an_http_downstream_gets_a_lane_only_when_it_speaks_the_era_and_an_sse_one_never() -> None:
    async with open_modern_lane(_server({"type": "sse", "url": "http://127.0.0.1:1/sse"})) as found:
        assert found is None
    refused = _server({"type": "http", "url": f"http://127.0.0.1:{free_port()}/mcp"})
    async with open_modern_lane(refused) as found:  # nothing listens there
        assert found is None


# A handshake-era server's answer to anything before `initialize`: an error (as TypeScript servers answer it).
REFUSES_ALL = (
    "import json, sys\n"
    "for line in sys.stdin:\n"
    "    error = {'code': -32601, 'message': 'Method not found'}\n"
    "    print(json.dumps({'jsonrpc': '2.0', 'id': json.loads(line)['id'], 'error': error}), flush=True)\n"
)


@pytest.mark.parametrize(
    "entry",
    [{"command": sys.executable, "args": ["-c", REFUSES_ALL]}, {"command": "/nonexistent/server"}],
    ids=["handshake era only", "cannot be started"],
)
async def test_a_stdio_downstream_that_does_not_speak_the_era_is_found_out_once_and_keeps_its_session(
    entry: dict[str, Any],
) -> None:
    async with open_modern_lane(_server(entry)) as found:
        assert isinstance(found, StdioModernLane)
        with anyio.fail_after(30):
            assert not await found.available()
            assert not await found.available()  # known now: no second child


# A 2026-era server that answers one call (with its process id) and exits.
ONE_CALL_THEN_EXIT = (
    "import json, os, sys\n"
    "for line in sys.stdin:\n"
    "    sent = json.loads(line)\n"
    "    info = {'supportedVersions': ['2026-07-28'], 'capabilities': {}}\n"
    "    info['serverInfo'] = {'name': 's', 'version': '1'}\n"
    "    called = sent['method'] == 'tools/call'\n"
    "    result = {'content': [{'type': 'text', 'text': str(os.getpid())}]} if called else info\n"
    "    print(json.dumps({'jsonrpc': '2.0', 'id': sent['id'], 'result': result}), flush=True)\n"
    "    if called:\n"
    "        break\n"
)


async def test_a_stdio_downstream_that_speaks_the_era_gets_a_child_of_its_own_started_again_after_it_ends() -> None:
    server = _server({"command": sys.executable, "args": ["-c", ONE_CALL_THEN_EXIT]})
    async with open_modern_lane(server) as found:
        assert isinstance(found, StdioModernLane)
        with pytest.raises(MCPError) as unopened:  # no child yet: nothing is sent anywhere
            await found.request(CALL, types.CallToolResult, None, CLIENT)
        assert unopened.value.error.code == types.CONNECTION_CLOSED
        pids: list[str] = []
        with anyio.fail_after(30):
            for _ in range(2):
                assert await found.available()
                wire = found._wire
                result = await found.request(CALL, types.CallToolResult, None, CLIENT)
                assert isinstance(result, types.CallToolResult) and isinstance(result.content[0], types.TextContent)
                pids.append(result.content[0].text)
                assert isinstance(wire, StdioWire)
                await wire.closed.wait()  # it exited after its call
                await anyio.wait_all_tasks_blocked()
    assert pids[0] != pids[1]  # the next request started another


async def test_a_downstream_log_message_reaches_its_2026_era_client_prefixed_at_the_level_it_asked_for() -> None:
    sent: list[tuple[types.ServerNotification, Any]] = []

    class Session:
        async def send_notification(self, note: types.ServerNotification, related_request_id: Any = None) -> None:
            sent.append((note, related_request_id))

    def ctx(level: str | None) -> Any:
        meta = {types.PROTOCOL_VERSION_META_KEY: "2026-07-28"} | ({types.LOG_LEVEL_META_KEY: level} if level else {})
        return ServerRequestContext(
            session=cast(Any, Session()),
            lifespan_context={},
            protocol_version="2026-07-28",
            method="tools/call",
            params={"name": "t", "_meta": meta},
            request_id=7,
        )

    async def relay(context: Any) -> None:
        with modern_lane.serving(context.params, modern_lane._log_relay(context)):
            client = modern_lane.current()
            assert client is not None and client.log is not None
            for level in ("debug", "warning"):
                await client.log("srv", {"level": level, "logger": "db", "data": level})
            await client.log("", {"level": "error", "data": "unprefixed"})

    await relay(ctx("warning"))
    await relay(ctx(None))  # the era's opt-in: a request that asked for no level gets no log message
    assert [(note.params.model_dump(exclude_none=True), to) for note, to in sent] == [  # type: ignore[union-attr]
        ({"level": "warning", "logger": "srv__db", "data": "warning"}, 7),
        ({"level": "error", "data": "unprefixed"}, 7),
    ]


async def test_a_downstream_without_a_lane_or_outside_a_modern_request_uses_its_session() -> None:
    downstream = Downstream(_server({"command": "x"}))
    with pytest.raises(Exception, match="starting"):  # no session: the plain request path refuses
        await downstream.request_or_input(CALL, types.CallToolResult)
    tool = types.Tool(name="region", input_schema=SCHEMA)
    downstream.listing = Listing(tools=(tool,))
    assert downstream._input_schema(CALL) == SCHEMA
    assert downstream._input_schema(CALL) == SCHEMA  # from the cache of this listing
    assert downstream._input_schema(types.GetPromptRequest(params=types.GetPromptRequestParams(name="p"))) is None
    with modern_lane.serving({"_meta": {"progressToken": 3, "k": 1}, "requestState": 7}):
        client = modern_lane.current()
        assert client is not None and client.meta == {"k": 1} and client.request_state is None
    assert modern_lane.current() is None


def _server(entry: dict[str, Any]) -> ServerConfig:
    return parse_config({"mcpServers": {"s": entry}}, env={}).servers["s"]
