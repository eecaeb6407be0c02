"""PipeWriter: the stdio upstream's write stream writes each message to the pipe from the sender's own task
(a real pipe and the loop's own pipe transport, as `serve` has them)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.message import SessionMessage

from circuitbox.server._pipes import PipeWriter
from circuitbox.server.lane import WireAnswer, answer_bytes

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the loop-native pipes exist on asyncio only


@asynccontextmanager
async def pipe() -> AsyncIterator[tuple[PipeWriter, int]]:
    read_fd, write_fd = os.pipe()
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, os.fdopen(write_fd, "wb"))
    try:
        yield PipeWriter(asyncio.StreamWriter(transport, protocol, None, loop)), read_fd
    finally:
        transport.close()
        with suppress(OSError):  # unless the test closed it
            os.close(read_fd)


def ping(n: int) -> SessionMessage:
    return SessionMessage(types.JSONRPCRequest(jsonrpc="2.0", id=n, method="ping"))


async def test_messages_sent_at_once_by_several_tasks_arrive_as_whole_lines() -> None:
    async with pipe() as (writer, read_fd), writer:
        async with anyio.create_task_group() as tg:
            for n in range(50):
                tg.start_soon(writer.send, ping(n))
        data = b""
        with anyio.fail_after(10):
            while data.count(b"\n") < 50:
                await anyio.wait_readable(read_fd)
                data += os.read(read_fd, 1 << 16)
    lines = data.splitlines()
    assert sorted(types.jsonrpc_message_adapter.validate_json(line).id for line in lines) == list(range(50))
    assert writer.closed.is_set()  # leaving `async with` closed it


async def test_a_send_after_close_or_after_the_agent_left_raises_the_stream_errors() -> None:
    async with pipe() as (writer, read_fd):
        os.close(read_fd)  # the agent went away
        with pytest.raises(anyio.BrokenResourceError):
            for n in range(1000):  # the transport notices at the first write that fails
                await writer.send(ping(n))
        with pytest.raises(anyio.BrokenResourceError):  # and so does every later send
            await writer.send(ping(0))
        await writer.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await writer.send(ping(0))


ANSWERS = [
    {"content": [{"text": "hi", "type": "text"}], "isError": False},
    {"content": [], "isError": False, "structuredContent": {"é": [1, 2.5, None, 2**70], "s": '"\\\n\u2028'}},
    {"_meta": {"k": {"nested": True}}, "content": [{"_meta": {}, "text": "", "type": "text"}], "isError": False},
]


async def _lines(read_fd: int, count: int) -> list[bytes]:
    data = b""
    with anyio.fail_after(10):
        while data.count(b"\n") < count:
            await anyio.wait_readable(read_fd)
            data += os.read(read_fd, 1 << 16)
    return data.splitlines(keepends=True)


@pytest.mark.parametrize("request_id", [7, "s-7", 2**62])
async def test_an_answer_in_wire_form_is_written_as_the_same_line_as_its_typed_message(request_id: Any) -> None:
    async with pipe() as (writer, read_fd), writer:
        for result in ANSWERS:
            answer = WireAnswer(request_id, result)
            writer.send_data_nowait(answer.data)
            writer.send_nowait(SessionMessage(types.JSONRPCResponse(jsonrpc="2.0", id=request_id, result=result)))
            writer.send_nowait(SessionMessage(answer.message()))
            wire, typed, round_trip = await _lines(read_fd, 3)
            assert wire == typed == round_trip
            assert wire == answer_bytes(answer) + b"\n"


async def test_a_wire_form_answer_raises_as_a_typed_one_when_it_cannot_be_written() -> None:
    answer = WireAnswer(1, ANSWERS[0])
    async with pipe() as (writer, read_fd), writer:
        writer._writer.transport.set_write_buffer_limits(high=0)
        writer._writer.write(b"x" * (1 << 20))  # more than the pipe holds: an agent that stopped reading
        with pytest.raises(anyio.WouldBlock):
            writer.send_data_nowait(answer.data)
    async with pipe() as (writer, read_fd):
        os.close(read_fd)  # the agent went away
        with pytest.raises(anyio.BrokenResourceError):
            for _ in range(1000):  # the transport notices at the first write that fails
                writer.send_data_nowait(answer.data)
        await writer.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            writer.send_data_nowait(answer.data)
