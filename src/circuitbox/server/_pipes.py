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
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from pydantic_core import to_json

from circuitbox.server._streams import _ReadStreamWrapper, offer_to
from circuitbox.server.malformed import judge_oversized, parse_line

logger = logging.getLogger("circuitbox")

# One JSON-RPC message per line: a tool argument may be megabytes, but a line over the limit (the contract's
# max_message_bytes) is dropped with a logged error instead of being buffered without end.
_LINE_LIMIT = 16 << 20
_KEEP = 512


def _is_pipe(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _on_asyncio() -> bool:
    """Whether this task runs on an asyncio loop (under trio there is none to attach pipes to)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@asynccontextmanager
async def stdio_pipes(
    stop_reading: anyio.Event | None = None, limit: int = _LINE_LIMIT
) -> AsyncIterator[tuple[Any, Any]]:
    """(read stream, write stream) for `Server.run`, on loop-native pipes when possible.

    `stop_reading` set: the read stream ends as if the client had closed stdin, so the server finishes (its last
    answers still written) instead of being cancelled mid-answer; used by shutdown. The SDK's fallback transport
    cannot stop reading: it is cancelled instead. A line over `limit` bytes (max_message_bytes) is dropped.
    """
    if not (_on_asyncio() and _is_pipe(0) and _is_pipe(1)):
        async with stdio_server() as (read, write):
            yield TappedStream(read), write  # no reader of ours: its `intercept` is never called
        return
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)
    stdin_file = os.fdopen(os.dup(0), "rb", buffering=0)
    stdout_file = os.fdopen(os.dup(1), "wb", buffering=0)
    read_transport: asyncio.ReadTransport | None = None
    try:
        read_transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin_file)
        write_transport, write_protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, stdout_file)
    except (OSError, ValueError) as exc:  # a pipe the loop cannot watch after all: the SDK's transport then
        logger.info("stdio: falling back to worker-thread pipes (%s)", exc)
        if read_transport is not None:
            read_transport.close()  # closes stdin_file too
        else:
            stdin_file.close()
        stdout_file.close()
        read_transport = None
    if read_transport is None:
        async with stdio_server() as (read, write):
            yield TappedStream(read), write
        return
    writer = asyncio.StreamWriter(write_transport, write_protocol, None, loop)
    # Only our dups reach the agent now: a stray print (fd 1) goes to stderr, a stray read (fd 0) sees EOF.
    saved_in, saved_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(2, 1)
    os.close(null)
    try:
        async with pipe_streams(reader, writer, stop_reading, limit) as streams:
            yield streams
    finally:
        read_transport.close()
        write_transport.close()
        os.dup2(saved_in, 0)
        os.dup2(saved_out, 1)
        os.close(saved_in)
        os.close(saved_out)


@asynccontextmanager
async def pipe_streams(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    stop_reading: anyio.Event | None = None,
    limit: int = _LINE_LIMIT,
) -> AsyncIterator[tuple[TappedStream, PipeWriter]]:
    """(read stream, write stream) for `Server.run` on a loop-connected pipe pair: a reader task parses each line
    (and offers it to the read stream's `intercept` first), answers are written by the tasks that send them."""
    to_server, server_reads = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    tapped = TappedStream(server_reads)
    server_writes = PipeWriter(writer)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_read_until, stop_reading, reader, to_server, limit, tapped)
        yield tapped, server_writes
        # The session closes its write stream when it ends; its answers are in the pipe transport's buffer,
        # which closing flushes. Stop reading (the reader may wait for a line that will never come).
        with anyio.move_on_after(2):
            await server_writes.closed.wait()
        tg.cancel_scope.cancel()


class TappedStream(_ReadStreamWrapper):
    """The server's read stream. `intercept`, when set (by the fast lane), sees each message the reader parsed
    before it is queued, in the reader's own task; True: taken, the server never sees it. A hop to the server's
    task saved per call is a task switch saved, the largest cost of a call after the pipe writes themselves."""

    intercept: Callable[[SessionMessage], bool] | None = None
    intercept_line: Callable[[bytes], bool] | None = None  # the same for a raw line, before it is parsed

    def offer_line(self, line: bytes) -> bool:
        """Whether `intercept_line` took `line` (then it is never parsed into a typed message); as `offer`."""
        return offer_to(
            self.intercept_line, line, logger, "stdio: the fast lane failed on a line; the server answers it"
        )

    def offer(self, item: SessionMessage | Exception) -> bool:
        """Whether `intercept` took `item`. Its failure is logged and the message goes to the server as usual."""
        if not isinstance(item, SessionMessage):
            return False
        return offer_to(self.intercept, item, logger, "stdio: the fast lane failed on a message; the server answers it")


async def _read_until(
    stop: anyio.Event | None,
    reader: asyncio.StreamReader,
    sink: MemoryObjectSendStream[SessionMessage | Exception],
    limit: int = _LINE_LIMIT,
    tap: TappedStream | None = None,
) -> None:
    """`_read_lines` until `stop` is set; the sink closes either way, so the server sees the input end."""
    async with anyio.create_task_group() as tg:
        if stop is not None:

            async def stopper() -> None:
                await stop.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(stopper)
        await _read_lines(reader, sink, limit, tap)
        tg.cancel_scope.cancel()


async def _read_lines(
    reader: asyncio.StreamReader,
    sink: MemoryObjectSendStream[SessionMessage | Exception],
    limit: int = _LINE_LIMIT,
    tap: TappedStream | None = None,
) -> None:
    skipping = False  # inside a line over the limit: drop everything up to its newline
    head = tail = b""  # of the line over the limit: its ends may name the id of the request to refuse
    async with sink:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as over:
                dropped = await reader.readexactly(over.consumed)  # what is buffered goes, the reader stays usable
                if not skipping:
                    logger.error("stdio: dropped a message over %d bytes (max_message_bytes)", limit)
                    head, tail = dropped[:_KEEP], b""
                tail = (tail + dropped)[-_KEEP:]
                skipping = True
                continue
            except asyncio.IncompleteReadError as eof:
                line = eof.partial  # a last line without its newline still counts; then the session ends
                if not line.strip():
                    return
            if skipping:  # the end of the line that was too long
                skipping = False
                item: SessionMessage | Exception = judge_oversized(head, (tail + line.rstrip(b"\r\n"))[-_KEEP:], limit)
            elif not line.strip() or (tap is not None and tap.offer_line(line)):
                continue
            else:
                item = parse_line(line)  # a malformed line is handed on as its refusal: AnswerMalformed answers it
                if tap is not None and tap.offer(item):
                    continue
            try:
                await sink.send(item)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return


class PipeWriter:
    """The write stream `Server.run` gets: each message is written to stdout by the task that sends it.

    A writer task behind a memory stream would cost every answer a task switch; the loop's pipe transport
    already buffers what the pipe cannot take at once, and `drain` holds a sender only while the agent is not
    reading (backpressure). Whole lines are written at once, so concurrent senders never interleave."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self.closed = anyio.Event()

    async def send(self, message: SessionMessage) -> None:
        """Raises:
        anyio.ClosedResourceError: after `aclose`.
        anyio.BrokenResourceError: the agent closed its end (its answers can no longer be delivered)."""
        if self.closed.is_set():
            raise anyio.ClosedResourceError
        if self._writer.transport.is_closing():
            raise anyio.BrokenResourceError
        data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
        try:
            self._writer.write(data.encode() + b"\n")
            await self._writer.drain()
        except ConnectionError as exc:
            logger.info("stdout closed: the agent has gone")
            raise anyio.BrokenResourceError from exc

    def send_nowait(self, message: SessionMessage) -> None:
        """`send` without waiting: for an answer given in the reader's task, which must never block.

        Raises:
            anyio.WouldBlock: the agent is not reading (the transport holds over its high-water mark): `send` it.
            anyio.ClosedResourceError, anyio.BrokenResourceError: as `send`."""
        self._writable_now()
        data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
        self._writer.write(data.encode() + b"\n")

    def send_data_nowait(self, data: dict[str, Any]) -> None:
        """`send_nowait` for a message as JSON-RPC has it (a dict of its fields in the model's order, as the fast
        lane answers a call in wire form): the same line, without a typed model built and dumped. Raises as
        `send_nowait`."""
        self._writable_now()
        self._writer.write(to_json(data) + b"\n")

    def _writable_now(self) -> None:
        if self.closed.is_set():
            raise anyio.ClosedResourceError
        transport = self._writer.transport
        if transport.is_closing():
            raise anyio.BrokenResourceError
        if transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]:
            raise anyio.WouldBlock

    async def aclose(self) -> None:
        self.closed.set()

    async def __aenter__(self) -> PipeWriter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
