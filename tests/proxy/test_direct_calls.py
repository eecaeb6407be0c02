"""DirectCalls: tools/call on a downstream transport's streams, past the SDK session (in-memory streams play the
transport; the downstream's side is driven by hand so every message is visible)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp import MCPError
from mcp.shared.message import SessionMessage
from mcp_types.methods import serialize_server_result
from pydantic import ValidationError

from circuitbox.server.direct_calls import DirectCalls, plain_result
from circuitbox.server.guard import wire_params
from circuitbox.server.lane import WIRE_VERSIONS

pytestmark = pytest.mark.anyio


class Peer:
    """The downstream's end: what DirectCalls wrote, and a way to answer on the read stream."""

    def __init__(self, sent: MemoryObjectReceiveStream[Any], answers: MemoryObjectSendStream[Any]) -> None:
        self.sent = sent
        self.answers = answers

    async def request(self) -> SessionMessage:
        return await self.sent.receive()

    async def say(self, message: dict[str, Any]) -> None:
        await self.answers.send(SessionMessage(types.jsonrpc_message_adapter.validate_python(message)))


@asynccontextmanager
async def direct(version: str | None = None) -> AsyncIterator[tuple[DirectCalls, Peer, list[Any]]]:
    """DirectCalls over memory streams, with a task reading it the way the SDK session does (what passes through
    is collected)."""
    answers, read = anyio.create_memory_object_stream[Any](16)
    write, sent = anyio.create_memory_object_stream[Any](16)
    calls = DirectCalls(read, write, version)
    passed: list[Any] = []

    async def session_reader() -> None:
        async for item in calls:
            passed.append(item.message)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(session_reader)
            yield calls, Peer(sent, answers), passed
            tg.cancel_scope.cancel()
    finally:
        for stream in (answers, read, write, sent):
            stream.close()


async def test_a_call_goes_out_with_an_id_and_progress_token_of_its_own_and_returns_the_raw_result() -> None:
    async with direct() as (calls, peer, passed), anyio.create_task_group() as tg:
        results: list[dict[str, Any]] = []

        async def call() -> None:
            results.append(await calls.call({"name": "echo", "arguments": {"m": 1}, "_meta": {"k": "v"}}))

        tg.start_soon(call)
        with anyio.fail_after(10):
            sent = await peer.request()
        request = sent.message
        assert isinstance(request, types.JSONRPCRequest)
        assert request.method == "tools/call" and isinstance(request.id, str) and request.id.startswith("cb-")
        assert request.params == {
            "name": "echo",
            "arguments": {"m": 1},
            "_meta": {"k": "v", "progressToken": request.id},
        }
        assert sent.metadata is not None and sent.metadata.headers is None  # no version known yet
        await peer.say({"jsonrpc": "2.0", "id": 7, "result": {}})  # the SDK's own request's answer: not ours
        await peer.say({"jsonrpc": "2.0", "id": request.id, "result": {"content": [], "x": 1}})
    assert results == [{"content": [], "x": 1}]
    assert [m.id for m in passed] == [7]


async def test_an_http_downstream_gets_the_negotiated_version_as_a_header() -> None:
    async with direct("2025-11-25") as (calls, peer, _), anyio.create_task_group() as tg:
        tg.start_soon(calls.call, {"name": "echo"})
        with anyio.fail_after(10):
            sent = await peer.request()
        assert sent.metadata.headers == {"mcp-protocol-version": "2025-11-25"}
        await peer.say({"jsonrpc": "2.0", "id": sent.message.id, "result": {"content": []}})


async def test_an_error_answer_raises_the_downstream_s_error() -> None:
    async with direct() as (calls, peer, _):
        failure: list[MCPError] = []

        async def call() -> None:
            try:
                await calls.call({"name": "echo"})
            except MCPError as exc:
                failure.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            with anyio.fail_after(10):
                sent = await peer.request()
            error = {"code": -32602, "message": "bad arguments", "data": {"field": "m"}}
            await peer.say({"jsonrpc": "2.0", "id": sent.message.id, "error": error})
    assert failure[0].error.code == -32602 and failure[0].error.message == "bad arguments"
    assert failure[0].error.data == {"field": "m"}


async def test_progress_for_a_call_reaches_its_callback_and_other_progress_passes_to_the_session() -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))
        if progress == 3:
            raise RuntimeError("the caller's relay broke")  # logged, the reader goes on

    async with direct() as (calls, peer, passed), anyio.create_task_group() as tg:
        tg.start_soon(calls.call, {"name": "slow"}, on_progress)
        with anyio.fail_after(10):
            token = (await peer.request()).message.id
        for params in (
            {"progressToken": token, "progress": 1, "total": 4, "message": "one"},
            {"progressToken": token, "progress": 2},
            {"progressToken": token, "progress": "not a number"},
            {"progressToken": token, "progress": 3},
            {"progressToken": "someone-else", "progress": 1},
        ):
            await peer.say({"jsonrpc": "2.0", "method": "notifications/progress", "params": params})
        await peer.say({"jsonrpc": "2.0", "id": token, "result": {"content": []}})
    assert seen == [(1, 4, "one"), (2, None, None), (3, None, None)]
    assert [m.params["progressToken"] for m in passed] == ["someone-else"]


async def test_progress_without_a_callback_is_taken_and_dropped() -> None:
    async with direct() as (calls, peer, passed), anyio.create_task_group() as tg:
        tg.start_soon(calls.call, {"name": "slow"})
        with anyio.fail_after(10):
            token = (await peer.request()).message.id
        await peer.say({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": token}})
        await peer.say(
            {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": token, "progress": 1}}
        )
        await peer.say({"jsonrpc": "2.0", "id": token, "result": {"content": []}})
    assert passed == []


async def test_an_abandoned_call_tells_the_downstream_it_was_cancelled() -> None:
    async with direct() as (calls, peer, _):
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(calls.call, {"name": "hang"})
                with anyio.fail_after(10):
                    request_id = (await peer.request()).message.id
                scope.cancel()
        with anyio.fail_after(10):
            notice = (await peer.request()).message
        assert isinstance(notice, types.JSONRPCNotification) and notice.method == "notifications/cancelled"
        assert notice.params is not None and notice.params["requestId"] == request_id


async def test_calls_waiting_when_the_transport_ends_fail_as_connection_closed_and_later_calls_too() -> None:
    failures: list[int] = []

    async def call(calls: DirectCalls) -> None:
        try:
            await calls.call({"name": "hang"})
        except MCPError as exc:
            failures.append(exc.error.code)

    async with direct() as (calls, peer, _):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, calls)
            with anyio.fail_after(10):
                await peer.request()
            await peer.answers.aclose()  # the downstream's output ended
        await call(calls)
    assert failures == [types.CONNECTION_CLOSED, types.CONNECTION_CLOSED]


async def test_a_call_on_a_closed_write_stream_fails_as_connection_closed() -> None:
    answers, read = anyio.create_memory_object_stream[Any](1)
    write, sent = anyio.create_memory_object_stream[Any](1)
    await sent.aclose()
    with pytest.raises(MCPError) as caught:
        await DirectCalls(read, write).call({"name": "echo"})
    assert caught.value.error.code == types.CONNECTION_CLOSED
    for stream in (answers, read, write):
        stream.close()


# -- answers taken in the transport's reader task (a stdio child's `intercept` hook) --------------------------------


@asynccontextmanager
async def hooked() -> AsyncIterator[tuple[DirectCalls, Any, MemoryObjectReceiveStream[Any], list[Any]]]:
    """DirectCalls whose transport reader offers each message to `intercept` first and queues the rest on a
    0-buffer stream, as a stdio child's reader does; `say` plays that reader. The session's reading task is not
    started: the test starts it (`read_all`) when it wants messages to go that way."""
    answers, read = anyio.create_memory_object_stream[Any](0)
    write, sent = anyio.create_memory_object_stream[Any](16)
    calls = DirectCalls(read, write)
    passed: list[Any] = []

    async def say(message: dict[str, Any]) -> None:
        parsed = types.jsonrpc_message_adapter.validate_python(message)
        if not calls.intercept(parsed):
            await answers.send(SessionMessage(parsed))

    try:
        yield calls, say, sent, passed
    finally:
        for stream in (answers, read, write, sent):
            stream.close()


async def read_all(calls: DirectCalls, passed: list[Any]) -> None:
    async for item in calls:
        passed.append(item.message)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"result": {"content": [], "x": 1}}, {"content": [], "x": 1}),
        ({"error": {"code": -32602, "message": "no"}}, -32602),
    ],
    ids=["a result", "an error"],
)
async def test_the_reader_s_hook_completes_a_call_with_no_hop_through_the_session_s_reader(
    answer: dict[str, Any], expected: Any
) -> None:
    """Nobody reads the session's stream here: the call completes because the hook took its answer."""
    outcome: list[Any] = []

    async def call(calls: DirectCalls) -> None:
        try:
            outcome.append(await calls.call({"name": "echo"}))
        except MCPError as exc:
            outcome.append(exc.error.code)

    async with hooked() as (calls, say, sent, _), anyio.create_task_group() as tg:
        tg.start_soon(call, calls)
        with anyio.fail_after(10):
            request_id = (await sent.receive()).message.id
            await say({"jsonrpc": "2.0", "id": request_id, **answer})
    assert outcome == [expected]


async def test_the_hook_leaves_everything_but_our_answers_to_the_session() -> None:
    async with hooked() as (calls, say, sent, passed), anyio.create_task_group() as tg:
        tg.start_soon(read_all, calls, passed)
        tg.start_soon(calls.call, {"name": "hang"})
        with anyio.fail_after(10):
            token = (await sent.receive()).message.id
            await say({"jsonrpc": "2.0", "id": 7, "result": {}})  # the SDK's own request's answer
            await say({"jsonrpc": "2.0", "id": "cb-999", "result": {}})  # no such call (any more)
            await say({"jsonrpc": "2.0", "id": 3, "method": "ping"})
            await say({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": 1}})
            await say(
                {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 5, "progress": 1}}
            )
            await say({"jsonrpc": "2.0", "id": token, "result": {"content": []}})
            await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert [getattr(m, "id", getattr(m, "method", None)) for m in passed] == [
        7,
        "cb-999",
        3,
        "notifications/message",
        "notifications/progress",
    ]


async def test_an_answer_behind_its_call_s_progress_note_waits_until_the_note_is_relayed() -> None:
    """The note goes the session's way (the relay awaits the upstream); the answer read right after it must not
    overtake it, or the agent would see progress for a call already answered."""
    events: list[str] = []
    relayed = anyio.Event()
    release = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        relayed.set()
        await release.wait()
        events.append(f"progress {progress:g}")

    async def call(calls: DirectCalls) -> None:
        await calls.call({"name": "slow"}, on_progress)
        events.append("answered")

    async with hooked() as (calls, say, sent, passed), anyio.create_task_group() as tg:
        tg.start_soon(read_all, calls, passed)
        tg.start_soon(call, calls)
        with anyio.fail_after(10):
            token = (await sent.receive()).message.id
            note = {"progressToken": token, "progress": 1}
            await say({"jsonrpc": "2.0", "method": "notifications/progress", "params": note})
            await relayed.wait()
            tg.start_soon(say, {"jsonrpc": "2.0", "id": token, "result": {"content": []}})
            await anyio.wait_all_tasks_blocked()
            assert events == []  # the answer waits behind the note's relay
            release.set()
            while len(events) < 2:
                await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert events == ["progress 1", "answered"]
    assert passed == []  # both were ours


# -- the wire form: answers taken as raw lines, results judged as the SDK's round trip would give them ------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
ODD = st.none() | st.booleans() | st.integers() | st.text(max_size=3) | st.lists(JSON, max_size=2)
TEXT_ITEM = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "text", "image"]), "text": st.text(max_size=8) | ODD},
    optional={
        "_meta": st.dictionaries(st.text(max_size=5), JSON, max_size=2) | ODD,
        "annotations": st.just({"priority": 0.5}),
        "mimeType": st.just("text/plain"),
    },
)
RESULT = st.fixed_dictionaries(
    {"content": st.lists(TEXT_ITEM | ODD, max_size=3) | ODD},
    optional={
        "isError": st.booleans() | ODD,
        "structuredContent": st.dictionaries(st.text(max_size=5), JSON, max_size=3) | ODD,
        "_meta": st.dictionaries(st.text(max_size=5), JSON, max_size=2) | ODD,
        "resultType": st.just("complete"),
        "extra": JSON,
    },
)


def sdk_round_trip(raw: dict[str, Any], version: str) -> str | None:
    """What the SDK's server sends a handshake-era client for `raw` (the JSON text, key order and all), or None
    when the typed path refuses it."""
    try:
        result = types.CallToolResult.model_validate(raw, by_name=False)
    except ValidationError:
        return None
    data = serialize_server_result(
        "tools/call", version, result.model_dump(by_alias=True, mode="json", exclude_none=True)
    )
    return json.dumps(data)


@settings(max_examples=400, deadline=None)
@given(RESULT)
def test_a_plain_result_is_exactly_the_sdk_s_round_trip_of_it_in_every_handshake_era_version(
    raw: dict[str, Any],
) -> None:
    plain = plain_result(raw)
    if plain is None:
        return
    assert plain["isError"] is False  # only successes are plain
    for version in WIRE_VERSIONS:
        assert json.dumps(plain) == sdk_round_trip(raw, version)


@pytest.mark.parametrize(
    "raw",
    [
        {
            "content": [{"type": "text", "text": "hi"}],
            "structuredContent": {"a": None, "b": [1, 2.5]},
            "isError": False,
        },
        {"content": [], "_meta": {"x": {"y": None}}},
        {"isError": False, "content": [{"text": "é", "type": "text", "_meta": {"k": 1}}, {"type": "text", "text": ""}]},
    ],
)
def test_common_successes_are_plain(raw: dict[str, Any]) -> None:
    plain = plain_result(raw)
    assert plain is not None
    assert all(json.dumps(plain) == sdk_round_trip(raw, version) for version in WIRE_VERSIONS)


@pytest.mark.parametrize(
    "raw",
    [
        {"content": [{"type": "text", "text": "down"}], "isError": True},  # classified by the guard, typed
        {"content": [{"type": "image", "data": "AA==", "mimeType": "image/png"}]},
        {"content": [{"type": "text", "text": "x", "annotations": {"priority": 1}}]},
        {"content": [{"type": "text", "text": "x"}], "structuredContent": None},
        {"content": [{"type": "text", "text": "x"}], "isError": 0},
        {"content": [], "resultType": "complete"},
        {"structuredContent": {}},
    ],
)
def test_anything_else_takes_the_typed_path(raw: dict[str, Any]) -> None:
    assert plain_result(raw) is None


@pytest.mark.parametrize(
    ("arguments", "meta"),
    [
        (None, None),
        ({"a": None, "b": {"c": None}, "é": [1, 2.5]}, None),
        ({}, {"traceparent": "00-ab-cd-01", "x": {"y": None}}),
        (None, {"k": [None]}),
    ],
)
def test_wire_params_are_the_typed_request_s_params_as_the_downstream_path_dumps_them(
    arguments: dict[str, Any] | None, meta: dict[str, Any] | None
) -> None:
    typed = types.CallToolRequestParams(name="t", arguments=arguments, _meta=meta)
    dumped = typed.model_dump(by_alias=True, mode="json", exclude_none=True)
    assert json.dumps(wire_params("t", arguments, meta)) == json.dumps(dumped)


def test_a_meta_with_a_none_the_typed_dump_would_drop_takes_the_typed_path() -> None:
    assert wire_params("t", {}, {"k": None}) is None


async def test_a_raw_answer_line_of_the_common_shape_completes_its_call_without_a_typed_message() -> None:
    outcome: list[Any] = []

    async def call(calls: DirectCalls) -> None:
        outcome.append(await calls.call({"name": "echo"}))

    async with hooked() as (calls, _say, sent, _passed), anyio.create_task_group() as tg:
        tg.start_soon(call, calls)
        with anyio.fail_after(10):
            request_id = (await sent.receive()).message.id
            others = [
                {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32603, "message": "no"}},
                {"jsonrpc": "2.0", "id": request_id, "result": {}, "extra": 1},
                {"jsonrpc": "1.0", "id": request_id, "result": {}},
                {"jsonrpc": "2.0", "id": request_id, "result": []},
                {"jsonrpc": "2.0", "id": "cb-999", "result": {}},
                {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": request_id}},
            ]
            for other in others:  # the reader parses these into typed messages, as before
                assert not calls.intercept_line(json.dumps(other).encode())
            assert not calls.intercept_line(b'{"jsonrpc": "2.0", "id": "cb-1", "result": {')  # not JSON
            answer = {"jsonrpc": "2.0", "id": request_id, "result": {"content": [], "x": None}}
            assert calls.intercept_line(json.dumps(answer).encode())
    assert outcome == [{"content": [], "x": None}]


async def test_a_raw_answer_behind_its_call_s_progress_note_is_left_to_the_typed_path() -> None:
    async with hooked() as (calls, say, sent, _passed), anyio.create_task_group() as tg:
        tg.start_soon(calls.call, {"name": "slow"})
        with anyio.fail_after(10):
            request_id = (await sent.receive()).message.id
            note = {"progressToken": request_id, "progress": 1}
            tg.start_soon(say, {"jsonrpc": "2.0", "method": "notifications/progress", "params": note})
            await anyio.wait_all_tasks_blocked()  # the note waits on the session's path
            answer = {"jsonrpc": "2.0", "id": request_id, "result": {"content": []}}
            assert not calls.intercept_line(json.dumps(answer).encode())
        tg.cancel_scope.cancel()


async def test_a_log_message_goes_to_on_log_in_the_reader_s_task_and_an_invalid_one_to_the_session() -> None:
    logged: list[Any] = []
    async with hooked() as (calls, say, _sent, _passed):
        calls.on_log = logged.append
        await say({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "x"}})
        assert [note.params.data for note in logged] == ["x"]
        assert not calls.intercept(
            types.jsonrpc_message_adapter.validate_python(
                {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "loud", "data": "x"}}
            )
        )
