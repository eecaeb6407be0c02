"""The upstream stdio transport, on the event loop's own pipe support instead of worker threads.

The SDK's `stdio_server` reads and writes through `anyio.wrap_file`: every line read and every answer written (a
write and a flush) is a hop to a worker thread and back, three per request. On asyncio, when stdin and stdout are
pipes (as they are when an agent client launches us), the loop can watch the file descriptors directly. Anything
else (a terminal, a regular file, trio) falls back to the SDK's transport.

Like the SDK, it takes fds 0 and 1 for itself while serving and points them at the null device and at stderr, so
that nothing else in the process (a stray print, a library's banner) can write into the protocol stream.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
import sniffio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage

logger = logging.getLogger("circuitbox")

# One JSON-RPC message per line, whatever its size: a tool argument may be megabytes.
_LINE_LIMIT = 1 << 28


def _is_pipe(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


@asynccontextmanager
async def stdio_pipes() -> AsyncIterator[tuple[Any, Any]]:
    """(read stream, write stream) for `Server.run`, on loop-native pipes when possible."""
    if sniffio.current_async_library() != "asyncio" or not (_is_pipe(0) and _is_pipe(1)):
        async with stdio_server() as streams:
            yield streams
        return
    stdin_fd, stdout_fd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    saved_in, saved_out = os.dup(0), os.dup(1)
    os.dup2(null, 0)
    os.dup2(2, 1)
    os.close(null)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_LINE_LIMIT)
    read_transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(stdin_fd, "rb", buffering=0)
    )
    write_transport, write_protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(stdout_fd, "wb", buffering=0)
    )
    writer = asyncio.StreamWriter(write_transport, write_protocol, None, loop)
    to_server, server_reads = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    server_writes, from_server = anyio.create_memory_object_stream[SessionMessage](0)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_read_lines, reader, to_server)
            tg.start_soon(_write_messages, from_server, writer)
            yield server_reads, server_writes
            tg.cancel_scope.cancel()
    finally:
        read_transport.close()
        write_transport.close()
        os.dup2(saved_in, 0)
        os.dup2(saved_out, 1)
        os.close(saved_in)
        os.close(saved_out)


async def _read_lines(reader: asyncio.StreamReader, sink: MemoryObjectSendStream[SessionMessage | Exception]) -> None:
    async with sink:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as eof:
                line = eof.partial  # a last line without its newline still counts; then the session ends
                if not line.strip():
                    return
            if not line.strip():
                continue
            try:
                item: SessionMessage | Exception = SessionMessage(
                    types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                )
            except Exception as exc:  # handed on like the SDK does: AnswerMalformed answers what it can
                item = exc
            try:
                await sink.send(item)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return


async def _write_messages(source: MemoryObjectReceiveStream[SessionMessage], writer: asyncio.StreamWriter) -> None:
    async with source:
        async for message in source:
            data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
            writer.write(data.encode() + b"\n")
            try:
                await writer.drain()
            except ConnectionError:  # the agent went away: nothing left to answer
                logger.info("stdout closed: the agent has gone")
                return
