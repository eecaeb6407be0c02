"""tools/call to an HTTP downstream as circuitbox's own POST (http_calls.py), against a real streamable HTTP server
in its own process (tests/proxy/http_calls_server.py) answering with JSON bodies or with event streams."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import MCPError

from circuitbox.config.load import parse_config
from circuitbox.server import http_calls
from circuitbox.server.downstream import Backoff, Connection, Downstream, DownstreamUnavailableError
from circuitbox.server.http_calls import HttpCalls
from tests.net import free_port, import_path_env, wait_for_port
from tests.proxy.harness import running_process

pytestmark = pytest.mark.anyio

MODES = pytest.mark.parametrize("mode", ["json", "events"])


def server_args(port: int, mode: str) -> list[str]:
    return [sys.executable, "-m", "tests.proxy.http_calls_server", str(port), *(["--json"] if mode == "json" else [])]


@asynccontextmanager
async def connected(port: int, **options: Any) -> AsyncIterator[Downstream]:
    entry = {"type": "http", "url": f"http://127.0.0.1:{port}/mcp", "headers": {"X-Team": "blue"}}
    config = parse_config({"mcpServers": {"h": entry}}, env={}).servers["h"]
    downstream = Downstream(config, **options)
    async with anyio.create_task_group() as tg:
        tg.start_soon(downstream.run)
        with anyio.fail_after(30):
            await downstream.first_attempt_done.wait()
        assert downstream.state is Connection.CONNECTED, downstream.last_error
        assert isinstance(downstream._direct, HttpCalls)  # the hot path is circuitbox's own
        yield downstream
        tg.cancel_scope.cancel()


Progress = Callable[[float, float | None, str | None], Awaitable[None]]


async def call(downstream: Downstream, tool: str, progress: Progress | None = None, **arguments: Any) -> str:
    request = types.CallToolRequest(params=types.CallToolRequestParams(name=tool, arguments=arguments))
    result = await downstream.request(request, types.CallToolResult, progress)
    assert not result.is_error, result
    text = result.content[0]
    assert isinstance(text, types.TextContent)
    return text.text


async def seen(downstream: Downstream) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(await call(downstream, "seen"))
    return found


@MODES
async def test_a_call_is_posted_with_the_session_s_headers_and_its_connection_is_kept(mode: str) -> None:
    port = free_port()
    async with running_process(server_args(port, mode), port=port, env=import_path_env()), connected(port) as down:
        with anyio.fail_after(30):
            assert [await call(down, "echo", message=f"m{i}") for i in range(3)] == ["m0", "m1", "m2"]
            calls = (await seen(down))["calls"]
    assert [c["id"] for c in calls] == ["cb-1", "cb-2", "cb-3"]
    for sent in calls:
        headers = sent["headers"]
        assert headers["mcp-session-id"] and headers["x-team"] == "blue"
        assert down.session is not None and headers["mcp-protocol-version"] == down.session.protocol_version
    # One connection for every call: an answered event stream is read to its end, so it goes back to the pool.
    assert len({c["port"] for c in calls}) == 1, calls


async def test_progress_reaches_the_caller_in_order_before_the_answer() -> None:
    port, mode = free_port(), "events"  # a server answering with JSON bodies has nowhere to send progress
    steps: list[tuple[float, float | None, str | None]] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        steps.append((value, total, message))

    async with running_process(server_args(port, mode), port=port, env=import_path_env()), connected(port) as down:
        with anyio.fail_after(30):
            assert await call(down, "steps", progress) == "stepped"
    assert steps == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]


async def test_a_server_request_mid_call_reaches_the_session_and_the_call_waits_for_its_answer() -> None:
    port, mode = free_port(), "events"  # over JSON bodies the server has no channel for a request mid-call
    asked: list[Any] = []
    notes: list[Any] = []

    async def on_server_request(_: Downstream, request: types.ServerRequest) -> Any:
        asked.append(request)
        return types.CreateMessageResult(role="assistant", content=types.TextContent(text="yes"), model="m")

    async def on_notification(_: Downstream, note: types.ServerNotification) -> None:
        if isinstance(note, types.LoggingMessageNotification):
            notes.append(note.params.data)

    options = {"on_server_request": on_server_request, "on_notification": on_notification}
    async with (
        running_process(server_args(port, mode), port=port, env=import_path_env()),
        connected(port, **options) as down,
    ):
        with anyio.fail_after(30):
            assert await call(down, "ask") == "sampled: yes"
            await call(down, "echo", message="after")  # the relay of the notes has had its turn
    assert len(asked) == 1 and isinstance(asked[0], types.CreateMessageRequest)
    assert notes == ["before the question", "after the question"]


async def test_a_cancelled_call_sends_notifications_cancelled_and_the_connection_goes_on() -> None:
    port = free_port()
    async with running_process(server_args(port, "events"), port=port, env=import_path_env()), connected(port) as down:
        with anyio.fail_after(30):
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(call, down, "wait")
                    while not (await seen(down))["calls"]:  # until the server holds the call
                        pass
                    scope.cancel()
            while not (await seen(down))["cancelled"]:  # the notice is on its way through the SDK's transport
                pass
            assert await call(down, "echo", message="still here") == "still here"
            found = await seen(down)
    assert found["cancelled"] == [found["calls"][0]["id"]]


@MODES
async def test_an_answer_over_max_message_bytes_fails_its_call_and_the_next_one_passes(mode: str) -> None:
    port = free_port()
    limit = 64 * 1024
    async with (
        running_process(server_args(port, mode), port=port, env=import_path_env()),
        connected(port, max_message_bytes=limit) as down,
    ):
        with anyio.fail_after(30):
            with pytest.raises(MCPError) as refused:
                await call(down, "big", size=limit * 2)
            assert await call(down, "echo", message="small") == "small"
    message = refused.value.error.message
    assert "max_message_bytes" in message or "byte limit" in message, message
    expected = types.PARSE_ERROR if mode == "json" else types.CONNECTION_CLOSED
    assert refused.value.error.code == expected


async def test_a_downstream_that_dies_mid_call_fails_as_a_closed_connection_and_is_reconnected() -> None:
    port = free_port()
    connections = 0
    back = anyio.Event()

    def on_connected(_: Downstream) -> None:
        nonlocal connections
        connections += 1
        if connections == 2:
            back.set()

    options = {"on_connected": on_connected, "backoff": Backoff(initial=0.05, maximum=0.2)}
    first = await anyio.open_process(server_args(port, "events"), env={**os.environ, **import_path_env()})
    try:
        await wait_for_port(port)
        async with connected(port, **options) as down:
            with anyio.fail_after(60):
                with pytest.raises(MCPError) as died:
                    await call(down, "die")
                await first.wait()
                # Nobody there: the call fails as a closed connection (its transport ends with it) or finds the
                # server reconnecting; either way no call waits for its deadline.
                with pytest.raises((MCPError, DownstreamUnavailableError)) as refused:
                    await call(down, "echo", message="anyone?")
                async with running_process(server_args(port, "events"), port=port, env=import_path_env()):
                    await back.wait()
                    assert await call(down, "echo", message="back") == "back"
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
    assert died.value.error.code == types.CONNECTION_CLOSED
    if isinstance(refused.value, MCPError):
        assert refused.value.error.code == types.CONNECTION_CLOSED, refused.value.error


class _HeldOpen(httpx2.AsyncByteStream):
    """An event stream that answers and then stays open, as a server may (the spec says SHOULD close)."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.answer
        await anyio.sleep_forever()

    async def aclose(self) -> None:
        self.closed = True


async def test_answered_streams_a_server_holds_open_are_waited_for_a_bounded_time_then_closed_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_calls, "DRAIN_LIMIT", 0.01)
    streams: list[_HeldOpen] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        sent = json.loads(request.content)
        event = {"jsonrpc": "2.0", "id": sent["id"], "result": {"content": [], "n": len(streams)}}
        streams.append(_HeldOpen(f"data: {json.dumps(event)}\n\n".encode()))
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, stream=streams[-1])

    into, merged = anyio.create_memory_object_stream[Any](1)
    write, sent = anyio.create_memory_object_stream[Any](1)
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(answer)) as client:
        link = http_calls.HttpLink(client, "http://127.0.0.1:1/mcp", 1 << 20, into)
        calls = HttpCalls(merged, write, link)
        with anyio.fail_after(10):
            results = [await calls.call({"name": "t"}) for _ in range(http_calls.DRAIN_STRIKES + 2)]
    assert [r["n"] for r in results] == list(range(http_calls.DRAIN_STRIKES + 2))
    assert link.held == http_calls.DRAIN_STRIKES and all(s.closed for s in streams)
    for stream in (into, merged, write, sent):
        stream.close()
