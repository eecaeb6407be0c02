"""The fast lane: tools/call from the stdio upstream answered next to the SDK's server, not through it.

Each request that reaches the SDK's low-level `Server` is validated against the negotiated version's schema (twice),
handed to a task through its dispatcher with a fresh context and session object, and its typed result is dumped and
validated again on the way out. For a call of a published downstream tool circuitbox needs none of that: the lane
wraps the read stream the server reads, takes such calls off it, runs them through `Proxy.call` (catalog, guard,
downstream: breaker, limits, deadlines, fallback and metrics all stay) and writes the answer on the write stream
itself, with the id the client gave. The answer is shaped exactly as the SDK would send it (its result dumped the
same way, sieved by the same per-version schema); progress and the client's `notifications/cancelled` for these
calls are handled here too. Everything else, and any call the lane is not sure of, goes to the SDK as before.

On the stdio upstream a call stays in wire form end to end when it can: the reader offers the lane each raw line
that names `tools/call` (`intercept_line`), whose JSON the lane judges as the SDK's envelope would; the guard hands
a plain success back as the downstream sent it (`WireResult`, `direct_calls.plain_result`), which is answered
without being validated, dumped and sieved again. Anything else takes the typed path, and answers the same.

Taken: `tools/call` of a tool in the catalog (not one of circuitbox's own) on a handshake-era connection after
`notifications/initialized`, with params of only `name`, `arguments` and `_meta`, while traces are off (the SDK's
span of the upstream request is the trace) and once the one upstream client is known (it answers what the
downstreams ask during a call, as on the SDK's path).

The HTTP upstream's lane (http_lane.py) shares what a call is and how it is answered: `takeable_call`, `published`
and `answer_call`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import mcp_types as types
from mcp.shared.jsonrpc_dispatcher import handler_exception_to_error_data
from mcp.shared.message import SessionMessage
from mcp_types.methods import serialize_server_result
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION
from pydantic_core import from_json, to_json

from circuitbox.observability import traces
from circuitbox.server import request_meta
from circuitbox.server._pipes import _on_asyncio
from circuitbox.server._streams import _ReadStreamWrapper
from circuitbox.server.direct_calls import WireResult

if TYPE_CHECKING:
    from circuitbox.server._pipes import TappedStream
    from circuitbox.server.proxy import Proxy

logger = logging.getLogger("circuitbox.lane")

PARAMS = frozenset(("name", "arguments", "_meta"))
ENVELOPE = frozenset(("jsonrpc", "id", "method", "params"))
MODERN_META = "io.modelcontextprotocol/protocolVersion"  # a 2026-era request's envelope: the SDK's to serve
CLOSING_WRITE_LIMIT = 2.0  # for the answers of calls cut short when the client's input ends
# The versions whose tools/call results are sieved by the schema `direct_calls.plain_result` gives the form of.
WIRE_VERSIONS = HANDSHAKE_PROTOCOL_VERSIONS


def takeable_call(params: dict[str, Any] | None) -> tuple[str, dict[str, Any] | None, dict[str, Any] | None] | None:
    """(name, arguments, `_meta`) of a handshake-era `tools/call` whose params the SDK's validation would accept
    as they are (only `name`, `arguments` and `_meta`, of their types, no 2026-era envelope), else None: the lanes
    leave anything else to the SDK, which validates and answers it."""
    if not params or not PARAMS.issuperset(params):
        return None
    name, arguments, meta = params.get("name"), params.get("arguments"), params.get("_meta")
    if not isinstance(name, str) or not (arguments is None or isinstance(arguments, dict)):
        return None
    if not (meta is None or (isinstance(meta, dict) and MODERN_META not in meta)):
        return None
    return name, arguments, meta


def published(proxy: Proxy, name: str) -> bool:
    """A downstream tool in the catalog (circuitbox's own tools are the SDK server's to answer)."""
    return name not in proxy.own and name in proxy.catalog.tools


async def answer_call(
    proxy: Proxy,
    request_id: types.RequestId,
    name: str,
    arguments: dict[str, Any] | None,
    meta: dict[str, Any] | None,
    version: str,
    progress: Any = None,
    *,
    wire: bool = False,
) -> Answer:
    """The call through `Proxy.call`, answered as the SDK's server answers its handler's result: dumped the same
    way and sieved by `version`'s schema, or a raising handler's error. `wire`: `version` is a handshake-era one,
    whose sieve a plain success (`WireResult`) has been through already; it is answered as a `WireAnswer`."""
    try:
        if meta is None and request_meta.current() is None:  # nothing to pass on: no context to set
            result = await proxy.call(name, arguments, progress, wire=wire)
        else:
            with request_meta.serving(meta):  # its `_meta` goes on to the downstream, as on the SDK's path
                result = await proxy.call(name, arguments, progress, wire=wire)
        return call_response(request_id, result, version)
    except Exception as exc:  # as the SDK's dispatcher answers a handler that raised
        error = handler_exception_to_error_data(exc)
        if error is None:
            logger.exception("tools/call %r failed", name)
            error = types.ErrorData(code=0, message=str(exc))
        return types.JSONRPCError(jsonrpc="2.0", id=request_id, error=error)


class WireAnswer:
    """The answer to a call whose result is in wire form (`WireResult`): the JSON-RPC response's fields, in the
    model's order, written as they are (`answer_bytes`, `PipeWriter.send_data_nowait`): the same line the SDK's
    transport writes for the `JSONRPCResponse`, without one being built and dumped."""

    __slots__ = ("data",)

    def __init__(self, request_id: types.RequestId, result: dict[str, Any]) -> None:
        self.data = {"jsonrpc": "2.0", "id": request_id, "result": result}

    def message(self) -> types.JSONRPCResponse:
        """As a typed message, for a write stream that takes only those."""
        return types.JSONRPCResponse.model_validate(self.data)


Answer = types.JSONRPCResponse | types.JSONRPCError | WireAnswer


def answer_bytes(answer: Answer) -> bytes:
    """`answer` as the SDK's transports write a message (before its framing)."""
    if isinstance(answer, WireAnswer):
        return to_json(answer.data)
    return answer.model_dump_json(by_alias=True, exclude_unset=True).encode()


def call_response(
    request_id: types.RequestId, result: types.CallToolResult | types.InputRequiredResult | WireResult, version: str
) -> types.JSONRPCResponse | WireAnswer:
    """A tools/call result as the SDK's server sends it: dumped the same way, sieved by `version`'s schema (a
    `WireResult` is in that form already)."""
    if isinstance(result, WireResult):
        return WireAnswer(request_id, result.data)
    data = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    data = serialize_server_result("tools/call", version, data)
    return types.JSONRPCResponse(jsonrpc="2.0", id=request_id, result=data)


class _Call:
    __slots__ = ("by_client", "scope")

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.by_client = False  # cancelled by the client's notifications/cancelled: no answer then


class Lane(_ReadStreamWrapper):
    """The upstream read stream, less the calls the lane answers itself on `write`."""

    def __init__(self, inner: Any, write: Any, proxy: Proxy, tg: anyio.abc.TaskGroup) -> None:
        super().__init__(inner)
        self._write = write
        self._send_data_nowait = getattr(write, "send_data_nowait", None)  # `PipeWriter`'s, for a `WireAnswer`
        self._proxy = proxy
        self._tg = tg
        self._version: str | None = None  # negotiated, once the client has initialized
        self._requested: str | None = None
        self._calls: dict[str, _Call] = {}
        self._idle: anyio.Event | None = None  # made when the client's input ends with calls still running
        self.taken = 0  # calls answered here (for tests and benchmarks)
        # On asyncio a call runs as a plain task of the loop: anyio's task group costs a call more than the rest of
        # the lane's own work (its handle, its name, its done callback). The lane keeps them and, when it ends,
        # cancels and awaits them itself (`_finish`), as the task group would.
        self._loop = asyncio.get_running_loop() if _on_asyncio() else None
        self._tasks: set[asyncio.Task[None]] = set()

    async def receive(self) -> Any:
        while True:
            try:
                item = await self._inner.receive()
            except anyio.EndOfStream:
                await self._close()
                raise
            if isinstance(item, SessionMessage) and self._take(item.message):
                continue
            return item

    def intercept(self, item: SessionMessage) -> bool:
        """A message as the stdio reader parsed it, in the reader's own task, before it is queued for the SDK's
        server: a call the lane takes is started (or, when its circuit refuses it, answered) here, without the hop
        to the server's task. Whatever it does not take goes on to `receive`, which judges it again."""
        message = item.message
        return (
            isinstance(message, types.JSONRPCRequest)
            and message.method == "tools/call"
            and self._call(message.id, message.params)
        )

    def intercept_line(self, line: bytes) -> bool:
        """`intercept` for a raw line, before the reader validates it into a typed message: a `tools/call` request
        the SDK's envelope would accept as it is (`jsonrpc` "2.0", a string or integer id, an object of params,
        no other key) that the lane takes. Anything else is validated and offered to `intercept` as before."""
        if b'"tools/call"' not in line or self._version is None:
            return False
        try:
            data = from_json(line)
        except ValueError:
            return False
        if type(data) is not dict or not ENVELOPE.issuperset(data) or data.get("method") != "tools/call":
            return False
        request_id, params = data.get("id"), data.get("params")
        if data.get("jsonrpc") != "2.0" or type(params) is not dict:
            return False
        if not (type(request_id) is str or (type(request_id) is int and -(2**63) <= request_id < 2**63)):
            return False
        return self._call(request_id, params)

    def _take(self, message: Any) -> bool:
        if isinstance(message, types.JSONRPCRequest):
            if message.method == "tools/call":
                return self._call(message.id, message.params)
            if message.method == "initialize":
                requested = (message.params or {}).get("protocolVersion")
                self._requested = requested if isinstance(requested, str) else None
        elif isinstance(message, types.JSONRPCNotification):
            if message.method == "notifications/cancelled":
                return self._cancel(message.params)
            if message.method == "notifications/initialized":
                # As the SDK negotiates: the client's version when it speaks it, else the latest handshake one.
                requested = self._requested
                self._version = requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION
        return False

    def _call(self, request_id: types.RequestId, params: dict[str, Any] | None) -> bool:
        taken = takeable_call(params)
        if self._version is None or taken is None or traces.active():
            return False
        name, arguments, meta = taken
        proxy = self._proxy
        if not published(proxy, name) or proxy.clients.count() != 1:
            return False
        token = meta.get("progressToken") if meta else None
        if token is not None and type(token) not in (str, int):  # the SDK's validation answers that
            return False
        key = str(request_id)
        if key in self._calls:  # a second request with an id still in flight: the SDK's to answer
            return False
        self.taken += 1
        answer = self._refused(request_id, name)
        if answer is not None:
            try:
                self._write.send_nowait(SessionMessage(answer))
                return True
            except anyio.WouldBlock:  # the agent is not reading: written by a task, with backpressure, below
                pass
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return True  # the agent has gone: nobody to answer
        call = self._calls[key] = _Call()
        if self._loop is None:
            self._tg.start_soon(self._serve, request_id, key, call, name, arguments, meta, token, answer)
            return True
        task = self._loop.create_task(self._serve(request_id, key, call, name, arguments, meta, token, answer))
        self._tasks.add(task)
        task.add_done_callback(self._served)
        return True

    def _served(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:  # a bug: the call's answer is lost
            logger.error("tools/call: the fast lane failed", exc_info=exc)

    async def _finish(self) -> None:
        """The lane ends: its calls still running are cut short and answered as when the client's input ends
        ("Connection closed"), and those running as plain tasks are awaited, as the task group awaits its own."""
        with anyio.CancelScope(shield=True):
            await self._close()
            if self._tasks:
                await asyncio.wait(list(self._tasks))

    def _refused(self, request_id: types.RequestId, name: str) -> types.JSONRPCResponse | None:
        """The fast-fail answer when the tool's circuit refuses the call at once (`Proxy.reject_now`), else None."""
        result = self._proxy.reject_now(name)
        return None if result is None else types.JSONRPCResponse(jsonrpc="2.0", id=request_id, result=result)

    def _cancel(self, params: dict[str, Any] | None) -> bool:
        request_id = (params or {}).get("requestId")
        call = self._calls.get(str(request_id)) if isinstance(request_id, str | int) else None
        if call is None:
            return False
        call.by_client = True
        call.scope.cancel()
        return True

    async def _serve(
        self,
        request_id: types.RequestId,
        key: str,
        call: _Call,
        name: str,
        arguments: Any,
        meta: dict[str, Any] | None,
        token: Any,
        answer: Answer | None = None,
    ) -> None:
        """The call, answered; `answer`: already answered (a fast-fail the pipe could not take at once)."""
        relay = self._progress_relay(token) if token is not None else None
        try:
            with call.scope:
                version = self._version
                assert version is not None
                if answer is None:
                    answer = await answer_call(
                        self._proxy, request_id, name, arguments, meta, version, relay, wire=version in WIRE_VERSIONS
                    )
            if answer is None and not call.by_client:  # cut short because the client's input ended
                closed = types.ErrorData(code=types.CONNECTION_CLOSED, message="Connection closed")
                answer = types.JSONRPCError(jsonrpc="2.0", id=request_id, error=closed)
            if answer is not None and not self._written(answer):
                with (
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(CLOSING_WRITE_LIMIT),
                    suppress(anyio.BrokenResourceError, anyio.ClosedResourceError),
                ):
                    await self._write.send(
                        SessionMessage(answer.message() if isinstance(answer, WireAnswer) else answer)
                    )
        finally:
            del self._calls[key]
            if not self._calls and self._idle is not None:
                self._idle.set()

    def _written(self, answer: Answer) -> bool:
        """Whether `answer` went out (or has nobody to go to) at once, without the shielded, bounded wait of a
        client that is not reading."""
        try:
            if isinstance(answer, WireAnswer):
                if self._send_data_nowait is not None:
                    self._send_data_nowait(answer.data)
                else:  # the SDK's fallback transport (not a pipe): its memory stream takes typed messages
                    self._write.send_nowait(SessionMessage(answer.message()))
            else:
                self._write.send_nowait(SessionMessage(answer))
        except anyio.WouldBlock:
            return False
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        return True

    def _progress_relay(self, token: types.ProgressToken) -> Any:
        async def relay(progress: float, total: float | None, message: str | None) -> None:
            params: dict[str, Any] = {"progressToken": token, "progress": progress}
            if total is not None:
                params["total"] = total
            if message is not None:
                params["message"] = message
            notice = types.JSONRPCNotification(jsonrpc="2.0", method="notifications/progress", params=params)
            await self._write.send(SessionMessage(notice))

        return relay

    async def _close(self) -> None:
        """The client's input ended: calls still running are cut short (as the SDK cuts its handlers) and their
        error answers written before the server, seeing the end, closes the write stream."""
        for call in self._calls.values():
            call.scope.cancel()
        if self._calls:
            self._idle = anyio.Event()
            with anyio.move_on_after(CLOSING_WRITE_LIMIT):
                await self._idle.wait()


@asynccontextmanager
async def fast_lane(proxy: Proxy, read: Any, write: Any, tap: TappedStream | None = None) -> AsyncIterator[Lane]:
    """The read stream to give the SDK's server, with the lane in front of it; `tap`: the stdio reader's stream,
    whose reader task then hands the lane its calls directly (`Lane.intercept`)."""
    async with anyio.create_task_group() as tg:
        lane = Lane(read, write, proxy, tg)
        if tap is not None:
            tap.intercept, tap.intercept_line = lane.intercept, lane.intercept_line
        try:
            yield lane
        finally:
            if tap is not None:
                tap.intercept = tap.intercept_line = None
            # First: a call cut short by its own scope still answers; the group's cancel would end it unanswered.
            await lane._finish()
            tg.cancel_scope.cancel()
