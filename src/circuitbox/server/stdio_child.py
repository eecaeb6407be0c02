"""A stdio downstream's child process, from spawn to the end of its whole process group.

circuitbox owns this transport rather than using the SDK's `stdio_client` for what the SDK does not give it:

- the child gets only `HOME`, `PATH`, `SHELL` and `TERM` of circuitbox's environment, plus the server's `env`;
- it runs in a session of its own, and when the connection ends (a crash, a restart, shutdown) the whole group is
  ended, not only the leader: a `sh -c` or `npx` wrapper's children are never left behind with parent 1;
- a stdout line that is not JSON-RPC is dropped with one warning per burst (`BurstLog`), not one traceback per line;
- stderr lines are logged one by one under the server's name (rate-limited, secrets redacted).

The streams it yields are the ones the SDK's `ClientSession` takes: `SessionMessage`s in both directions. Neither
costs a call a task switch of its own: `ChildInput` writes a request to the child's stdin from the task that sends
it (`send_data`: a request as JSON-RPC has it, with no typed message), and the reader offers each raw line to
`ChildOutput.intercept_line`, then each parsed message to `ChildOutput.intercept` (DirectCalls' answers and log
messages), before the stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping, MutableSequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, TextIO

import anyio
import anyio.abc
import mcp_types as types
from mcp.shared.message import SessionMessage
from pydantic_core import to_json

from circuitbox.server._pipes import _on_asyncio
from circuitbox.server._streams import _ReadStreamWrapper, offer_to

logger = logging.getLogger("circuitbox.downstream")
stderr_logger = logging.getLogger("circuitbox.downstream.stderr")

SAFE_ENV = ("HOME", "PATH", "SHELL", "TERM")
"""What a stdio downstream inherits of circuitbox's own environment (its `env` comes on top)."""

EXIT_GRACE = 2.0  # after stdin closes, how long the server gets to exit by itself (as the SDK gives it)
KILL_GRACE = 2.0  # after SIGTERM to its group, before SIGKILL
FLUSH_GRACE = 0.5  # for what was already sent to leave the loop's buffer for the pipe
MAX_LINE = 16 * 1024 * 1024  # max_message_bytes: a longer stdout line is dropped, never buffered without end
STDERR_BURST = 100  # stderr lines logged per STDERR_WINDOW; the rest are counted and reported
STDERR_WINDOW = 10.0
TAIL_LINE = 500  # characters of a stderr line kept for circuit_status (a line may be megabytes long)


def child_environment(extra: Mapping[str, str], parent: Mapping[str, str] | None = None) -> dict[str, str]:
    """`SAFE_ENV` of `parent` (default: ours; shell functions never), then `extra`."""
    parent = os.environ if parent is None else parent
    env = {k: parent[k] for k in SAFE_ENV if k in parent and not parent[k].startswith("()")}
    return env | dict(extra)


class BurstLog:
    """Rate limit for one kind of repeated warning: the first of a burst is logged, then at most one every
    `interval` seconds, each saying how many were dropped since the last one."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = anyio.current_time) -> None:
        self._interval = interval
        self._clock = clock
        self._next = -math.inf
        self.dropped = 0

    def admit(self) -> int | None:
        """The number dropped since the last admitted one if this one should be logged, else None."""
        now = self._clock()
        if now < self._next:
            self.dropped += 1
            return None
        dropped, self.dropped = self.dropped, 0
        self._next = now + self._interval
        return dropped


class _Budget:
    """At most `burst` lines per `window` seconds; `take()` says whether this one may be logged."""

    def __init__(self, burst: int, window: float) -> None:
        self._burst, self._window = burst, window
        self._start = -math.inf
        self._used = 0
        self.dropped = 0

    def take(self) -> bool:
        now = anyio.current_time()
        if now - self._start >= self._window:
            self._start, self._used = now, 0
        self._used += 1
        if self._used > self._burst:
            self.dropped += 1
            return False
        return True


class ChildOutput(_ReadStreamWrapper):
    """The read stream of a child's parsed stdout; `intercept`, when set, sees every message first, in the reader's
    own task, and keeps those it returns True for off the stream (it must not block)."""

    intercept: Callable[[types.JSONRPCMessage], bool] | None = None
    intercept_line: Callable[[bytes], bool] | None = None  # the same, for a raw line before it is parsed

    def offer(self, message: types.JSONRPCMessage) -> bool:
        """Whether `intercept` took `message`. Its failure is logged and the message goes to the stream as usual:
        a bug in a hook must not end the child's reader."""
        failure = "the hook on a stdio child's output failed on a message; the session gets it"
        return offer_to(self.intercept, message, logger, failure)

    def offer_line(self, line: bytes) -> bool:
        """Whether `intercept_line` took `line` (then it is never parsed into a typed message); as `offer`."""
        failure = "the hook on a stdio child's output failed on a line; the session gets it"
        return offer_to(self.intercept_line, line, logger, failure)


class ChildInput:
    """The write stream a child's session gets: each message is written to the child's stdin by the task that
    sends it.

    A writer task behind a memory stream would cost every request a task switch; the loop's pipe transport
    already buffers what the pipe cannot take at once. A sender waits (`drain`) only while that buffer is over its
    high-water mark, before it writes: the child not reading holds senders back without their lines piling up, and
    a sender cancelled while it waits has written nothing. A line then goes to the transport in one synchronous
    write, so concurrent senders never interleave and a cancel never cuts one. A write that finds the pipe broken
    (the child closed its stdin or died) calls `on_broken`."""

    def __init__(self, writer: asyncio.StreamWriter, on_broken: Callable[[], None]) -> None:
        self._writer = writer
        self._on_broken = on_broken
        self._closed = False

    async def send(self, message: SessionMessage) -> None:
        """Raises:
        anyio.ClosedResourceError: after `aclose`.
        anyio.BrokenResourceError: the child no longer reads its stdin."""
        self._check()
        await self._send_line(message.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n")

    async def send_data(self, data: dict[str, Any]) -> None:
        """`send` of a message as JSON-RPC has it (a dict), without a typed message: the line is its JSON."""
        self._check()
        await self._send_line(to_json(data) + b"\n")

    async def _send_line(self, data: bytes) -> None:
        try:
            await self._writer.drain()  # at once unless the child is behind
        except ConnectionError as exc:
            self._on_broken()
            raise anyio.BrokenResourceError from exc
        self._check()  # it may have been closed or broken while we waited
        self._writer.write(data)
        if self._writer.transport.is_closing():  # the write itself hit a broken pipe: the line is lost
            self._on_broken()
            raise anyio.BrokenResourceError

    def _check(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._writer.transport.is_closing():  # a write now would be dropped without an error
            self._on_broken()
            raise anyio.BrokenResourceError

    async def flush(self) -> None:
        """Until everything written so far has left the loop's buffer for the pipe (or the pipe broke)."""
        transport = self._writer.transport
        if transport.is_closing():
            return
        transport.set_write_buffer_limits(high=0)  # drain waits for an empty buffer from now on
        with suppress(ConnectionError):
            await self._writer.drain()

    async def aclose(self) -> None:
        self._closed = True

    async def __aenter__(self) -> ChildInput:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


Streams = tuple[ChildOutput, ChildInput]


@asynccontextmanager
async def open_stdio_child(
    name: str,
    command: str,
    args: list[str],
    env: Mapping[str, str],
    cwd: str | None = None,
    *,
    errlog: TextIO | None = None,
    redact: Callable[[str], str] = str,
    max_line: int = MAX_LINE,
    stderr_tail: MutableSequence[str] | None = None,
) -> AsyncIterator[Streams]:
    """Spawn the server and yield (read, write) message streams; on exit, end its process group.

    `errlog`: where its stderr goes (a file); default: our log, a line at a time, under `name`, each line (redacted)
    also appended to `stderr_tail` (a bounded deque: its last words when it crash-loops). A stdout line over
    `max_line` bytes is dropped unparsed; when its first or last bytes name the id of a response, that request is
    answered with an error at once instead of waiting for its deadline.

    Raises:
        OSError: it cannot be spawned (no such command, not executable, bad cwd).
        RuntimeError: not on asyncio (its stdin is written through the loop's own pipe transport).
    """
    if not _on_asyncio():
        raise RuntimeError("a stdio downstream needs the asyncio backend")
    # Shielded: a cancel landing between the fork and the handle's return (the loop still connecting the pipes)
    # would leave a child nobody ends or reaps. Spawning is bounded; a pending cancel strikes once it is ours to end.
    with anyio.CancelScope(shield=True):
        process = await anyio.open_process(
            [command, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errlog if errlog is not None else subprocess.PIPE,
            env=child_environment(env),
            cwd=cwd,
            start_new_session=True,  # its own process group, ended as a whole
        )
    _GROUPS.add(process.pid)
    read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    output = ChildOutput(read_stream)
    # The loop's own writer under anyio's wrapper, whose `send` costs every write a trip through the loop.
    stdin: asyncio.StreamWriter = process._process.stdin  # type: ignore[attr-defined]
    # It stopped reading: the session must see the connection end.
    write_stream = ChildInput(stdin, on_broken=read_writer.close)
    stderr_done = anyio.Event()

    async def stdout_reader() -> None:
        assert process.stdout is not None
        garbage = BurstLog()
        async with read_writer:
            with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                async for line in _lines(process.stdout, name, max_line):
                    if isinstance(line, Oversized):
                        message: types.JSONRPCMessage | None = line.refusal(name, max_line)
                    elif output.offer_line(line):
                        continue
                    else:
                        message = _parse(line, name, garbage, redact)
                    if message is None:
                        continue
                    if not output.offer(message):
                        await read_writer.send(SessionMessage(message))
        if garbage.dropped:
            logger.warning("server %r: %d more stdout lines that are not JSON-RPC were ignored", name, garbage.dropped)

    async with anyio.create_task_group() as tg:
        tg.start_soon(stdout_reader)
        if process.stderr is not None:
            tg.start_soon(_log_stderr, process.stderr, name, redact, stderr_tail, stderr_done)
        else:
            stderr_done.set()
        try:
            yield output, write_stream
        finally:
            with anyio.CancelScope(shield=True):  # bounded: it must finish even when we are being cancelled
                await write_stream.aclose()
                with anyio.move_on_after(FLUSH_GRACE):
                    await write_stream.flush()
                await end_process_group(process)
                _GROUPS.discard(process.pid)
                with anyio.move_on_after(FLUSH_GRACE):  # its last words, often the reason it died
                    await stderr_done.wait()
                await _release(process)
                read_stream.close()
            tg.cancel_scope.cancel()


def _parse(line: bytes, name: str, garbage: BurstLog, redact: Callable[[str], str]) -> types.JSONRPCMessage | None:
    """The JSON-RPC message of a stdout line, or None (a warning per burst) when it is not one."""
    try:
        return types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    except ValueError:
        dropped = garbage.admit()
        if dropped is not None:
            more = f" ({dropped} more such lines since the last warning)" if dropped else ""
            sample = redact(line[:200].decode("utf-8", "replace"))
            logger.warning("server %r wrote a stdout line that is not JSON-RPC, ignored%s: %r", name, more, sample)
        return None


async def _release(process: anyio.abc.Process) -> None:
    """Close our ends of its pipes and the event loop's transport (else it warns when collected)."""
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                await stream.aclose()
    # anyio exposes no public close of the asyncio transport; the SDK's own stdio client reaches it the same way.
    transport = getattr(getattr(process, "_process", None), "_transport", None)
    close = getattr(transport, "close", None)
    if callable(close):
        with suppress(PermissionError):
            close()


@dataclass(frozen=True)
class Oversized:
    """A stdout line over the limit: only its first and last bytes are kept, to find the id it answers."""

    head: bytes
    tail: bytes

    def refusal(self, name: str, limit: int) -> types.JSONRPCError | None:
        """The error that answers the request this line was the response to, if its id can be read."""
        found = _HEAD_ID.match(self.head) or _TAIL_ID.search(self.tail)
        if found is None:
            return None
        request_id: types.RequestId = json.loads(found.group("id"))
        message = f"server {name!r} answered with a message over max_message_bytes ({limit} bytes); it was dropped"
        return types.JSONRPCError(
            jsonrpc="2.0", id=request_id, error=types.ErrorData(code=types.INTERNAL_ERROR, message=message)
        )


_ID = rb'(?P<id>"(?:[^"\\]|\\.){0,200}"|-?\d{1,19})'
# Where a response's own id sits: first (`{"jsonrpc":"2.0","id":1,"result":...`, as Python servers write it) or last
# (`...,"jsonrpc":"2.0","id":1}`, as TypeScript servers do); an "id" nested in the result is never at either end.
_HEAD_ID = re.compile(rb'\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*' + _ID + rb'\s*,\s*"(?:result|error)"')
_TAIL_ID = re.compile(rb'"id"\s*:\s*' + _ID + rb"\s*\}\s*$")
_KEEP = 512


async def _lines(
    stream: anyio.abc.ByteReceiveStream, name: str, limit: int = MAX_LINE, what: str = "stdout"
) -> AsyncIterator[bytes | Oversized]:
    """Non-empty lines of `stream` (without their newline); a line longer than `limit` is dropped with an error and
    stands as an `Oversized` of its ends."""
    buffer = bytearray()
    skipping = False
    head = tail = b""

    def over() -> bool:
        nonlocal head, tail, skipping
        if len(buffer) <= limit:
            return False
        logger.error("server %r wrote a %s line over %d bytes (max_message_bytes); dropped", name, what, limit)
        head, tail, skipping = bytes(buffer[:_KEEP]), bytes(buffer[-_KEEP:]), True
        buffer.clear()
        return True

    with suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
        async for chunk in stream:
            start = 0
            while (end := chunk.find(b"\n", start)) >= 0:
                if skipping:
                    tail = (tail + chunk[start:end])[-_KEEP:]
                else:
                    buffer += chunk[start:end]
                    over()  # a whole line too long within one chunk
                if skipping:
                    yield Oversized(head, tail)
                elif buffer.strip():
                    yield bytes(buffer)
                buffer.clear()
                skipping = False
                start = end + 1
            if skipping:
                tail = (tail + chunk[start:])[-_KEEP:]
            else:
                buffer += chunk[start:]
                over()


async def _log_stderr(
    stream: anyio.abc.ByteReceiveStream,
    name: str,
    redact: Callable[[str], str],
    tail: MutableSequence[str] | None,
    done: anyio.Event,
) -> None:
    try:
        await _read_stderr(stream, name, redact, tail)
    finally:
        done.set()


async def _read_stderr(
    stream: anyio.abc.ByteReceiveStream, name: str, redact: Callable[[str], str], tail: MutableSequence[str] | None
) -> None:
    budget = _Budget(STDERR_BURST, STDERR_WINDOW)
    reported = 0

    def report() -> None:
        nonlocal reported
        if budget.dropped > reported:
            stderr_logger.warning("[%s] %d stderr lines not logged (over %d per %gs)", name,
                                  budget.dropped - reported, STDERR_BURST, STDERR_WINDOW)  # fmt: skip
            reported = budget.dropped

    async for line in _lines(stream, name, what="stderr"):
        if isinstance(line, Oversized):  # already logged as dropped
            continue
        text = redact(line.decode("utf-8", "replace").rstrip())
        if tail is not None:  # every line, logged or not; masked before it is cut, so no secret is left half shown
            tail.append(text if len(text) <= TAIL_LINE else f"{text[:TAIL_LINE]}... ({len(text)} characters)")
        if budget.take():
            report()
            stderr_logger.info("[%s] %s", name, text)
    report()


# The process groups of the stdio downstreams alive right now (their leaders' pids), for `signal_every_group`.
_GROUPS: set[int] = set()


def signal_every_group(sig: int) -> int:
    """Send `sig` to every live downstream's whole process group at once; returns how many groups were signalled.

    For when the proxy has no time left for the graceful sequence of `end_process_group`: a client that closed our
    stdin sends SIGTERM two seconds later and SIGKILL two after that, and a proxy killed before its downstreams are
    ended leaves their trees orphaned.
    """
    return sum(_signal_group(pgid, sig) for pgid in list(_GROUPS))


async def end_process_group(process: anyio.abc.Process) -> None:
    """Close its stdin, give it `EXIT_GRACE` to exit, then SIGTERM its whole group and SIGKILL what is left.

    The group is signalled even when the leader has exited: its children may still be in it.
    """
    if process.stdin is not None:
        with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await process.stdin.aclose()
    await _wait(lambda: process.returncode is not None, EXIT_GRACE)
    pgid = process.pid  # start_new_session: the leader's pid is the group's id
    if not _signal_group(pgid, signal.SIGTERM):
        return
    if not await _wait(lambda: not _group_alive(pgid, process), KILL_GRACE):
        _signal_group(pgid, signal.SIGKILL)
        await _wait(lambda: process.returncode is not None, KILL_GRACE)


def _signal_group(pgid: int, sig: int) -> bool:
    """False when the group is already gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal: keep going, the rest still gets it
        logger.warning("could not signal every process of group %d", pgid)
    return True


def _group_alive(pgid: int, process: Any) -> bool:
    _ = process.returncode  # lets the event loop reap the leader, or its zombie keeps the group alive
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


async def _wait(done: Callable[[], bool], limit: float) -> bool:
    """Until `done()`, polled (a process's exit has no event to wait on here), at most `limit` seconds."""
    with anyio.move_on_after(limit):
        while not done():
            await anyio.sleep(0.01)
        return True
    return False
