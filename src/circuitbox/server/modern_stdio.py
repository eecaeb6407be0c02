"""The modern lane's wire to a stdio downstream: a child process of its own that speaks 2026-07-28.

A stdio connection serves one protocol era, chosen by its first request, and the downstream's main connection is
the handshake one. So a 2026-era client's interactive request goes to a second child of the same command whose
connection was opened with `server/discover`: each request carries its own envelope there, as over HTTP.

JSON-RPC over its pipes, answers matched by id. A request's progress (its token) and the server's log messages
reach that request's waiting task, which relays them; a pipe carries no request id on a notification, so a log
message goes to every request in flight on the child (a shared connection's log reaches every client the same way):
2026-07-28 has no key that relates a notification to its request, its stdio transport correlating only those of a
subscription (`io.modelcontextprotocol/subscriptionId`, the one key of a notification's `_meta` in its schema).
The era forbids the server to ask anything of its client: such a request is answered -32601 at once.

Those children are the server's processes too: `ChildRecord` counts their restarts and deaths (a crash loop of their
own, apart from the main connection's, which serves every handshake-era client meanwhile), holds back the next start
for a backoff after a death, and their stderr joins the server's own last lines.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, MutableSequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types as types
from mcp.shared.message import SessionMessage

from circuitbox.config.load import ServerConfig
from circuitbox.server.transports import open_transport

if TYPE_CHECKING:
    from circuitbox.server.downstream import Backoff

logger = logging.getLogger("circuitbox.modern_lane")

Progress = Callable[[float, float | None, str | None], Awaitable[None]]
Log = Callable[[dict[str, Any]], Awaitable[None]]

NOTES_PER_REQUEST = 1000  # notifications waiting for one request's relay; past it they are dropped


@dataclass
class _Pending:
    progress: Progress | None
    log: Log | None
    notes: deque[types.JSONRPCNotification] = field(default_factory=deque)
    answer: dict[str, Any] | None = None
    arrived: anyio.Event = field(default_factory=anyio.Event)

    def put(self, note: types.JSONRPCNotification) -> None:
        if len(self.notes) < NOTES_PER_REQUEST:
            self.notes.append(note)
            self.arrived.set()


class StdioWire:
    """Requests on one 2026-era stdio connection; `run()` reads its answers until the child's stdout ends."""

    def __init__(self, server: str, read: Any, write: Any) -> None:
        self.server = server
        self._read = read
        self._write = write
        self._pending: dict[int, _Pending] = {}
        self._ids = 0
        self.closed = anyio.Event()

    async def send(
        self,
        method: str,
        params: dict[str, Any],
        version: str,
        headers: dict[str, str] | None,
        progress: Progress | None,
        log: Log | None = None,
    ) -> Any:
        """The JSON-RPC answer (a dict with `result` or `error`) to one request; cancelling it cancels it there.

        `version` and `headers` are HTTP's: on a pipe the envelope in `_meta` says it all.
        """
        if self.closed.is_set():
            return _closed(self.server)
        self._ids += 1
        request_id = self._ids
        if progress is not None:
            params["_meta"] = {**params.get("_meta", {}), "progressToken": request_id}
        pending = self._pending[request_id] = _Pending(progress, log)
        try:
            request = types.JSONRPCRequest(jsonrpc="2.0", id=request_id, method=method, params=params)
            await self._write.send(SessionMessage(request))
            return await self._answer(pending)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return _closed(self.server)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await self._cancel(request_id)
            raise
        finally:
            del self._pending[request_id]

    async def _answer(self, pending: _Pending) -> dict[str, Any]:
        while True:
            while pending.notes:
                await _relay(pending, pending.notes.popleft())
            if pending.answer is not None:
                return pending.answer
            pending.arrived = anyio.Event()
            await pending.arrived.wait()

    async def _cancel(self, request_id: int) -> None:
        params = {"requestId": request_id, "reason": "the client's request was cancelled"}
        cancel = types.JSONRPCNotification(jsonrpc="2.0", method="notifications/cancelled", params=params)
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._write.send(SessionMessage(cancel))

    async def run(self) -> None:
        """Read until the child's stdout ends; then every request still waiting is answered "connection closed"."""
        try:
            async for item in self._read:
                if isinstance(item, Exception):
                    logger.warning("server %r sent something that is not MCP: %s", self.server, item)
                else:
                    await self._take(item.message)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass
        finally:
            self.closed.set()
            for pending in self._pending.values():
                pending.answer = _closed(self.server)
                pending.arrived.set()

    async def _take(self, message: types.JSONRPCMessage) -> None:
        if isinstance(message, types.JSONRPCResponse | types.JSONRPCError):
            pending = self._pending.get(message.id) if isinstance(message.id, int) else None
            if pending is not None:
                pending.answer = message.model_dump(by_alias=True, mode="json", exclude_none=True)
                pending.arrived.set()
        elif isinstance(message, types.JSONRPCRequest):
            refusal = types.ErrorData(
                code=types.METHOD_NOT_FOUND, message=f"{message.method} is not served to a 2026-07-28 server"
            )
            with anyio.move_on_after(1):
                await self._write.send(SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=message.id, error=refusal)))
        elif message.method == "notifications/progress":
            pending = self._pending.get((message.params or {}).get("progressToken"))  # type: ignore[arg-type]
            if pending is not None:
                pending.put(message)
        elif message.method == "notifications/message":
            for pending in self._pending.values():
                pending.put(message)
        else:
            logger.debug("server %r: a %s on its 2026-era connection was not relayed", self.server, message.method)


async def _relay(pending: _Pending, note: types.JSONRPCNotification) -> None:
    params = note.params or {}
    if note.method == "notifications/progress" and pending.progress is not None:
        await pending.progress(params.get("progress", 0), params.get("total"), params.get("message"))
    elif note.method == "notifications/message" and pending.log is not None:
        await pending.log(dict(params))


def _closed(server: str) -> dict[str, Any]:
    error = {"code": types.CONNECTION_CLOSED, "message": f"server {server!r}: its 2026-era connection closed"}
    return {"jsonrpc": "2.0", "id": None, "error": error}


class ChildRecord:
    """What the 2026-era children of one stdio server have done, across its connections (its Downstream keeps the
    record; each connection's lane starts children of its own): how often one was started again, the deaths within
    `crash_loop_window` that make a crash loop, and when the next one may start (`backoff`, as the main connection's:
    a child that dies at once is not started again in a tight loop by the requests that keep coming)."""

    def __init__(self, server: ServerConfig, backoff: Backoff, stderr_tail: MutableSequence[str] | None = None) -> None:
        self.server = server.name
        self._limit = server.crash_loop_restarts
        self._window = server.crash_loop_window
        self._backoff = backoff
        self.stderr_tail = stderr_tail
        """Where its stderr lines go (masked): the server's own tail, so a crash loop shows its last words."""
        self.state: str | None = None
        """None until a child is first started; then starting, running, restarting, crash_loop or stopped."""
        self.restarts = 0
        """Children started after the first."""
        self.last_error: str | None = None
        self._deaths: deque[float] = deque()
        self._failures = 0  # deaths in a row of children that did not stay up for `stable_after`
        self._began = 0.0
        self._retry_at = -math.inf

    def starting(self) -> None:
        if self.state is not None:
            self.restarts += 1
        self.state, self._began = "starting", anyio.current_time()

    def running(self) -> None:
        self.state, self.last_error = "running", None

    def stopped(self, why: str | None = None) -> None:
        """No child runs and none will on this connection (it ended, or its child did not speak the era)."""
        self.state = "stopped"
        self.last_error = why or self.last_error

    def died(self, why: str) -> None:
        """A child's stdout ended while it was ours: a death, counted in the crash-loop window."""
        now = anyio.current_time()
        self._deaths.append(now)
        while self._deaths[0] < now - self._window:
            self._deaths.popleft()
        stable = now - self._began >= self._backoff.stable_after  # it had been up long enough: a fresh start
        self._failures = 1 if stable else self._failures + 1
        delay = self._backoff.delay(self._failures)
        self._retry_at = now + delay
        self.state = "crash_loop" if len(self._deaths) >= self._limit else "restarting"
        self.last_error = why
        logger.warning("server %r: the child serving 2026-era requests died (%s); a next one waits %.1fs",
                       self.server, why, delay)  # fmt: skip
        if self.state == "crash_loop":
            logger.error(
                "server %r: its 2026-era child is in a crash loop: %d deaths within %gs, %d restarts so far; its "
                "stderr ended with: %s", self.server, len(self._deaths), self._window, self.restarts,
                self.stderr_tail[-1] if self.stderr_tail else "(nothing)",
            )  # fmt: skip

    async def backoff(self) -> None:
        """Until the next child may start: at once unless the last one died less than its backoff ago."""
        await anyio.sleep(max(0.0, self._retry_at - anyio.current_time()))

    def status(self) -> dict[str, Any] | None:
        """What `server_status` shows of it (None before any child was started)."""
        if self.state is None:
            return None
        return {"state": self.state, "restarts": self.restarts, "last_error": self.last_error}


@asynccontextmanager
async def open_stdio_wire(
    server: ServerConfig, max_message_bytes: int, stderr_tail: MutableSequence[str] | None = None
) -> AsyncIterator[StdioWire]:
    """A child of `server`'s command and the wire to it, its answers read in a task; the child ends on exit. Its
    stderr is logged as the server's, each line (masked) also onto `stderr_tail`."""
    opened = open_transport(server, redact=server.redact, max_message_bytes=max_message_bytes, stderr_tail=stderr_tail)
    async with opened as (read, write):
        wire = StdioWire(server.name, read, write)
        async with anyio.create_task_group() as tg:
            tg.start_soon(wire.run, name=f"{server.name}: 2026-era answers")
            yield wire
            tg.cancel_scope.cancel()
