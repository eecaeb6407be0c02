"""The one place circuitbox reads SDK internals, because the SDK offers no public way (mcp 2.3).

`tests/proxy/test_sdk_private.py` fails when the SDK changes what this relies on.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import ClientSession
from mcp.client import streamable_http
from mcp.shared import _httpx_utils


def client_connection(session: Any) -> Any | None:
    """The connection behind a handshake-era `ServerSession`: one object per upstream client, whose `outbound`
    channel reaches that client outside any request (list changes, and the client identity relays are keyed by).
    The low-level request context exposes it only through the session's private `_connection`."""
    return getattr(session, "_connection", None)


def later_revision_fields(method: str, version: str) -> frozenset[str]:
    """Result keys that `ClientSession.send_request` drops from a `version` session's result of `method` before
    building its typed result (fields of later revisions, whose constraints would otherwise apply):
    `direct_calls.py` answers past the session and must drop the same ones."""
    from mcp.client import session

    found: frozenset[str] = session._later_revision_fields(method, version)
    return found


async def send_unvalidated(session: Any, data: dict[str, Any], progress: Any = None) -> dict[str, Any]:
    """Send a request (`data`: its wire form, method and params) on a `ClientSession` and return the raw result.

    `ClientSession.send_request` validates a `tools/call` answer as a `CallToolResult`, so it refuses the
    `CreateTaskResult` a task-augmented call gets (2025-11-25 tasks; the SDK has no tasks runtime). This is
    `send_request` without that check: the session's own per-version stamp, then its dispatcher.

    Raises:
        MCPError: the server answered with an error or the connection closed.
    """
    opts: dict[str, Any] = {}
    session._stamp(data, opts)
    if progress is not None:
        opts["on_progress"] = progress
    result: dict[str, Any] = await session._dispatcher.send_raw_request(data["method"], data.get("params"), opts)
    return result


@contextmanager
def request_in_flight(transport: Any) -> Iterator[None]:
    """What `StreamableHTTPServerTransport.handle_request` keeps around each request it serves, for a request the
    HTTP lane (http_lane.py) answers past it: one more request in flight, so the session's idle countdown is
    suspended (its `idle_scope` deadline infinite, which is also what the session cap's eviction reads) and
    restarts when the last one completes."""
    idle = transport.idle_scope
    if idle is None or transport._idle_timeout is None:
        yield
        return
    transport._requests_in_flight += 1
    idle.deadline = math.inf
    try:
        yield
    finally:
        transport._requests_in_flight -= 1
        if not transport._requests_in_flight:
            idle.deadline = anyio.current_time() + transport._idle_timeout


async def post_headers_pass(transport: Any, request: Any) -> bool:
    """Whether a POST passes the transport's own header checks (its DNS-rebinding settings: Content-Type, Host and
    Origin; then Content-Type is JSON), which it runs in `_handle_request` and `_handle_post_request`."""
    if await transport._security.validate_request(request, is_post=True) is not None:
        return False
    passed: bool = transport._check_content_type(request)
    return passed


def session_transport(manager: Any, session_id: str, requestor: Any) -> Any | None:
    """The transport of an open session of a `StreamableHTTPSessionManager`, when `requestor` (the request's
    credential) is the one that opened it, as the manager's `_handle_stateful_request` checks; else None."""
    transport = manager._server_instances.get(session_id)
    if transport is None or requestor != manager._session_owners.get(session_id):
        return None
    return transport


CLIENT_TASK_METHODS = frozenset({"tasks/get", "tasks/result", "tasks/list", "tasks/cancel"})
AUGMENTABLE = frozenset({"sampling/createMessage", "elicitation/create"})
TaskRequestHandler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class TaskOfferingSession(ClientSession):
    """A `ClientSession` that declares a client `tasks` capability (2025-11-25) and hands the server's task requests
    to `on_task_request` as raw messages: `tasks/*`, and a sampling or elicitation request with `params.task`,
    whose answer is a `CreateTaskResult`. The SDK has no client-side tasks runtime: it declares no `tasks`
    (`_build_capabilities`) and its `_on_request` answers `tasks/*` with -32601 and refuses such an answer."""

    def __init__(
        self, *args: Any, tasks: types.ClientTasksCapability, on_task_request: TaskRequestHandler, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._tasks = tasks
        self._on_task_request = on_task_request

    def _build_capabilities(self, version: str) -> types.ClientCapabilities:
        return super()._build_capabilities(version).model_copy(update={"tasks": self._tasks})

    async def _on_request(self, dctx: Any, method: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
        if method in CLIENT_TASK_METHODS or (method in AUGMENTABLE and params is not None and "task" in params):
            return await self._on_task_request(method, dict(params or {}))
        answer: dict[str, Any] = await super()._on_request(dctx, method, params)
        return answer


def stream_within_origin(
    client: httpx2.AsyncClient, method: str, url: str, **kwargs: Any
) -> AbstractAsyncContextManager[httpx2.Response]:
    """A streamed request as the SDK's streamable HTTP client sends one: a redirect is followed only within the
    endpoint's origin and with the method kept (`mcp.shared._httpx_utils.stream_within_origin`); any other comes
    back as the response."""
    return _httpx_utils.stream_within_origin(client, method, url, **kwargs)


def unfollowed_redirect(response: httpx2.Response) -> str | None:
    """The SDK's message for a redirect its client left unfollowed (None when `response` is not one), which it
    answers the request with (-32600)."""
    message: str | None = streamable_http._unfollowed_redirect(response)
    return message
