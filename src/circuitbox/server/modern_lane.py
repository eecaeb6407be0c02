"""The modern lane: a 2026-era client's interactive request to a downstream that speaks 2026-07-28 itself.

A 2026-era server asks for input by ending `tools/call`, `prompts/get` or `resources/read` with an input-required
result (`inputRequests`, `requestState`); the client retries with `inputResponses` and the `requestState` echoed. Over
the handshake-era connection circuitbox keeps to every downstream no such result exists, so a downstream that
answers `server/discover` for 2026-07-28 is also reached, for those three methods, in its own era: each request
carrying the client's own envelope (`_meta` protocol version, client info, capabilities and log level, as the client
sent them), so the downstream sees what the client declared and answers as it would directly; its input-required
result goes back to the client, and the retry to the downstream. The wire: over HTTP one stateless POST per
request; over stdio a child process of its own, started by the first request that needs it (modern_stdio.py). The
downstream's log messages meanwhile go to the client, as the handshake era's relay sends them.

`requestState` comes back from the client, so it is attacker-controlled: the downstream's own state is handed out
sealed (HMAC, a per-process key) together with the server, the method and the name it was issued for, and when; a
state that was altered, issued for another server, tool, prompt or resource, or issued more than `STATE_LIFETIME`
seconds ago, is refused (-32602) before anything is sent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio
import httpx2
import mcp_types as types
from mcp import MCPError
from mcp.server.connection import allowed_log_levels
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.inbound import (
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    MCP_PROTOCOL_VERSION_HEADER,
    NAME_BEARING_METHODS,
    encode_header_value,
    mcp_param_headers,
    x_mcp_header_map,
)
from mcp_types.methods import INPUT_REQUIRED_METHODS
from mcp_types.version import LATEST_MODERN_VERSION, MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

from circuitbox import __version__
from circuitbox.config.load import ServerConfig
from circuitbox.config.model import MAX_MESSAGE_BYTES
from circuitbox.server.modern_stdio import ChildRecord, Log, Progress, open_stdio_wire
from circuitbox.server.relay import prefixed
from circuitbox.server.transports import http_client

if TYPE_CHECKING:
    from circuitbox.server.downstream import Backoff

logger = logging.getLogger("circuitbox.modern_lane")

T = TypeVar("T", bound=BaseModel)
NamespacedLog = Callable[[str, dict[str, Any]], Awaitable[None]]

_PER_HOP_META = frozenset({"progressToken", "progress_token"})  # each hop has its own progress token


@dataclass(frozen=True)
class ModernRequest:
    """What a 2026-era client's request carries that the typed models built for the downstream leave out."""

    meta: dict[str, Any]
    """Its `_meta`, every key as it came (the era's envelope included) but the progress token."""
    input_responses: Any
    """`inputResponses` as sent (absent: None), for the downstream to judge."""
    request_state: str | None
    """`requestState` as sent: sealed by circuitbox when it issued it."""
    log: NamespacedLog | None = None
    """Relays a downstream's log message (its params, and the server's namespace) to this request's client."""


_current: ContextVar[ModernRequest | None] = ContextVar("circuitbox_modern_request", default=None)


def current() -> ModernRequest | None:
    """The 2026-era client request being served, when it is one of the three methods that can need input."""
    return _current.get()


@contextmanager
def serving(params: Mapping[str, Any] | None, log: NamespacedLog | None = None) -> Iterator[None]:
    params = params or {}
    meta = {key: value for key, value in (params.get("_meta") or {}).items() if key not in _PER_HOP_META}
    state = params.get("requestState")
    request = ModernRequest(meta, params.get("inputResponses"), state if isinstance(state, str) else None, log)
    token = _current.set(request)
    try:
        yield
    finally:
        _current.reset(token)


async def capture_modern_requests(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    """`Server.middleware`: a 2026-era client's `tools/call`, `prompts/get` and `resources/read` are served with
    their raw params at hand (the typed params re-encode `inputResponses`, and a downstream must get them as sent)."""
    if ctx.method in INPUT_REQUIRED_METHODS and ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        with serving(ctx.params, _log_relay(ctx)):
            return await call_next(ctx)
    return await call_next(ctx)


def _log_relay(ctx: ServerRequestContext[Any, Any]) -> NamespacedLog:
    """A downstream's log message during the request, to its client as the handshake-era relay sends it (the logger
    prefixed with the namespace), at the level the client asked for in this request's `_meta` (none: nothing)."""
    levels = allowed_log_levels(ctx.protocol_version, (ctx.params or {}).get("_meta"))

    async def relay(namespace: str, params: dict[str, Any]) -> None:
        if params.get("level") not in levels:
            return
        note = types.LoggingMessageNotification(
            params=types.LoggingMessageNotificationParams.model_validate(prefixed(namespace, params), by_name=False)
        )
        with anyio.move_on_after(1):  # a client that stopped reading must not hold up the call's answer
            await ctx.session.send_notification(note, related_request_id=ctx.request_id)

    return relay


STATE_LIFETIME = 600.0
"""Seconds a sealed `requestState` is good for: ten minutes to answer, as the era bridge and the SDK's own seals."""


class StateSeal:
    """Seals a downstream's `requestState` to the (server, method, name) it was issued for, and to when (`clock`:
    monotonic seconds; a state lives only in the process that sealed it, so it never needs a wall clock)."""

    def __init__(
        self, key: bytes | None = None, *, lifetime: float = STATE_LIFETIME, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._key = key or secrets.token_bytes(32)
        self.lifetime = lifetime
        self._clock = clock

    def _mac(self, payload: bytes) -> str:
        return _b64(hmac.new(self._key, payload, hashlib.sha256).digest())

    def seal(self, binding: tuple[str, ...], state: str) -> str:
        payload = json.dumps([*binding, self._clock(), state], separators=(",", ":")).encode()
        return f"{_b64(payload)}.{self._mac(payload)}"

    def unseal(self, binding: tuple[str, ...], token: str) -> str:
        """The downstream's own state.

        Raises:
            MCPError: -32602, the state was not issued by circuitbox for this server, method and name, was altered,
                or has outlived `lifetime`.
        """
        encoded, _, mac = token.partition(".")
        try:
            payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            valid = hmac.compare_digest(mac, self._mac(payload))
            fields = json.loads(payload) if valid else None
        except ValueError:
            fields = None
        if not isinstance(fields, list) or len(fields) != len(binding) + 2 or tuple(fields[:-2]) != binding:
            raise MCPError(
                code=types.INVALID_PARAMS,
                message="requestState failed its integrity check: it was altered or issued for another request",
            )
        issued = fields[-2]  # sealed by this process, so a number it wrote
        if self._clock() - issued > self.lifetime:
            raise MCPError(
                code=types.INVALID_PARAMS,
                message=f"requestState expired: it is good for {self.lifetime:g}s after the answer that issued it",
            )
        return str(fields[-1])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


SEAL = StateSeal()


class Wire(Protocol):
    """How the lane's requests reach the downstream (HTTP: a POST each; stdio: a child of their own)."""

    async def send(
        self,
        method: str,
        params: dict[str, Any],
        version: str,
        headers: dict[str, str] | None,
        progress: Progress | None,
        log: Log | None = None,
    ) -> Any:
        """The downstream's JSON-RPC answer to one request (a dict with `result` or `error`, if it is JSON-RPC)."""
        ...


class ModernLane:
    """Requests to one downstream in the 2026-07-28 era, each with its own envelope, on `wire`."""

    def __init__(self, server: str, wire: Wire) -> None:
        self.server = server
        self._wire = wire

    async def available(self) -> bool:
        """Whether the downstream is reached in its own era (it speaks 2026-07-28); never raises."""
        return True

    async def discover(self) -> bool:
        """Whether the downstream speaks 2026-07-28 (its `server/discover` lists it). Never raises."""
        meta = {
            types.PROTOCOL_VERSION_META_KEY: LATEST_MODERN_VERSION,
            types.CLIENT_INFO_META_KEY: {"name": "circuitbox", "version": __version__},
            types.CLIENT_CAPABILITIES_META_KEY: {},
        }
        try:
            result = await self._send("server/discover", {"_meta": meta}, LATEST_MODERN_VERSION, None, None)
            return LATEST_MODERN_VERSION in types.DiscoverResult.model_validate(result).supported_versions
        except Exception as exc:  # a handshake-era server refuses it somehow: it is reached in its era only
            logger.debug("server %r does not speak %s: %s", self.server, LATEST_MODERN_VERSION, exc)
            return False

    async def request(
        self,
        request: Any,
        result_type: type[T],
        progress: Progress | None,
        client: ModernRequest,
        input_schema: Any = None,
        log: Log | None = None,
    ) -> T | types.InputRequiredResult:
        """Send one of the three interactive methods as the 2026-era `client` sent it, with circuitbox's names; the
        downstream's log messages meanwhile go to `log`.

        Raises:
            MCPError: the downstream's error as it gave it, or -32602 for a `requestState` circuitbox did not seal
                for this request.
        """
        method: str = request.method
        params = request.params.model_dump(by_alias=True, mode="json", exclude_none=True)
        target = str(params.get(NAME_BEARING_METHODS[method], ""))
        binding = (self.server, method, target)
        params["_meta"] = dict(client.meta)
        if client.input_responses is not None:
            params["inputResponses"] = client.input_responses
        if client.request_state is not None:
            params["requestState"] = SEAL.unseal(binding, client.request_state)
        version = client.meta.get(types.PROTOCOL_VERSION_META_KEY)
        headers = {MCP_NAME_HEADER: encode_header_value(target)}
        if method == "tools/call" and input_schema is not None:
            headers.update(mcp_param_headers(x_mcp_header_map(input_schema), params.get("arguments") or {}))
        version = version if isinstance(version, str) else LATEST_MODERN_VERSION
        result = await self._send(method, params, version, headers, progress, log)
        if result.get("resultType") != "input_required":
            return result_type.model_validate(result, by_name=False)
        needed = types.InputRequiredResult.model_validate(result, by_name=False)
        if needed.request_state is not None:
            needed.request_state = SEAL.seal(binding, needed.request_state)
        return needed

    async def _send(
        self,
        method: str,
        params: dict[str, Any],
        version: str,
        headers: dict[str, str] | None,
        progress: Progress | None,
        log: Log | None = None,
    ) -> dict[str, Any]:
        answer = await self._wire.send(method, params, version, headers, progress, log)
        if not isinstance(answer, dict) or not isinstance(answer.get("result", answer.get("error")), dict):
            raise MCPError(code=types.INTERNAL_ERROR, message=f"server {self.server!r} sent no JSON-RPC answer")
        if "error" in answer:
            raise MCPError.from_error_data(types.ErrorData.model_validate(answer["error"]))
        result: dict[str, Any] = answer["result"]
        return result


class HttpWire:
    """Each request a stateless POST, answered in its body (JSON or an event stream with progress and log messages
    before the answer). Cancelling a request closes its POST, the era's cancel."""

    def __init__(self, server: str, url: str, client: httpx2.AsyncClient, max_event_bytes: int) -> None:
        self.server = server
        self._url = url
        self._client = client
        self._max_event = max_event_bytes
        self._ids = 0

    async def send(
        self,
        method: str,
        params: dict[str, Any],
        version: str,
        headers: dict[str, str] | None,
        progress: Progress | None,
        log: Log | None = None,
    ) -> Any:
        self._ids += 1
        request_id = self._ids
        if progress is not None:
            params["_meta"] = {**params.get("_meta", {}), "progressToken": request_id}
        body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        sent = {
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
            MCP_PROTOCOL_VERSION_HEADER: version,
            MCP_METHOD_HEADER: method,
            **(headers or {}),
        }
        try:
            async with self._client.stream("POST", self._url, content=json.dumps(body), headers=sent) as response:
                kind = response.headers.get("content-type", "")
                if kind.startswith("text/event-stream"):
                    return await self._answer_in_stream(response, request_id, progress, log)
                if kind.startswith("application/json"):
                    return json.loads(await response.aread())
                raise MCPError(
                    code=types.INTERNAL_ERROR, message=f"server {self.server!r} answered HTTP {response.status_code}"
                )
        except httpx2.TransportError as exc:  # the connection failed: a transport failure, as on the session
            raise MCPError(code=types.CONNECTION_CLOSED, message=f"{type(exc).__name__}: {exc}") from exc

    async def _answer_in_stream(
        self, response: httpx2.Response, request_id: int, progress: Progress | None, log: Log | None
    ) -> Any:
        async for event in httpx2.EventSource(response, max_event_size=self._max_event):
            if not event.data:
                continue  # a priming event
            message = json.loads(event.data)
            if isinstance(message, dict) and message.get("id") == request_id and "method" not in message:
                return message
            method = message.get("method") if isinstance(message, dict) else None
            note = (message.get("params") or {}) if isinstance(message, dict) else {}
            if method == "notifications/progress":
                if progress is not None and note.get("progressToken") == request_id:
                    await progress(note.get("progress", 0), note.get("total"), note.get("message"))
            elif method == "notifications/message" and log is not None:
                await log(dict(note))
            else:
                logger.debug("server %r: a %s on a 2026-era request's stream was not relayed", self.server,
                             method or "message")  # fmt: skip
        raise MCPError(code=types.CONNECTION_CLOSED, message=f"server {self.server!r} ended the stream unanswered")


class StdioModernLane(ModernLane):
    """The lane to a stdio downstream, opened on the first request that needs it (modern_stdio.py): most clients
    are of the handshake era, and a second child of every server for them would be waste. Its child ends with the
    downstream's connection; one that dies is started again by the next request, once its backoff is over. What its
    children do is counted on `record` (its Downstream's, which outlives the connection)."""

    def __init__(self, server: ServerConfig, max_message_bytes: int, record: ChildRecord | None = None) -> None:
        super().__init__(server.name, _NO_WIRE)
        self._config = server
        self._max_message_bytes = max_message_bytes
        self.record = record if record is not None else ChildRecord(server, _backoff())
        self._speaks: bool | None = None  # None: not known yet (no child running)
        self._wanted = anyio.Event()
        self._known = anyio.Event()

    async def available(self) -> bool:
        if self._speaks is None:
            self._wanted.set()
            await self._known.wait()
        return bool(self._speaks)

    async def run(self) -> None:
        """Open the child when a request wants it and serve until it ends, again and again (each one after a death
        waits out its backoff, the requests with it); once one does not speak 2026-07-28 (or cannot be started),
        never again on this connection."""
        try:
            while True:
                await self._wanted.wait()
                await self.record.backoff()
                spoke = False
                try:
                    spoke = await self._serve_child()
                except Exception as exc:  # its failure stays here: the requests waiting on it learn it below
                    logger.warning("server %r: its 2026-era child failed: %s", self.server, exc)
                    self.record.stopped(self._config.redact(f"{type(exc).__name__}: {exc}"))
                if not spoke:
                    return
        finally:  # no child will come: nobody may wait on one
            if self._speaks is None:
                self._decide(False)

    async def _serve_child(self) -> bool:
        """Whether it spoke the era, once it has died."""
        record = self.record
        record.starting()
        async with open_stdio_wire(self._config, self._max_message_bytes, record.stderr_tail) as wire:
            self._wire = wire
            try:
                with anyio.move_on_after(self._config.startup_timeout):
                    self._decide(await self.discover())
                if not self._speaks:
                    if wire.closed.is_set():  # it died before it could answer: counted, and not tried again here
                        record.died("it exited before answering server/discover")
                        record.stopped()
                    else:
                        record.stopped(f"it does not speak {LATEST_MODERN_VERSION}")
                    return False
                record.running()
                logger.info("server %r: 2026-era requests go to a child of their own", self.server)
                await wire.closed.wait()
                record.died("its stdout ended")
                return True
            finally:
                self._wire = _NO_WIRE
                if record.state in ("starting", "running"):  # ended with the connection, not dead
                    record.stopped()
                if self._speaks:  # the requests from now on wait for the next child
                    self._speaks, self._wanted, self._known = None, anyio.Event(), anyio.Event()

    def _decide(self, speaks: bool) -> None:
        self._speaks = speaks
        self._known.set()


def _backoff() -> Backoff:
    """The main connection's default backoff, for a lane opened without a Downstream (downstream.py imports this
    module, so its Backoff is imported here only when needed)."""
    from circuitbox.server.downstream import Backoff

    return Backoff()


class _NoWire:
    async def send(self, *_: Any, **__: Any) -> Any:
        return {"error": {"code": types.CONNECTION_CLOSED, "message": "no 2026-era connection is open"}}


_NO_WIRE = _NoWire()


@asynccontextmanager
async def open_modern_lane(
    server: ServerConfig, max_message_bytes: int = MAX_MESSAGE_BYTES, record: ChildRecord | None = None
) -> AsyncIterator[ModernLane | None]:
    """The lane to a downstream that speaks 2026-07-28, for as long as its connection lives: an HTTP one's when its
    `server/discover` lists that version, a stdio one's to be found out on first use (its children counted on
    `record`); None for an SSE downstream."""
    if server.transport == "stdio":
        stdio = StdioModernLane(server, max_message_bytes, record)
        async with anyio.create_task_group() as tg:
            tg.start_soon(stdio.run, name=f"{server.name}: 2026-era lane")
            yield stdio
            tg.cancel_scope.cancel()
        return
    if server.transport != "http" or server.url is None:
        yield None
        return
    async with http_client(dict(server.headers), max_message_bytes) as client:
        lane = ModernLane(server.name, HttpWire(server.name, server.url, client, max_message_bytes))
        yield lane if await lane.discover() else None
