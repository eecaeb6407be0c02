"""The stdio upstream's reader hands the fast lane its calls in the reader's own task, and the lane answers a call
its open circuit refuses right there: the proxy runs in-process as `serve` runs it (real pipes on the loop's own
pipe transports, `pipe_streams`, `AnswerMalformed`, the lane tapped into the reader, the SDK's server), its
downstream is a real chaos server process, and the client writes and reads raw JSON lines."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.message import SessionMessage
from mcp_types.methods import serialize_server_result
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from circuitbox.breakers import CircuitState, Rejection
from circuitbox.config.load import parse_config
from circuitbox.server import lane as lane_module
from circuitbox.server._pipes import PipeWriter, TappedStream, pipe_streams
from circuitbox.server._streams import AnswerMalformed
from circuitbox.server.app import build_proxy
from circuitbox.server.guard import rejection_result, rejection_wire
from circuitbox.server.lane import Lane, fast_lane
from circuitbox.server.proxy import Proxy
from tests.proxy.harness import chaos

pytestmark = pytest.mark.anyio

BREAKER = {"failure_threshold": 2, "minimum_calls": 2, "timeout": 3600}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the loop-native pipes exist on asyncio only


class Pipes:
    """The agent's end of the proxy's stdin and stdout, and what the proxy's parts did."""

    def __init__(self, out: asyncio.StreamWriter, answers: asyncio.StreamReader, proxy: Proxy) -> None:
        self._out = out
        self._in = answers
        self.proxy = proxy
        self.lane: Lane | None = None
        self.received: list[Any] = []  # what reached the lane's `receive` (the SDK server's side of the queue)
        self.served: list[Any] = []  # the ids of the calls the lane ran in a task of their own
        self.answers: dict[Any, dict[str, Any]] = {}

    def write(self, *messages: dict[str, Any]) -> None:
        self._out.write(b"".join(json.dumps(m).encode() + b"\n" for m in messages))

    async def answer(self, request_id: Any) -> dict[str, Any]:
        with anyio.fail_after(60):
            while request_id not in self.answers:
                data = json.loads(await self._in.readline())
                if "id" in data:
                    self.answers[data["id"]] = data
        return self.answers.pop(request_id)

    async def request(self, request_id: Any, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self.write({"jsonrpc": "2.0", "id": request_id, "method": method, **({"params": params} if params else {})})
        return await self.answer(request_id)

    async def call(self, request_id: Any, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.request(request_id, "tools/call", {"name": name, "arguments": arguments or {}})

    async def handshake(self) -> None:
        info = {"name": "test", "version": "0"}
        await self.request(0, "initialize", {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": info})
        self.write({"jsonrpc": "2.0", "method": "notifications/initialized"})
        await self.request("list", "tools/list")  # a client that lists is known: the lane takes its calls


async def _pipe_pair() -> tuple[asyncio.StreamReader, asyncio.StreamWriter, list[asyncio.BaseTransport]]:
    """(reader, writer) on the two ends of one os pipe, on the loop's own pipe transports."""
    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.pipe()
    reader = asyncio.StreamReader()
    read_transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
    )
    write_transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(write_fd, "wb", buffering=0)
    )
    return reader, asyncio.StreamWriter(write_transport, protocol, None, loop), [read_transport, write_transport]


@asynccontextmanager
async def piped_proxy(monkeypatch: pytest.MonkeyPatch, *tools: str) -> AsyncIterator[Pipes]:
    entry = {**chaos(*tools), "namespace": "", "breaker": BREAKER}
    proxy, _ = build_proxy(parse_config({"environment": "testing", "mcpServers": {"d": entry}}), metrics=False)
    proxy.stdio_upstream = True
    stdin_reader, agent_writer, in_transports = await _pipe_pair()
    agent_reader, stdout_writer, out_transports = await _pipe_pair()
    pipes = Pipes(agent_writer, agent_reader, proxy)
    take, serve = Lane._take, Lane._serve

    def seen(lane: Lane, message: Any) -> bool:
        pipes.received.append(message)
        return take(lane, message)

    async def served(lane: Lane, request_id: Any, *args: Any) -> None:
        pipes.served.append(request_id)
        await serve(lane, request_id, *args)

    monkeypatch.setattr(Lane, "_take", seen)
    monkeypatch.setattr(Lane, "_serve", served)
    try:
        async with anyio.create_task_group() as tg:
            await proxy.start(tg)
            server = proxy.build_server()
            proxy.serve_one_client(server)

            async def run() -> None:  # as `serve` runs it (app.py)
                async with (
                    pipe_streams(stdin_reader, stdout_writer) as (read, write),
                    fast_lane(proxy, AnswerMalformed(read, write), write, tap=read) as upstream,
                ):
                    pipes.lane = upstream
                    await server.run(upstream, write, proxy.initialization_options(server))

            tg.start_soon(run)
            yield pipes
            await proxy.wait_first_attempts()  # not cancelled mid-spawn: the child is reaped
            tg.cancel_scope.cancel()
    finally:
        for transport in in_transports + out_transports:
            transport.close()


def _methods(messages: list[Any]) -> list[str]:
    return [m.method for m in messages if isinstance(m, types.JSONRPCRequest)]


async def test_the_reader_hands_a_call_to_the_lane_without_the_hop_to_the_sdk_s_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with piped_proxy(monkeypatch, "echo=healthy") as pipes:
        await pipes.handshake()
        answer = await pipes.call(1, "echo", {"message": "hi"})
        assert answer["result"]["structuredContent"]["arguments"]["message"] == "hi" and not answer["result"].get(
            "isError"
        )
        assert pipes.lane is not None and pipes.lane.taken == 1
        assert pipes.served == [1]  # run by the lane
        assert "tools/call" not in _methods(pipes.received)  # and never queued for the SDK's server
        assert {"initialize", "tools/list"} <= set(_methods(pipes.received))


async def test_a_call_pipelined_right_after_the_handshake_is_answered_whichever_part_takes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with piped_proxy(monkeypatch, "echo=healthy") as pipes:
        info = {"name": "test", "version": "0"}
        pipes.write(
            {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": info}},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": "l", "method": "tools/list"},
            *({"jsonrpc": "2.0", "id": n, "method": "tools/call",
               "params": {"name": "echo", "arguments": {"message": f"m{n}"}}} for n in range(1, 21)),
        )  # fmt: skip
        assert (await pipes.answer(0))["result"]["protocolVersion"] == "2025-11-25"
        for n in range(1, 21):
            assert (await pipes.answer(n))["result"]["structuredContent"]["arguments"]["message"] == f"m{n}"


async def test_an_open_circuit_s_refusal_is_answered_in_the_reader_s_task_as_the_sdk_s_server_answers_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with piped_proxy(monkeypatch, "boom=error") as pipes:
        await pipes.handshake()
        for n in (1, 2):
            assert (await pipes.call(n, "boom"))["result"]["isError"] is True  # two failures open the circuit
        assert pipes.served == [1, 2]
        refused = await pipes.call(3, "boom")
        assert pipes.served == [1, 2]  # no task: answered where it was read
        assert pipes.lane is not None and pipes.lane.taken == 3
        breaker = refused["result"]["_meta"]["circuitbox/breaker"]
        assert breaker["state"] == "open" and breaker["server"] == "d" and breaker["tool"] == "boom"
        assert refused["result"]["isError"] is True
        # The same refusal through `Proxy.call` (the path of the SDK's server and of the lane's tasks), dumped as
        # the SDK dumps a handler's result: only the seconds left differ.
        result = await pipes.proxy.call("boom", {})
        expected = serialize_server_result(
            "tools/call", "2025-11-25", result.model_dump(by_alias=True, mode="json", exclude_none=True)
        )
        for result in (refused["result"], expected):
            result["_meta"]["circuitbox/breaker"]["retry_after"] = "N"
            result["content"][0]["text"] = result["content"][0]["text"].split(" in ")[0]
        assert refused["result"] == expected


async def test_a_refusal_the_pipe_cannot_take_at_once_is_written_by_a_task_with_backpressure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def full(self: PipeWriter, message: SessionMessage) -> None:
        raise anyio.WouldBlock

    async with piped_proxy(monkeypatch, "boom=error") as pipes:
        await pipes.handshake()
        for n in (1, 2):
            await pipes.call(n, "boom")
        monkeypatch.setattr(PipeWriter, "send_nowait", full)
        refused = await pipes.call(3, "boom")
        assert refused["result"]["_meta"]["circuitbox/breaker"]["state"] == "open"
        assert pipes.served == [1, 2, 3]  # written by a task of its own
        assert pipes.lane is not None and not pipes.lane._calls  # and forgotten once written


async def test_a_lane_that_fails_on_a_message_leaves_it_to_the_sdk_s_server(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: TappedStream, item: SessionMessage | bytes) -> bool:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Lane, "intercept_line", broken)  # the raw line's hook fails: the parsed message's is offered
    monkeypatch.setattr(Lane, "intercept", broken)  # which fails too: the server answers
    async with piped_proxy(monkeypatch, "echo=healthy") as pipes:
        await pipes.handshake()
        answer = await pipes.call(1, "echo", {"message": "still"})
        assert answer["result"]["structuredContent"]["arguments"]["message"] == "still"
        assert "tools/call" in _methods(pipes.received)  # it went on to the server's side
        assert "the fast lane failed on a line" in caplog.text
        assert "the fast lane failed on a message" in caplog.text


async def test_send_nowait_writes_a_whole_line_and_refuses_once_the_agent_stops_reading() -> None:
    reader, writer, transports = await _pipe_pair()
    try:
        pipe = PipeWriter(writer)
        ping = SessionMessage(types.JSONRPCRequest(jsonrpc="2.0", id=1, method="ping"))
        pipe.send_nowait(ping)
        with anyio.fail_after(10):
            assert json.loads(await reader.readline()) == {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        big = SessionMessage(types.JSONRPCRequest(jsonrpc="2.0", id=2, method="ping", params={"x": "y" * 100_000}))
        with pytest.raises(anyio.WouldBlock):  # nobody reads: the pipe fills, then the transport's buffer
            for _ in range(100):
                pipe.send_nowait(big)
        await pipe.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            pipe.send_nowait(ping)
    finally:
        for transport in transports:
            transport.close()


@pytest.mark.parametrize("version", sorted(HANDSHAKE_PROTOCOL_VERSIONS))
@pytest.mark.parametrize(("retry_at", "last_error"), [(12.5, "boom: it broke"), (None, None)])
def test_the_refusal_on_the_wire_is_the_sdk_s_dump_of_the_guard_s_rejection_result(
    version: str, retry_at: float | None, last_error: str | None
) -> None:
    state = CircuitState.OPEN if retry_at is not None else CircuitState.FORCED_OPEN
    rejection = Rejection("d/boom", state, last_error, retry_at, lambda: 10.0)
    model = rejection_result("d", "boom", "d__boom", rejection)
    dumped = serialize_server_result(
        "tools/call", version, model.model_dump(by_alias=True, mode="json", exclude_none=True)
    )
    assert rejection_wire("d", "boom", "d__boom", rejection) == dumped


async def test_log_messages_a_child_writes_before_its_answer_reach_the_client_before_that_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with piped_proxy(monkeypatch, "noisy=flood:5:10") as pipes:
        await pipes.handshake()
        for n in range(1, 6):  # each call: five notifications/message, then the answer, from the child in that order
            pipes.write({"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": "noisy"}})
            seen: list[str] = []
            with anyio.fail_after(60):
                while not seen or seen[-1] != "answer":
                    data = json.loads(await pipes._in.readline())
                    seen.append("answer" if data.get("id") == n else data.get("method", "?"))
            assert seen == ["notifications/message"] * 5 + ["answer"], f"call {n}: {seen}"


ODD_CALLS = [
    b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "hi"}}}',
    json.dumps({"jsonrpc": "2.0", "id": "s-2", "method": "tools/call", "params": {
        "name": "echo", "arguments": {"n": None, "\u00e9": [1, 2.5, {"x": None}], "big": 2**70}, "_meta": {"k": "v"}}},
        ensure_ascii=False).encode(),
    b'{"id": 3, "method": "tools/call", "params": {"name": "echo", "arguments": {}}, "jsonrpc": "2.0"}',
    b'{"jsonrpc": "2.0", "id": 4.0, "method": "tools/call", "params": {"name": "echo", "arguments": {}}}',
    b'{"jsonrpc": "2.0", "id": true, "method": "tools/call", "params": {"name": "echo", "arguments": {}}}',
    b'{"jsonrpc": "1.0", "id": 6, "method": "tools/call", "params": {"name": "echo", "arguments": {}}}',
    b'{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": {}}, "x": 1}',
    b'{"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": ["echo"]}',
    b'{"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "boom", "arguments": {}}}',
    b'{"jsonrpc": "2.0", "id": 10, "method": "tools/call", "params": {"name": "nope", "arguments": {}}}',
    b'{"jsonrpc": "2.0", "id": 1180591620717411303424, "method": "tools/call", "params": {"name": "echo"}}',
    b'{"jsonrpc": "2.0", "id": 12, "method": "tools/call", "params": {"name": "echo", "arguments": {}, "x": 1}}',
]  # fmt: skip


async def _answer_lines(pipes: Pipes) -> list[str]:
    """The answer line to each of `ODD_CALLS`, as written (the echo's call counter aside)."""
    lines = []
    for line in ODD_CALLS:
        pipes._out.write(line + b"\n")
        with anyio.fail_after(60):
            while True:
                raw = await pipes._in.readline()
                if b'"id"' in raw:
                    break
        lines.append(re.sub(rb'"call": ?\d+', b'"call":N', raw).decode())
    return lines


async def test_calls_in_wire_form_are_answered_byte_for_byte_as_on_the_typed_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with piped_proxy(monkeypatch, "echo=healthy", "boom=error") as pipes:
        await pipes.handshake()
        wire = await _answer_lines(pipes)
        assert pipes.lane is not None and pipes.lane.taken >= 4
    monkeypatch.setattr(Lane, "intercept_line", lambda self, line: False)
    monkeypatch.setattr(lane_module, "WIRE_VERSIONS", ())
    async with piped_proxy(monkeypatch, "echo=healthy", "boom=error") as pipes:
        await pipes.handshake()
        typed = await _answer_lines(pipes)
    assert wire == typed
    assert '"result":{"content":[{"text":"hi","type":"text"}],"isError":false,' in wire[0]
