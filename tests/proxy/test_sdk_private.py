"""What `circuitbox.server._sdk_private` relies on in the SDK: this fails when an SDK release changes it."""

from __future__ import annotations

import math
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client, ClientSession
from mcp.server import Server
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.memory import create_client_server_memory_streams
from mcp.shared.message import SessionMessage
from starlette.requests import Request

from circuitbox.server._sdk_private import (
    TaskOfferingSession,
    client_connection,
    later_revision_fields,
    post_headers_pass,
    request_in_flight,
    session_transport,
    stream_within_origin,
    unfollowed_redirect,
)
from circuitbox.server.direct_calls import DirectCalls

pytestmark = pytest.mark.anyio


async def test_a_handshake_era_session_exposes_one_connection_per_client_with_an_outbound_channel() -> None:
    seen: list[Any] = []

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        connection = client_connection(ctx.session)
        seen.append(connection)
        assert connection is not None, "ServerSession._connection is gone: update circuitbox.server._sdk_private"
        await connection.outbound.notify("notifications/tools/list_changed", None)  # what the proxy relays with
        return types.CallToolResult(content=[types.TextContent(text="ok")])

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[types.Tool(name="t", input_schema={"type": "object"})])

    server = Server("probe", on_call_tool=call_tool, on_list_tools=list_tools)
    with anyio.fail_after(10):
        async with Client(server, mode="legacy") as first, Client(server, mode="legacy") as second:
            await first.call_tool("t", {})
            await first.call_tool("t", {})
            await second.call_tool("t", {})
    assert seen[0] is seen[1] and seen[0] is not seen[2]  # one per client, stable across its requests


async def test_direct_calls_frame_a_tools_call_and_read_its_result_as_the_sdk_s_session_does() -> None:
    """DirectCalls (direct_calls.py) stands in for `ClientSession.send_request` on the hot path: the same headers,
    the same params (but its own id and progress token), and the same fields of a later revision dropped from the
    result (`later_revision_fields`). Both are driven here against one hand-played handshake-era server."""
    version = "2025-06-18"
    params = {"name": "über tool", "arguments": {"m": 1}, "_meta": {"k": "v"}}
    result = {"content": [{"type": "text", "text": "ok"}], "resultType": "complete", "requestState": "s"}
    to_client, client_reads = anyio.create_memory_object_stream[Any](8)
    client_writes, from_client = anyio.create_memory_object_stream[Any](8)
    unused_send, unused_read = anyio.create_memory_object_stream[Any](1)
    streams = (to_client, client_reads, client_writes, from_client, unused_send, unused_read)

    async def answer(request: types.JSONRPCRequest, body: dict[str, Any]) -> None:
        await to_client.send(SessionMessage(types.JSONRPCResponse(jsonrpc="2.0", id=request.id, result=body)))

    server_info = {"name": "s", "version": "0"}
    initialized = {"protocolVersion": version, "capabilities": {"tools": {}}, "serverInfo": server_info}
    by_sdk: list[Any] = []
    by_direct: list[Any] = []
    direct = DirectCalls(unused_read, client_writes, version)

    async def sdk_call(session: ClientSession) -> None:
        request = types.CallToolRequest(params=types.CallToolRequestParams.model_validate(params))
        by_sdk.append(await session.send_request(request, types.CallToolResult, progress_callback=noop))

    async def direct_call() -> None:
        by_direct.append(types.CallToolResult.model_validate(await direct.call(params), by_name=False))

    try:
        with anyio.fail_after(10):
            async with ClientSession(client_reads, client_writes) as session, anyio.create_task_group() as tg:
                tg.start_soon(session.initialize)
                await answer((await from_client.receive()).message, initialized)
                assert (await from_client.receive()).message.method == "notifications/initialized"
                tg.start_soon(sdk_call, session)
                sdk_sent = await from_client.receive()
                await answer(sdk_sent.message, result)
                tg.start_soon(direct_call)
                direct_sent = await from_client.receive()
                direct._take(types.JSONRPCResponse(jsonrpc="2.0", id=direct_sent.message.id, result=result))
    finally:
        for stream in streams:
            stream.close()
    assert direct_sent.metadata.headers == sdk_sent.metadata.headers
    sdk_params, direct_params = sdk_sent.message.params, direct_sent.message.params
    assert sdk_params["_meta"].pop("progressToken") == sdk_sent.message.id
    assert direct_params["_meta"].pop("progressToken") == direct_sent.message.id
    assert direct_params == sdk_params
    assert later_revision_fields("tools/call", version) >= {"resultType", "requestState"}
    assert by_direct[0].model_dump() == by_sdk[0].model_dump()


async def noop(progress: float, total: float | None, message: str | None) -> None:
    pass


async def test_the_http_lane_keeps_a_session_s_idle_countdown_as_its_transport_does() -> None:
    """`request_in_flight` does what `StreamableHTTPServerTransport.handle_request` does around a request (its
    private counter and idle deadline); the transport's header checks and the manager's session table are read as
    the SDK reads them. (That the manager routes every stateful request through `_handle_stateful_request`, which
    the lane's manager overrides, is what every test in test_http_lane.py relies on: they fail without it.)"""
    transport = StreamableHTTPServerTransport(mcp_session_id="s", idle_timeout=5)
    async with transport.connect():
        idle = transport.idle_scope
        assert idle is not None and idle.deadline == math.inf  # no countdown before the first request
        with request_in_flight(transport), request_in_flight(transport):
            assert transport._requests_in_flight == 2 and idle.deadline == math.inf
        assert transport._requests_in_flight == 0
        assert anyio.current_time() < idle.deadline <= anyio.current_time() + 5
        await transport.terminate()
    with request_in_flight(StreamableHTTPServerTransport(mcp_session_id="t")):  # no idle timeout: nothing to keep
        pass

    def post(**headers: str) -> Request:
        raw = [(k.encode(), v.encode()) for k, v in {"host": "127.0.0.1:1", **headers}.items()]
        return Request({"type": "http", "method": "POST", "headers": raw})

    settings = TransportSecuritySettings(allowed_hosts=["127.0.0.1:*"], allowed_origins=["http://127.0.0.1:*"])
    checked = StreamableHTTPServerTransport(mcp_session_id="u", security_settings=settings)
    assert await post_headers_pass(checked, post(**{"content-type": "application/json"}))
    assert not await post_headers_pass(checked, post(**{"content-type": "text/plain"}))
    assert not await post_headers_pass(checked, post(**{"content-type": "application/json", "origin": "http://x"}))

    manager = StreamableHTTPSessionManager(app=Server("probe"))
    admitted = manager._admit_session(None)
    assert admitted is not None and admitted.mcp_session_id is not None
    assert session_transport(manager, admitted.mcp_session_id, None) is admitted
    assert session_transport(manager, admitted.mcp_session_id, object()) is None  # another credential
    assert session_transport(manager, "unknown", None) is None


async def test_a_task_offering_session_declares_tasks_and_gets_the_servers_task_requests_raw() -> None:
    """`TaskOfferingSession` overrides `ClientSession._build_capabilities` (the capabilities it declares) and
    `_on_request` (how it answers a server's request): tasks/* and a task-augmented sampling request reach its
    handler as they came, any other request the SDK's own callbacks."""
    declared = types.ClientTasksCapability.model_validate(
        {"cancel": {}, "requests": {"sampling": {"createMessage": {}}}}
    )
    handled: list[tuple[str, dict[str, Any]]] = []
    answers: list[Any] = []

    async def on_task_request(method: str, params: dict[str, Any]) -> dict[str, Any]:
        handled.append((method, params))
        return {"taskId": "t", "status": "working"} if method == "tasks/get" else {"task": {"taskId": "t"}}

    async def sample(_: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        return types.CreateMessageResult(role="assistant", content=types.TextContent(text="plain"), model="m")

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        answers.append(ctx.session.client_capabilities.tasks)
        outbound = client_connection(ctx.session).outbound
        sampling = {"messages": [], "maxTokens": 1}
        answers.append(await outbound.send_raw_request("tasks/get", {"taskId": "t"}, None))
        answers.append(await outbound.send_raw_request("sampling/createMessage", {**sampling, "task": {}}, None))
        answers.append(await outbound.send_raw_request("sampling/createMessage", sampling, None))
        return types.CallToolResult(content=[types.TextContent(text="ok")])

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[types.Tool(name="t", input_schema={"type": "object"})])

    server = Server("probe", on_call_tool=call_tool, on_list_tools=list_tools)
    async with (
        create_client_server_memory_streams() as ((client_read, client_write), (server_read, server_write)),
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(server.run, server_read, server_write, server.create_initialization_options())
        session = TaskOfferingSession(
            client_read, client_write, tasks=declared, on_task_request=on_task_request, sampling_callback=sample
        )
        with anyio.fail_after(10):
            async with session:
                await session.initialize()
                await session.call_tool("t", {})
        tg.cancel_scope.cancel()
    assert answers[0] == declared
    assert answers[1:3] == [{"taskId": "t", "status": "working"}, {"task": {"taskId": "t"}}]
    assert answers[3]["content"]["text"] == "plain"
    assert handled == [("tasks/get", {"taskId": "t"}), ("sampling/createMessage", {"messages": [], "maxTokens": 1,
                                                                                   "task": {}})]  # fmt: skip


async def test_http_calls_post_and_redirect_as_the_sdk_s_streamable_http_client_does() -> None:
    """http_calls.py POSTs (and resumes event streams) with `stream_within_origin`, the SDK's own: a same-origin 307
    is followed with its body, a redirect off the origin is handed back unfollowed, and `unfollowed_redirect` words
    it as the SDK's client does when it answers the request with -32600."""
    seen: list[tuple[str, bytes]] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        seen.append((str(request.url), request.content))
        if request.url.path == "/mcp":
            return httpx2.Response(307, headers={"location": "/mcp/"})
        if request.url.path == "/away":
            return httpx2.Response(307, headers={"location": "http://elsewhere.example/mcp"})
        return httpx2.Response(200, json={"jsonrpc": "2.0", "id": 1, "result": {}})

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(answer)) as client:
        async with stream_within_origin(client, "POST", "http://127.0.0.1:1/mcp", content=b"{}") as followed:
            assert followed.status_code == 200 and unfollowed_redirect(followed) is None
        assert seen == [("http://127.0.0.1:1/mcp", b"{}"), ("http://127.0.0.1:1/mcp/", b"{}")]
        async with stream_within_origin(client, "POST", "http://127.0.0.1:1/away", content=b"{}") as refused:
            assert refused.status_code == 307
            message = unfollowed_redirect(refused)
    assert message is not None and "http://elsewhere.example/mcp" in message and "not followed" in message
