"""tools/call to a downstream as a JSON-RPC exchange on its transport's streams, past the SDK's typed session.

The SDK's `ClientSession.send_request` dumps a typed request, runs it through its dispatcher (a memory stream per
request, a span, a timeout clock) and validates the answer against the negotiated version's schema before the
typed result is built. On the hot path circuitbox needs none of that: `DirectCalls` writes the request to the
transport's write stream itself, with an id of its own (`cb-N`, never one of the SDK's integers), and takes the
answer, and the progress notifications for its token, off the read stream before the session sees them; every other
message reaches the session as before. A transport whose reader offers a hook (a stdio child's `intercept`) gets
`DirectCalls.intercept`: an answer then completes its call in the reader's task, so the call wakes without a hop
through the session's receive loop; a child's reader offers its raw lines first (`intercept_line`), and an answer
of the common shape then completes its call without a typed message being built. A log message the server writes is
handed to `on_log` in that reader's task too, so it is queued for the client before any answer that follows it. The
caller owns the deadline: a cancelled call sends the downstream a `notifications/cancelled`, as the SDK does.

`plain_result` tells a result in the form the SDK's round trip (validated, dumped, sieved for a handshake-era
client) would give back unchanged, so the stdio upstream's lane can answer it as it came (`WireResult`).

Only for handshake-era sessions (a 2026-era request needs the SDK's per-request envelope) and only while traces
are off (the SDK's CLIENT span and its `traceparent` come from its dispatcher).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import anyio
import mcp_types as types
from mcp import MCPError
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp.shared.message import ClientMessageMetadata, SessionMessage
from mcp_types.methods import parse_server_notification
from pydantic import ValidationError
from pydantic_core import from_json

from circuitbox.server._sdk_private import later_revision_fields
from circuitbox.server._streams import _ReadStreamWrapper

logger = logging.getLogger("circuitbox.downstream")

ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]
CANCEL_WRITE_LIMIT = 1.0  # the courtesy cancel of an abandoned call may not hold its caller longer than this

_CLOSED = types.ErrorData(code=types.CONNECTION_CLOSED, message="Connection closed")
_ANSWER_KEYS = frozenset(("jsonrpc", "id", "result"))
_RESULT_KEYS = frozenset(("_meta", "content", "isError", "structuredContent"))
_TEXT_KEYS = frozenset(("_meta", "type", "text"))


class WireResult:
    """A tools/call result as the wire has it: what `plain_result` gave, to be answered as it is."""

    __slots__ = ("data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data


def plain_result(raw: dict[str, Any]) -> dict[str, Any] | None:
    """`raw` as the SDK's server would send it to a handshake-era client after validating it into a `CallToolResult`
    (dumped, then sieved by the version's schema: every handshake-era version has the same one, whose fields come
    in its own order), when it is a success of the common shape: text content, `structuredContent` and `_meta`
    objects, nothing else. None: anything else (an error result, other content, a field of another type, a key
    the models drop or default), for the typed path. A test holds this to the SDK's round trip."""
    if not _RESULT_KEYS.issuperset(raw):
        return None
    content = raw.get("content")
    error = raw.get("isError", False)
    if type(content) is not list or error is not False:
        return None
    items: list[dict[str, Any]] = []
    for item in content:
        if type(item) is not dict or item.get("type") != "text" or not _TEXT_KEYS.issuperset(item):
            return None
        text, meta = item.get("text"), item.get("_meta")
        if type(text) is not str:
            return None
        if meta is None:
            items.append({"text": text, "type": "text"})
        elif type(meta) is dict:
            items.append({"_meta": meta, "text": text, "type": "text"})
        else:
            return None
    data: dict[str, Any] = {}
    if "_meta" in raw:
        if type(raw["_meta"]) is not dict:
            return None
        data["_meta"] = raw["_meta"]
    data["content"] = items
    data["isError"] = False
    if "structuredContent" in raw:
        if type(raw["structuredContent"]) is not dict:
            return None
        data["structuredContent"] = raw["structuredContent"]
    return data


class _Pending:
    __slots__ = ("done", "on_progress", "outcome", "queued")

    def __init__(self, on_progress: ProgressFn | None) -> None:
        self.done = anyio.Event()
        self.on_progress = on_progress
        self.outcome: dict[str, Any] | types.ErrorData = _CLOSED
        self.queued = 0  # progress notes the hook let by that `receive` has not delivered yet


class SessionCalls(_ReadStreamWrapper):
    """What every past-the-session call path keeps of its session: the negotiated version, which the SDK's session
    sets here after initialize, and the `tools/call` fields later revisions added, left out for an older one."""

    _foreign: frozenset[str] = frozenset()

    @property
    def protocol_version(self) -> str:
        """The session's negotiated version: sent as a header, as the SDK's session does (HTTP transports use it)."""
        return self._version

    @protocol_version.setter
    def protocol_version(self, version: str) -> None:
        self._version = version
        self._foreign = later_revision_fields("tools/call", version) if version else frozenset()


class DirectCalls(SessionCalls):
    """Wraps a downstream transport's read stream (the one the SDK session reads) and sends calls on `write`."""

    def __init__(self, inner: Any, write: Any, protocol_version: str = "") -> None:
        super().__init__(inner)
        self._write = write
        self._pending: dict[str, _Pending] = {}
        self._next = 0
        self._closed = False
        self.protocol_version = protocol_version
        # The stdio child's writer takes a request's data as it is (`ChildInput.send_data`): no typed message.
        self._send_data = getattr(write, "send_data", None)
        self.on_log: Callable[[types.LoggingMessageNotification], None] | None = None

    async def receive(self) -> Any:
        while True:
            try:
                item = await self._inner.receive()
            except BaseException:
                self._close()
                raise
            if not self._pending or not isinstance(item, SessionMessage) or not self._take(item.message):
                return item
            await self._deliver_progress(item.message)

    def intercept(self, message: types.JSONRPCMessage) -> bool:
        """The reader's hook: whether it took `message`, an answer to one of our calls, which it completes at once.

        Progress notes keep the session's path; an answer behind a note for its call that is still on that path
        follows the note there, so a call never completes before its progress is relayed."""
        if isinstance(message, types.JSONRPCNotification):
            if message.method == "notifications/progress" and message.params:
                token = message.params.get("progressToken")
                pending = self._pending.get(token) if isinstance(token, str) else None
                if pending is not None:
                    pending.queued += 1
            elif message.method == "notifications/message" and self.on_log is not None:
                return self._log(message)
            return False
        return self._answer(message, hooked=True)

    def intercept_line(self, line: bytes) -> bool:
        """The reader's hook on a raw line, before it is parsed into a typed message: whether it took the line, an
        answer to one of our calls as JSON-RPC has it (`jsonrpc`, our id, a `result` object, nothing else), which
        completes that call at once. Anything else (errors, notes, the session's own traffic) is parsed as usual."""
        if not self._pending or b'"cb-' not in line:  # our ids: a scan is cheaper than a parse
            return False
        try:
            data = from_json(line)
        except ValueError:
            return False
        if type(data) is not dict or data.keys() != _ANSWER_KEYS or data["jsonrpc"] != "2.0":
            return False
        request_id, result = data["id"], data["result"]
        pending = self._pending.get(request_id) if type(request_id) is str else None
        if pending is None or pending.queued or type(result) is not dict:
            return False
        pending.outcome = result
        pending.done.set()
        return True

    def _log(self, message: types.JSONRPCNotification) -> bool:
        """A log message, validated as the session validates it, handed on in the order the server wrote it (the
        session would hand it on from a task of its own, after any answer behind it). An invalid one is the
        session's to drop, with its warning."""
        assert self.on_log is not None
        try:
            note = parse_server_notification(message.method, self._version or "2025-11-25", message.params)
        except (ValidationError, KeyError):
            return False
        if not isinstance(note, types.LoggingMessageNotification):
            return False
        self.on_log(note)
        return True

    def _take(self, message: Any) -> bool:
        """Whether `message` is for one of our calls; an answer completes that call at once."""
        if isinstance(message, types.JSONRPCNotification) and message.method == "notifications/progress":
            token = (message.params or {}).get("progressToken")
            return isinstance(token, str) and token in self._pending
        return self._answer(message)

    def _answer(self, message: Any, hooked: bool = False) -> bool:
        if not isinstance(message, types.JSONRPCResponse | types.JSONRPCError) or not isinstance(message.id, str):
            return False
        pending = self._pending.get(message.id)
        if pending is None or (hooked and pending.queued):
            return False
        if isinstance(message, types.JSONRPCResponse):
            pending.outcome = message.result
        else:
            pending.outcome = message.error
        pending.done.set()
        return True

    async def _deliver_progress(self, message: Any) -> None:
        params = message.params if isinstance(message, types.JSONRPCNotification) else None
        if not params:
            return
        pending = self._pending.get(params["progressToken"])
        if pending is None:
            return
        try:
            await self._relay_progress(pending, params)
        finally:
            if pending.queued:
                pending.queued -= 1

    async def _relay_progress(self, pending: _Pending, params: dict[str, Any]) -> None:
        progress = params.get("progress")
        if pending.on_progress is None or not isinstance(progress, int | float):
            return
        total = params.get("total")
        note = params.get("message")
        try:
            await pending.on_progress(
                progress, total if isinstance(total, int | float) else None, note if isinstance(note, str) else None
            )
        except Exception as exc:  # the caller's relay failing must not end the downstream's reader
            logger.debug("progress relay failed: %s", exc)

    def _close(self) -> None:
        """The transport ended: every call still waiting fails as the SDK fails its own (connection closed)."""
        self._closed = True
        for pending in self._pending.values():
            pending.done.set()

    async def call(self, params: dict[str, Any], on_progress: ProgressFn | None = None) -> dict[str, Any]:
        """One tools/call with `params` as the wire has them; the raw result.

        Raises:
            MCPError: the downstream answered with an error, or the connection closed.
        """
        if self._closed:
            raise MCPError(code=types.CONNECTION_CLOSED, message="Connection closed")
        self._next += 1
        request_id = f"cb-{self._next}"
        pending = self._pending[request_id] = _Pending(on_progress)
        meta = dict(params.get("_meta") or {})
        meta["progressToken"] = request_id  # always asked: progress extends the call's deadline
        data = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {**params, "_meta": meta}}
        written = False
        try:
            try:
                written = True
                if self._send_data is not None:
                    await self._send_data(data)
                else:
                    await self._write.send(self._message(data))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                raise MCPError(code=types.CONNECTION_CLOSED, message="Connection closed") from None
            await pending.done.wait()
        except anyio.get_cancelled_exc_class():
            if written and not pending.done.is_set():
                await self._cancel(request_id)
            raise
        finally:
            del self._pending[request_id]
        outcome = pending.outcome
        if isinstance(outcome, types.ErrorData):
            raise MCPError(code=outcome.code, message=outcome.message, data=outcome.data)
        if not self._foreign.isdisjoint(outcome):  # a later revision's fields: dropped, as the session drops them
            outcome = {key: value for key, value in outcome.items() if key not in self._foreign}
        return outcome

    def _message(self, data: dict[str, Any]) -> SessionMessage:
        # The header the SDK's session stamps on a handshake-era request (the HTTP transports send it).
        headers = {MCP_PROTOCOL_VERSION_HEADER: self._version} if self._version else None
        message = types.JSONRPCRequest.model_validate(data)
        return SessionMessage(message, ClientMessageMetadata(headers=headers))

    async def _cancel(self, request_id: str) -> None:
        notice = types.JSONRPCNotification(
            jsonrpc="2.0",
            method="notifications/cancelled",
            params={"requestId": request_id, "reason": "the call was abandoned"},
        )
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(CANCEL_WRITE_LIMIT),
            suppress(anyio.BrokenResourceError, anyio.ClosedResourceError),
        ):
            await self._write.send(SessionMessage(notice))
