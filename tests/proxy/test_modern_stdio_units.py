"""Unit tests of the modern lane's stdio wire (modern_stdio.py) against a scripted peer on memory streams: answers
matched by id, progress by token, log messages to the requests in flight, what the era forbids refused, a cancel
passed on, a child that ends. The real round trip is in test_modern_lane.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.message import SessionMessage

from circuitbox.server.modern_stdio import StdioWire

pytestmark = pytest.mark.anyio


class Peer:
    """The child's side of the pipes: reads what the wire sends, writes what the test scripts."""

    def __init__(self) -> None:
        self.to_wire, self._wire_read = anyio.create_memory_object_stream[SessionMessage | Exception](10)
        self._wire_write, self.from_wire = anyio.create_memory_object_stream[SessionMessage](10)
        self.wire = StdioWire("srv", self._wire_read, self._wire_write)

    def close(self) -> None:
        for stream in (self.to_wire, self._wire_read, self._wire_write, self.from_wire):
            stream.close()

    async def received(self) -> Any:
        with anyio.fail_after(5):
            return (await self.from_wire.receive()).message

    async def say(self, message: Any) -> None:
        await self.to_wire.send(SessionMessage(types.jsonrpc_message_adapter.validate_python(message)))


@pytest.fixture
def peer() -> Iterator[Peer]:
    scripted = Peer()
    yield scripted
    scripted.close()


def note(method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params}


async def test_answers_come_back_by_id_with_each_requests_progress_and_the_log_messages_meanwhile(peer: Peer) -> None:
    seen: dict[str, list[Any]] = {"a": [], "b": []}

    async def call(name: str) -> Any:
        async def progress(value: float, total: float | None, message: str | None) -> None:
            seen[name].append(("progress", value))

        async def log(params: dict[str, Any]) -> None:
            seen[name].append(("log", params["data"]))

        return await peer.wire.send("tools/call", {"name": name}, "2026-07-28", None, progress, log)

    answers: dict[str, Any] = {}

    async def run(name: str) -> None:
        answers[name] = await call(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(peer.wire.run)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as calls:  # ends once both calls have their answer
                calls.start_soon(run, "a")
                first = await peer.received()
                calls.start_soon(run, "b")
                second = await peer.received()
                assert first.params["_meta"]["progressToken"] == first.id != second.id
                await peer.say(note("notifications/progress", {"progressToken": second.id, "progress": 5}))
                await peer.say(note("notifications/message", {"level": "info", "data": "both"}))  # names no request
                await peer.say(note("notifications/resources/updated", {"uri": "x://y"}))  # not the lane's to relay
                await peer.say({"jsonrpc": "2.0", "id": second.id, "result": {"content": [], "n": 2}})  # out of order
                await peer.say({"jsonrpc": "2.0", "id": 999, "result": {}})  # answers nothing in flight: dropped
                await peer.say({"jsonrpc": "2.0", "id": first.id, "error": {"code": -32602, "message": "bad"}})
        tg.cancel_scope.cancel()
    assert answers["b"]["result"] == {"content": [], "n": 2}
    assert answers["a"]["error"] == {"code": -32602, "message": "bad"}
    assert seen == {"a": [("log", "both")], "b": [("progress", 5), ("log", "both")]}


async def test_a_request_from_the_server_is_refused_as_the_era_forbids_it(peer: Peer) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(peer.wire.run)
        await peer.say({"jsonrpc": "2.0", "id": "s1", "method": "sampling/createMessage", "params": {}})
        refusal = await peer.received()
        tg.cancel_scope.cancel()
    assert isinstance(refusal, types.JSONRPCError) and refusal.id == "s1"
    assert refusal.error.code == types.METHOD_NOT_FOUND


async def test_a_cancelled_request_is_cancelled_on_the_child_too(peer: Peer) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(peer.wire.run)
        with anyio.move_on_after(5) as waited:
            async with anyio.create_task_group() as calls:
                calls.start_soon(peer.wire.send, "tools/call", {"name": "slow"}, "2026-07-28", None, None)
                request = await peer.received()
                calls.cancel_scope.cancel()
        cancel = await peer.received()
        tg.cancel_scope.cancel()
    assert not waited.cancelled_caught
    assert isinstance(cancel, types.JSONRPCNotification) and cancel.method == "notifications/cancelled"
    assert cancel.params is not None and cancel.params["requestId"] == request.id
    assert "progressToken" not in request.params.get("_meta", {})  # no progress asked for, none requested


async def test_when_the_child_ends_every_request_waiting_and_every_later_one_is_told_its_connection_closed(
    peer: Peer,
) -> None:
    answers: list[Any] = []

    async def call() -> None:
        answers.append(await peer.wire.send("tools/call", {"name": "t"}, "2026-07-28", None, None))

    async with anyio.create_task_group() as tg:
        tg.start_soon(peer.wire.run)
        tg.start_soon(call)
        await peer.received()
        await peer.to_wire.send(ValueError("not JSON-RPC"))  # logged, not fatal
        await peer.to_wire.aclose()  # its stdout ends
        with anyio.fail_after(5):
            await peer.wire.closed.wait()
    await call()
    assert [answer["error"]["code"] for answer in answers] == [types.CONNECTION_CLOSED, types.CONNECTION_CLOSED]


async def test_a_child_that_stopped_reading_its_stdin_is_a_closed_connection_at_once(peer: Peer) -> None:
    peer.from_wire.close()
    with anyio.fail_after(5):
        answer = await peer.wire.send("tools/call", {"name": "t"}, "2026-07-28", None, None)
    assert answer["error"]["code"] == types.CONNECTION_CLOSED
