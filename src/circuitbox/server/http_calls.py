"""tools/call to a streamable HTTP downstream as a POST of circuitbox's own, past the SDK's HTTP client.

The SDK's `streamable_http_client` takes every message through a memory stream to its post writer, a task per POST,
typed parsing of each event and another memory stream back to the session; and it closes an answered POST before
its event stream has ended, which costs the connection: every call opened a new one. On the hot path `HttpCalls`
POSTs the JSON-RPC request itself on the connection's client (the configured headers are its defaults) with the
headers the SDK's session sends (`mcp-session-id`, as the SDK's own requests carry it, and
`mcp-protocol-version`), and reads the answer as JSON or off the POST's event stream: progress for the call's token
goes to the caller, anything else on that stream (a server request, a log message) to the session, in order, as the
SDK's transport would hand it over. An answered stream is read to its end when the server ends it at once, so its
connection goes back to the pool.

Errors read as on the SDK's client: a request that fails before its answer began (the server is gone) ends the
whole transport, so the owner reconnects, and the call fails as "Connection closed"; a broken event stream fails
only its call; HTTP statuses and bodies become the JSON-RPC errors the SDK makes of them. A cancelled call sends
`notifications/cancelled` through the SDK's transport, as `DirectCalls` does. An event stream that ends unanswered
after events with ids is resumed from the last one, as the SDK's client resumes it.

Only for handshake-era sessions while traces are off, as `DirectCalls`.
"""

from __future__ import annotations

import contextvars
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, cast

import anyio
import httpx2
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import MCPError
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from circuitbox.server._sdk_private import stream_within_origin, unfollowed_redirect
from circuitbox.server._streams import _ReadStreamWrapper
from circuitbox.server.direct_calls import CANCEL_WRITE_LIMIT, ProgressFn, SessionCalls

logger = logging.getLogger("circuitbox.downstream")

MCP_SESSION_ID = "mcp-session-id"
DRAIN_LIMIT = 0.5  # how long an answered event stream may take to end before its connection is given up
DRAIN_STRIKES = 3  # answered streams in a row held open past it before none is waited for any more
_POST_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}

LAST_EVENT_ID = "last-event-id"
RESUME_FAILURES = 2  # failed attempts in a row to resume an event stream before its call fails (the SDK's count)
RESUME_DELAY_MS = 1000  # before a resumption, when the server named no retry interval (the SDK's default)

Envelope = tuple[contextvars.Context | None, Any]  # the sender's context travels with a message, as in the SDK


@dataclass(frozen=True, slots=True)
class _Resume:
    """Where an event stream resumes: the last event id it carried and the server's retry interval."""

    last_id: str | None = None
    retry_ms: int = RESUME_DELAY_MS

    def after(self, event: httpx2.ServerSentEvent) -> _Resume:
        if not event.id and event.retry is None:
            return self
        retry = self.retry_ms if event.retry is None else event.retry
        return _Resume(event.id or self.last_id, retry)


class HttpLink:
    """One streamable HTTP connection, as its calls need it: the client, the endpoint, the session's id and the
    stream into the session."""

    def __init__(self, client: httpx2.AsyncClient, url: str, max_event_size: int, into: MemoryObjectSendStream[Any]):
        self.client = client
        self.url = url
        self.max_event_size = max_event_size
        self.session_id: str | None = None
        self.closed = False
        self.failure: Exception | None = None
        self.held = 0  # answered streams in a row the server held open: past DRAIN_STRIKES, closed as the SDK does
        self._into = into
        self._calls: set[anyio.CancelScope] = set()

    async def observe(self, request: httpx2.Request) -> None:
        """httpx's request hook: the session id the SDK's client sends is the session's."""
        session_id = request.headers.get(MCP_SESSION_ID)
        if session_id is not None:
            self.session_id = session_id

    async def deliver(self, message: SessionMessage) -> None:
        """To the session, as the SDK's transport delivers what it reads (in the sending task's context)."""
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):  # the session is gone: so is its reader
            await self._into.send((contextvars.copy_context(), message))

    def fail(self, exc: Exception) -> None:
        """The server could not be reached: the session sees its transport end (as the SDK's client ends on it)."""
        if self.failure is None:
            self.failure = exc
        self._into.close()

    def close(self) -> None:
        """The connection is being closed: every call still in flight fails as "Connection closed"."""
        self.closed = True
        for scope in self._calls:
            scope.cancel()


class HttpRead(_ReadStreamWrapper):
    """What the session reads: the SDK transport's messages and those a call's own POST carried for the session."""

    def __init__(self, inner: MemoryObjectReceiveStream[Envelope], link: HttpLink) -> None:
        super().__init__(inner)
        self.link = link
        self.last_context: contextvars.Context | None = None  # read by the SDK's dispatcher, as on its own streams

    async def receive(self) -> Any:
        self.last_context, item = await self._inner.receive()
        return item


def http_link(read: Any) -> HttpLink | None:
    """The link behind a transport's read stream, when `open_http_link` made it."""
    return read.link if isinstance(read, HttpRead) else None


@asynccontextmanager
async def open_http_link(
    client: httpx2.AsyncClient, url: str, streams: tuple[Any, Any], max_event_size: int
) -> AsyncIterator[tuple[HttpRead, Any]]:
    """(read, write) for a session over the SDK's `streamable_http_client` `streams` on `client`, with a link for
    `HttpCalls`.

    Raises:
        httpx2.TransportError: a call could not reach the server, which ended the transport.
    """
    read, write = streams
    into, merged = anyio.create_memory_object_stream[Envelope](0)
    link = HttpLink(client, url, max_event_size, into)
    client.event_hooks["request"].append(link.observe)

    async def pump() -> None:
        with suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            while True:
                item = await read.receive()
                await into.send((getattr(read, "last_context", None), item))
        into.close()  # the transport ended: so does what the session reads

    with into, merged:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pump)
            try:
                yield HttpRead(merged, link), write
            finally:
                link.close()
                tg.cancel_scope.cancel()
    if link.failure is not None:
        raise link.failure


class HttpCalls(SessionCalls):
    """Wraps the read stream the session reads (progress for a call that arrives there is taken, as `DirectCalls`
    takes it) and sends calls as POSTs of their own on `link`."""

    def __init__(self, inner: Any, write: Any, link: HttpLink, protocol_version: str = "") -> None:
        super().__init__(inner)
        self._write = write
        self._link = link
        self._next = 0
        self._progress: dict[str, ProgressFn] = {}
        self.protocol_version = protocol_version

    async def receive(self) -> Any:
        while True:
            item = await self._inner.receive()
            if not self._progress or not isinstance(item, SessionMessage):
                return item
            message = item.message
            if not isinstance(message, types.JSONRPCNotification) or message.method != "notifications/progress":
                return item
            params = message.params or {}
            token = params.get("progressToken")
            relay = self._progress.get(token) if isinstance(token, str) else None
            if relay is None:
                return item
            await _relay_progress(relay, params)

    async def call(self, params: dict[str, Any], on_progress: ProgressFn | None = None) -> dict[str, Any]:
        """One tools/call with `params` as the wire has them; the raw result.

        Raises:
            MCPError: the downstream answered with an error, or the connection failed or closed.
        """
        link = self._link
        if link.closed or link.failure is not None:
            raise MCPError(code=types.CONNECTION_CLOSED, message="Connection closed")
        self._next += 1
        request_id = f"cb-{self._next}"
        meta = dict(params.get("_meta") or {})
        meta["progressToken"] = request_id  # always asked: progress extends the call's deadline
        message = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {**params, "_meta": meta}}
        headers = {**_POST_HEADERS, **self._session_headers()}
        if on_progress is not None:
            self._progress[request_id] = on_progress
        scope = anyio.CancelScope()
        link._calls.add(scope)
        outcome: dict[str, Any] | types.ErrorData | None = None
        try:
            with scope:
                outcome = await self._post(request_id, json.dumps(message).encode(), headers, on_progress)
        except anyio.get_cancelled_exc_class():
            if outcome is None and not link.closed:
                await self._cancel(request_id)
            raise
        finally:
            link._calls.discard(scope)
            self._progress.pop(request_id, None)
        if outcome is None:  # cancelled by the link's close
            raise MCPError(code=types.CONNECTION_CLOSED, message="Connection closed")
        if isinstance(outcome, types.ErrorData):
            raise MCPError(code=outcome.code, message=outcome.message, data=outcome.data)
        if not self._foreign.isdisjoint(outcome):  # a later revision's fields: dropped, as the session drops them
            outcome = {key: value for key, value in outcome.items() if key not in self._foreign}
        return outcome

    async def _post(
        self, request_id: str, body: bytes, headers: dict[str, str], on_progress: ProgressFn | None
    ) -> dict[str, Any] | types.ErrorData:
        link = self._link
        try:
            async with stream_within_origin(link.client, "POST", link.url, content=body, headers=headers) as response:
                refusal = await self._refusal(response)
                if refusal is not None:
                    return refusal
                kind = response.headers.get("content-type", "").lower()
                if kind.startswith("application/json"):
                    return _answer(await response.aread(), "JSON response")
                if kind.startswith("text/event-stream"):
                    return await self._events(response, request_id, on_progress)
                return types.ErrorData(code=types.INVALID_REQUEST, message=f"Unexpected content type: {kind}")
        except httpx2.StreamError as exc:  # a JSON body over max_message_bytes, refused unread
            return types.ErrorData(code=types.PARSE_ERROR, message=f"Failed to parse JSON response: {exc}")
        except httpx2.TransportError as exc:  # before the answer began: the server is not there
            link.fail(exc)
            return types.ErrorData(code=types.CONNECTION_CLOSED, message=f"{type(exc).__name__}: {exc}")

    async def _refusal(self, response: httpx2.Response) -> types.ErrorData | None:
        """The error the SDK's client makes of a response that is no answer (202, a redirect, an HTTP error)."""
        status = response.status_code
        if status < 300 and status != 202:
            return None
        if status == 202:
            return types.ErrorData(code=types.INVALID_REQUEST, message="server answered a request with 202 Accepted")
        redirect = unfollowed_redirect(response)
        if redirect is not None:
            return types.ErrorData(code=types.INVALID_REQUEST, message=redirect)
        if status < 400:
            return None  # a 3xx that is no redirect is read like any answer, as by the SDK
        if response.headers.get("content-type", "").lower().startswith("application/json"):
            with suppress(httpx2.StreamError, ValueError):
                body = json.loads(await response.aread())
                if isinstance(body, dict) and "error" in body:  # the server's own JSON-RPC error, at any status
                    return types.ErrorData.model_validate(body["error"])
        if status == 404:
            if self._link.session_id is None:
                return types.ErrorData(code=types.METHOD_NOT_FOUND, message="Not Found")
            return types.ErrorData(code=types.INVALID_REQUEST, message="Session terminated")
        return types.ErrorData(code=types.INTERNAL_ERROR, message="Server returned an error response")

    async def _events(
        self, response: httpx2.Response, request_id: str, on_progress: ProgressFn | None
    ) -> dict[str, Any] | types.ErrorData:
        """The answer off an event stream; a stream that ends unanswered after an event with an id is resumed from
        it with GETs (`Last-Event-ID`), after the server's retry interval, as the SDK's client resumes it."""
        outcome, resume = await self._read(response, request_id, on_progress, _Resume())
        failures = 0
        while outcome is None and resume.last_id is not None and failures < RESUME_FAILURES:
            await anyio.sleep(resume.retry_ms / 1000)
            headers = {"accept": "text/event-stream", "cache-control": "no-store", LAST_EVENT_ID: resume.last_id}
            headers.update(self._session_headers())
            try:
                async with stream_within_origin(self._link.client, "GET", self._link.url, headers=headers) as again:
                    again.raise_for_status()
                    failures = 0
                    outcome, resume = await self._read(again, request_id, on_progress, resume)
            except httpx2.SSEError as exc:
                return types.ErrorData(code=types.CONNECTION_CLOSED, message=f"SSE stream failed: {exc}")
            except (httpx2.TransportError, httpx2.HTTPStatusError):
                failures += 1
        if outcome is None and resume.last_id is not None:
            message = "SSE stream ended and reconnection attempts were exhausted"
            return types.ErrorData(code=types.CONNECTION_CLOSED, message=message)
        if outcome is None:
            return types.ErrorData(code=types.CONNECTION_CLOSED, message="SSE stream ended without a response")
        return outcome

    async def _read(
        self, response: httpx2.Response, request_id: str, on_progress: ProgressFn | None, resume: _Resume
    ) -> tuple[dict[str, Any] | types.ErrorData | None, _Resume]:
        """The outcome when the stream carried it (None when it ended first), and where to resume it."""
        source = httpx2.EventSource(response, max_event_size=self._link.max_event_size)
        events = cast(AsyncGenerator[httpx2.ServerSentEvent], aiter(source))
        outcome: dict[str, Any] | types.ErrorData | None = None
        async with aclosing(events):
            try:
                async for event in events:
                    resume = resume.after(event)
                    if event.event == "message" and event.data:  # an empty one primes resumption
                        outcome = await self._event(event.data, request_id, on_progress)
                        if outcome is not None:
                            break
            except httpx2.SSEError as exc:  # an event over max_message_bytes, or a stream that is no event stream
                return types.ErrorData(code=types.CONNECTION_CLOSED, message=f"SSE stream failed: {exc}"), resume
            except httpx2.TransportError:  # the server went away mid-answer
                return None, resume
            if outcome is not None:
                await self._drain(events)
        return outcome, resume

    def _session_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self._link.session_id is not None:
            headers[MCP_SESSION_ID] = self._link.session_id
        if self._version:
            headers[MCP_PROTOCOL_VERSION_HEADER] = self._version
        return headers

    async def _event(
        self, data: str, request_id: str, on_progress: ProgressFn | None
    ) -> dict[str, Any] | types.ErrorData | None:
        """The call's outcome when `data` is its answer; progress for it goes to `on_progress`, the rest on."""
        try:
            message = json.loads(data)
            if isinstance(message, dict):
                if message.get("id") == request_id and "method" not in message:
                    return _answer(message, "SSE message")
                params = message.get("params")
                if (
                    message.get("method") == "notifications/progress"
                    and isinstance(params, dict)
                    and params.get("progressToken") == request_id
                ):
                    if on_progress is not None:
                        await _relay_progress(on_progress, params)
                    return None
            typed = types.jsonrpc_message_adapter.validate_python(message, by_name=False)
        except (ValueError, ValidationError) as exc:  # as the SDK's client: the call fails on it
            return types.ErrorData(code=types.PARSE_ERROR, message=f"Failed to parse SSE message: {exc}")
        await self._link.deliver(SessionMessage(typed))
        return None

    async def _drain(self, events: AsyncIterator[httpx2.ServerSentEvent]) -> None:
        """Reads an answered stream to its end (nothing more should come), so its connection can be reused.

        Shielded: the answer is in hand, and a cancel must not lose it; an SDK server ends the stream at once."""
        link = self._link
        if link.held >= DRAIN_STRIKES:
            return
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(DRAIN_LIMIT) as waited,
            suppress(httpx2.TransportError),
        ):
            async for _ in events:
                pass
        if not waited.cancelled_caught:
            link.held = 0
            return
        link.held += 1
        if link.held == DRAIN_STRIKES:
            logger.debug("a downstream holds its answered event streams open: they are closed from now on")

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


def _answer(body: bytes | str | dict[str, Any], what: str) -> dict[str, Any] | types.ErrorData:
    """A JSON-RPC answer's result, or its error; a body that is neither fails the call as the SDK fails it."""
    try:
        message = json.loads(body) if isinstance(body, bytes | str) else body
        if isinstance(message, dict):
            if isinstance(message.get("result"), dict):
                result: dict[str, Any] = message["result"]
                return result
            if "error" in message:
                return types.ErrorData.model_validate(message["error"])
        raise ValueError("not a JSON-RPC answer")
    except (ValueError, ValidationError) as exc:
        return types.ErrorData(code=types.PARSE_ERROR, message=f"Failed to parse {what}: {exc}")


async def _relay_progress(relay: ProgressFn, params: dict[str, Any]) -> None:
    progress = params.get("progress")
    if not isinstance(progress, int | float):
        return
    total = params.get("total")
    note = params.get("message")
    try:
        await relay(
            progress, total if isinstance(total, int | float) else None, note if isinstance(note, str) else None
        )
    except Exception as exc:  # the caller's relay failing must not fail the call
        logger.debug("progress relay failed: %s", exc)
