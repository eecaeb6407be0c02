"""Tasks (MCP 2025-11-25, SEP-1686), relayed from the client to the downstreams that offer them.

A task-augmented `tools/call` (its `params.task` set) to a server that declares `tasks.requests.tools.call` goes
through the tool's guard like any call (the breaker records the creation answer; a call its circuit rejects is
answered at once, without a task). The `CreateTaskResult` comes back under a task id circuitbox mints: it names the
server and is known only to the client that created it, so `tasks/get`, `tasks/result`, `tasks/list`,
`tasks/cancel` and `notifications/tasks/status` each reach the one downstream connection the task lives on, with the
ids mapped per hop, and a client can never reach another client's task or one circuitbox did not hand out (-32602).
A task circuitbox forgets (its client's session ended, or the client went past `MAX_TASKS_PER_CLIENT`) can no longer
be reached by anyone: if it may still be running, its server is sent `tasks/cancel`, in the background.

Tasks are offered only where they are relayed: the initialize answer declares `tasks` to handshake-era clients of
2025-11-25 or later, with only the parts (`list`, `cancel`) some task-offering downstream declares, and 2026-era
clients (where tasks became an extension) see neither the capability nor a tool's `taskSupport`. The SDK has the task
types but no runtime, and its typed client refuses a `CreateTaskResult` to `tools/call`, so this works on the raw
messages (a `Server.middleware`, and `_sdk_private.send_unvalidated` downstream). Tasks the other way (a client's
own, created by a downstream's task-augmented sampling or elicitation) are client_tasks.py's.
"""

from __future__ import annotations

import logging
import secrets
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import AbstractContextManager, AsyncExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc
import mcp_types as types
from mcp import MCPError
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, ValidationError

from circuitbox.server import request_meta
from circuitbox.server._sdk_private import client_connection
from circuitbox.server.classify import SUCCESS, Outcome, classify_result
from circuitbox.server.client_tasks import ClientTasks
from circuitbox.server.downstream import DownstreamUnavailableError
from circuitbox.server.pages import decode_cursor, encode_cursor
from circuitbox.server.relay import send_to_client
from circuitbox.server.unknown_methods import ForwardedResult

if TYPE_CHECKING:
    from circuitbox.config.policy import ToolPolicy
    from circuitbox.server.downstream import Downstream

logger = logging.getLogger("circuitbox.tasks")

RELATED_TASK = "io.modelcontextprotocol/related-task"
TASK_METHODS = frozenset({"tasks/get", "tasks/result", "tasks/list", "tasks/cancel"})
TASK_VERSIONS = frozenset({"2025-11-25"})
"""The handshake-era protocol versions that have tasks (2026-07-28 moved them to an extension)."""
MAX_TASKS_PER_CLIENT = 1000
"""Tasks one client's ids are kept for; past it the oldest id is forgotten (its tasks/get is then -32602)."""
LIST_PAGE = 100
AnyMessage = TypeVar("AnyMessage", bound=BaseModel)
MAX_LIST_PAGES = 100  # of one downstream's tasks/list: a server that never stops paginating cannot hang a list
TERMINAL = frozenset({"completed", "failed", "cancelled"})
CANCELLING = 8  # forgotten tasks being cancelled at once (a client that leaves 1,000 behind must not flood a server)


def offers_tool_tasks(capabilities: types.ServerCapabilities | None) -> bool:
    """Whether a server declares task-augmented `tools/call`."""
    tasks = capabilities.tasks if capabilities is not None else None
    requests = tasks.requests if tasks is not None else None
    return requests is not None and requests.tools is not None and requests.tools.call is not None


def upstream_capability(offered: Iterable[types.ServerCapabilities | None]) -> dict[str, Any] | None:
    """The `tasks` capability circuitbox declares: tools/call when a downstream offers it, and `list` / `cancel`
    when one of those downstreams declares them too; None when no downstream offers tasks."""
    tasks = [c.tasks for c in offered if c is not None and c.tasks is not None and offers_tool_tasks(c)]
    if not tasks:
        return None
    capability: dict[str, Any] = {"requests": {"tools": {"call": {}}}}
    if any(t.list is not None for t in tasks):
        capability["list"] = {}
    if any(t.cancel is not None for t in tasks):
        capability["cancel"] = {}
    return capability


def without_tasks(tools: Iterable[types.Tool]) -> list[types.Tool]:
    """A tool list for a client that has no tasks: no `taskSupport`, and no tool it could not call (required)."""
    kept: list[types.Tool] = []
    for tool in tools:
        support = tool.execution.task_support if tool.execution is not None else None
        if support in (None, "forbidden"):
            kept.append(tool)
        elif support == "optional":
            kept.append(tool.model_copy(update={"execution": None}))
    return kept


# -- the augmented call, as the guard sends it -------------------------------------------------------------------


@dataclass
class Augmented:
    """A task-augmented call in flight: the client's `params.task`, and the connection the guard sent it on."""

    task: dict[str, Any]
    sent_on: Downstream | None = None


_augmented: ContextVar[Augmented | None] = ContextVar("circuitbox_task", default=None)


def augmented() -> Augmented | None:
    """The task augmentation of the call being served, if any (read by the guard when it sends the call)."""
    return _augmented.get()


@contextmanager
def augmenting(call: Augmented) -> Iterator[None]:
    token = _augmented.set(call)
    try:
        yield
    finally:
        _augmented.reset(token)


async def send_call(
    downstream: Downstream, request: types.CallToolRequest, call: Augmented, progress: Any
) -> types.CallToolResult | types.CreateTaskResult:
    """Send a guarded call with the client's `task` added; the server answers with a task or, when it runs the
    call at once (it may), with the tool's result."""
    call.sent_on = downstream
    data = request.model_dump(by_alias=True, mode="json", exclude_none=True)
    data["params"]["task"] = call.task
    raw = await downstream.request_unvalidated(data, progress)
    if "task" in raw:
        return types.CreateTaskResult.model_validate(raw, by_name=False)
    return types.CallToolResult.model_validate(raw, by_name=False)


def classify(result: types.CallToolResult | types.CreateTaskResult, policy: ToolPolicy) -> Outcome:
    """The verdict on an augmented call's answer: a task created is a success (its end is the task's own)."""
    return SUCCESS if isinstance(result, types.CreateTaskResult) else classify_result(result, policy)


# -- whose task is which ------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Relayed:
    """A task circuitbox handed out: the id the client knows, where it lives and the id it has there."""

    published: str
    server: str
    downstream: Downstream
    remote: str
    status: str = "working"
    """As last heard (its creation, a tasks/get, a status notification): whether it may still be running."""


class TaskTable:
    """Each client's tasks (weakly keyed by its upstream connection: a closed session's tasks go with it)."""

    def __init__(
        self, limit: int = MAX_TASKS_PER_CLIENT, on_forget: Callable[[list[Relayed]], None] | None = None
    ) -> None:
        self._limit = limit
        self._on_forget = on_forget  # told of the tasks it forgets while their client is still there
        self._clients: weakref.WeakKeyDictionary[Any, OrderedDict[str, Relayed]] = weakref.WeakKeyDictionary()
        # (connection the task lives on, its id there) -> (the client, the task): for status notifications.
        self._remote: dict[tuple[Downstream, str], tuple[weakref.ref[Any], Relayed]] = {}

    def add(self, client: Any, server: str, downstream: Downstream, remote: str, status: str = "working") -> Relayed:
        tasks = self._clients.get(client)
        if tasks is None:
            tasks = self._clients[client] = OrderedDict()
        task = Relayed(f"{server}:{secrets.token_urlsafe(12)}", server, downstream, remote, status)
        tasks[task.published] = task
        self._remote[(downstream, remote)] = (weakref.ref(client), task)
        forgotten: list[Relayed] = []
        while len(tasks) > self._limit:
            _, old = tasks.popitem(last=False)
            self._remote.pop((old.downstream, old.remote), None)
            forgotten.append(old)
        if len(self._remote) > 2 * self._limit:
            self._prune()
        if forgotten and self._on_forget is not None:
            self._on_forget(forgotten)
        return task

    def knows(self, client: Any) -> bool:
        return client in self._clients

    def drop(self, client: Any) -> list[Relayed]:
        """Forget every task of a client (its session ended); returns them."""
        tasks = list(self._clients.pop(client, {}).values())
        for task in tasks:
            self._remote.pop((task.downstream, task.remote), None)
        return tasks

    def _prune(self) -> None:
        """Forget the tasks of clients that are gone."""
        self._remote = {key: entry for key, entry in self._remote.items() if entry[0]() is not None}

    def find(self, client: Any, published: Any) -> Relayed:
        """The client's task of that id.

        Raises:
            MCPError: -32602, it is no task of this client's (unknown, forgotten or another client's).
        """
        tasks = self._clients.get(client)
        task = tasks.get(published) if tasks is not None and isinstance(published, str) else None
        if task is None:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown task: {published!r}")
        return task

    def of(self, client: Any) -> list[Relayed]:
        return list(self._clients.get(client, {}).values())

    def owner(self, downstream: Downstream, remote: Any) -> tuple[Any, Relayed] | None:
        entry = self._remote.get((downstream, remote)) if isinstance(remote, str) else None
        client = entry[0]() if entry is not None else None
        return (client, entry[1]) if entry is not None and client is not None else None


# -- the relay ----------------------------------------------------------------------------------------------------


class TaskHooks:
    """What the relay needs of the proxy (callables, so that nothing here reaches upward)."""

    def __init__(
        self,
        *,
        task_server: Callable[[str], str | None],
        call: Callable[[str, types.CallToolRequestParams, Any], Awaitable[BaseModel]],
        serving: Callable[[Relayed, Any], AbstractContextManager[None]],
        timeout: Callable[[str], float],
        capabilities: Callable[[], Iterable[types.ServerCapabilities | None]],
        ready: Callable[[], Awaitable[None]],
    ) -> None:
        self.task_server = task_server  # the server of a published tool when it relays tasks, else None
        self.call = call  # a guarded call on the client's connection to that server
        self.serving = serving  # while a request about a task is in flight: its server may ask the client
        self.timeout = timeout
        self.capabilities = capabilities
        self.ready = ready


class TaskRelay:
    """`Server.middleware`: task-augmented calls, the `tasks/*` requests and the tasks capability."""

    def __init__(self, hooks: TaskHooks) -> None:
        self.hooks = hooks
        self.table = TaskTable(on_forget=self.forget)
        self.client_side = ClientTasks()  # tasks the other way: the client's, created by a downstream
        self._tg: anyio.abc.TaskGroup | None = None
        self._cancelling = anyio.CapacityLimiter(CANCELLING)

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Where forgotten tasks are cancelled (without it they are only forgotten)."""
        self._tg = tg

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        method = ctx.method
        if method == "tools/call":  # the hot path: one dict lookup more
            params = ctx.params
            if params is None or "task" not in params:
                return await call_next(ctx)
            return await self._augmented_call(ctx, call_next)
        if method in TASK_METHODS:
            return await self._task_request(ctx)
        if method == "notifications/tasks/status":  # a client's own task, that a downstream created
            client = self._client(ctx)
            if client is not None and ctx.params is not None:
                await self.client_side.status(client, dict(ctx.params))
            return None
        if method == "initialize":
            return await self._initialize(ctx, call_next)
        return await call_next(ctx)

    def _client(self, ctx: ServerRequestContext[Any, Any]) -> Any:
        """The handshake-era connection a request came on; None for a 2026-era request (no tasks there)."""
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return None
        return client_connection(ctx.session)

    async def _initialize(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        raw = ctx.params or {}
        capabilities = raw.get("capabilities")
        if isinstance(capabilities, dict) and capabilities.get("tasks") is not None:
            # A client that uses tasks itself: worth waiting (bounded) for the downstreams to say whether they
            # offer them. Others get the answer at once, from what is known now.
            await self.hooks.ready()
        result = await call_next(ctx)
        data = result
        if isinstance(result, BaseModel):
            data = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        if not isinstance(data, dict) or data.get("protocolVersion") not in TASK_VERSIONS:
            return result
        capability = upstream_capability(self.hooks.capabilities())
        if capability is None:
            return result
        return {**data, "capabilities": {**data.get("capabilities", {}), "tasks": capability}}

    async def _augmented_call(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        raw = ctx.params or {}
        client = self._client(ctx)
        name = raw.get("name")
        server = self.hooks.task_server(name) if isinstance(name, str) else None
        task = raw.get("task")
        if client is None or server is None or not isinstance(task, dict):
            return await call_next(ctx)  # not relayed as a task: run as a plain call (the spec lets a server)
        try:
            params = types.CallToolRequestParams.model_validate(raw, by_name=False)
        except ValidationError:
            return await call_next(ctx)  # the SDK's own -32602 for it
        call = Augmented(task)
        with request_meta.serving(params.meta), augmenting(call):
            result = await self.hooks.call(server, params, ctx)
        if not isinstance(result, types.CreateTaskResult) or call.sent_on is None:
            return result  # answered without a task: rejected by its circuit, failed, or run at once
        if not self.table.knows(client):
            self._on_close(client)
        relayed = self.table.add(client, server, call.sent_on, result.task.task_id, result.task.status)
        data = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        data["task"]["taskId"] = relayed.published
        return data

    async def _task_request(self, ctx: ServerRequestContext[Any, Any]) -> HandlerResult:
        client = self._client(ctx)
        if client is None:
            raise MCPError(code=types.METHOD_NOT_FOUND, message=f"Method not found: {ctx.method}")
        params = dict(ctx.params or {})
        if ctx.method == "tasks/list":
            return await self._list(client, params)
        task = self.table.find(client, params.get("taskId"))
        params["taskId"] = task.remote
        meta = request_meta.forwarded(params.pop("_meta", None))
        if meta is not None:
            params["_meta"] = meta
        if ctx.method == "tasks/result":
            # It waits for the task to end, however long it runs (its own deadline is the task's ttl), and its
            # server may ask the client something meanwhile (a task in input_required).
            with self.hooks.serving(task, ctx):
                result = await self._send(task, ctx.method, params, None)
            if task.status not in TERMINAL:
                task.status = "completed"  # its result comes once it has ended, however it ended
        else:
            result = await self._send(task, ctx.method, params, self.hooks.timeout(task.server))
            _heard(task, result.get("status"))
        return _mapped(result, task)

    async def _send(self, task: Relayed, method: str, params: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        request = types.Request[Any, str](method=method, params=params)
        with _answered(task.server, timeout):
            result = await task.downstream.request(request, ForwardedResult)
        return result.model_dump(by_alias=True, mode="json", exclude_none=True)

    async def _list(self, client: Any, params: dict[str, Any]) -> dict[str, Any]:
        """The client's own tasks, from the tasks/list of each connection they live on (a downstream that does not
        list its tasks, or fails to, has its tasks left out), in the order they were created, paged with
        circuitbox's cursor."""
        cursor = params.get("cursor")
        offset = decode_cursor("tasks", cursor) if isinstance(cursor, str) else 0
        mine = self.table.of(client)
        found: dict[Relayed, dict[str, Any]] = {}
        for downstream in {task.downstream: None for task in mine}:
            caps = downstream.capabilities
            if caps is None or caps.tasks is None or caps.tasks.list is None:
                continue
            by_remote = {task.remote: task for task in mine if task.downstream is downstream}
            try:
                listing = await self._downstream_tasks(downstream)
            except MCPError as exc:  # one server failing costs its own tasks in the list, not everyone's list
                logger.warning("tasks/list: server %r left out: %s", downstream.name, exc.error.message)
                continue
            for listed in listing:
                task = by_remote.get(str(listed.get("taskId")))
                if task is not None:
                    _heard(task, listed.get("status"))
                    found[task] = {**listed, "taskId": task.published}
        tasks = [found[task] for task in mine if task in found]
        page = tasks[offset : offset + LIST_PAGE]
        answer: dict[str, Any] = {"tasks": page}
        if offset + LIST_PAGE < len(tasks):
            answer["nextCursor"] = encode_cursor("tasks", offset + LIST_PAGE)
        return answer

    async def _downstream_tasks(self, downstream: Downstream) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(MAX_LIST_PAGES):
            request = types.Request[Any, str](method="tasks/list", params={"cursor": cursor} if cursor else None)
            with _answered(downstream.name, self.hooks.timeout(downstream.name)):
                page = (await downstream.request(request, ForwardedResult)).model_dump(by_alias=True, mode="json")
            listed.extend(task for task in page.get("tasks") or () if isinstance(task, dict))
            cursor = page.get("nextCursor")
            if not isinstance(cursor, str) or not cursor:
                break
        return listed

    def _on_close(self, client: Any) -> None:
        """At a client's first task: when its session ends, its tasks are forgotten (the SDK unwinds the
        connection's exit stack then), and those still running cancelled."""
        stack: AsyncExitStack | None = getattr(client, "exit_stack", None)
        if stack is None:
            return
        ref = weakref.ref(client)  # the stack is the connection's own: no cycle through this callback

        async def closed() -> None:
            if (gone := ref()) is not None:
                self.forget(self.table.drop(gone))

        stack.push_async_callback(closed)

    def forget(self, tasks: Iterable[Relayed]) -> None:
        """Tasks no client can reach any more: each that may still be running, on a server that cancels tasks, is
        sent `tasks/cancel` in the background (nothing waits for it: not the client's close, not a call)."""
        for task in tasks:
            caps = task.downstream.capabilities
            if task.status in TERMINAL or caps is None or caps.tasks is None or caps.tasks.cancel is None:
                continue
            if self._tg is None:
                logger.info("server %r: task %s forgotten while it may be running", task.server, task.remote)
                continue
            self._tg.start_soon(self._cancel, task, name=f"cancel forgotten task {task.server}")

    async def _cancel(self, task: Relayed) -> None:
        async with self._cancelling:
            try:
                await self._send(task, "tasks/cancel", {"taskId": task.remote}, self.hooks.timeout(task.server))
            except Exception as exc:  # best effort: the server may be gone, or the task ended meanwhile
                message = exc.error.message if isinstance(exc, MCPError) else str(exc)
                logger.info("server %r: forgotten task %s not cancelled: %s", task.server, task.remote, message)
            else:
                logger.info("server %r: forgotten task %s cancelled", task.server, task.remote)

    def related(self, downstream: Downstream, message: AnyMessage) -> AnyMessage:
        """A downstream's request or notification to a client (an elicitation during `tasks/result`, a log
        message), with the task its related-task `_meta` names under the id that client knows; as it came when
        it names none, or a task circuitbox did not hand out."""
        params = getattr(message, "params", None)
        meta = self._published_meta(downstream, getattr(params, "meta", None))
        if meta is None:
            return message
        assert params is not None
        return message.model_copy(update={"params": params.model_copy(update={"meta": meta})})

    def _published_meta(self, downstream: Downstream, meta: Any) -> dict[str, Any] | None:
        """`meta` with its related task under its client's id; None when it names no task circuitbox handed out."""
        related = meta.get(RELATED_TASK) if isinstance(meta, dict) else None
        found = self.table.owner(downstream, related.get("taskId")) if isinstance(related, dict) else None
        if found is None:
            return None
        return {**meta, RELATED_TASK: {**related, "taskId": found[1].published}}  # type: ignore[dict-item]

    async def client_request(
        self, downstream: Downstream, client: Any, method: str, params: dict[str, Any]
    ) -> dict[str, Any]:
        """A downstream's request about a task of its client's (client_tasks.py), on a connection that was offered
        the client's `tasks` capability; `client` is the upstream connection it asks.

        Raises:
            MCPError: the client's error, or circuitbox's (a task this connection did not create, no client).
        """
        meta = self._published_meta(downstream, params.get("_meta"))
        if meta is not None:
            params = {**params, "_meta": meta}
        return await self.client_side.request(downstream, client, method, params)

    async def status(self, downstream: Downstream, params: types.TaskStatusNotificationParams) -> None:
        """A downstream's `notifications/tasks/status`, to the client whose task it is, under its id."""
        found = self.table.owner(downstream, params.task_id)
        if found is None:
            logger.debug("server %r: status of a task no client has (%s), dropped", downstream.name, params.task_id)
            return
        client, task = found
        task.status = params.status
        data = params.model_dump(by_alias=True, mode="json", exclude_none=True)
        await send_to_client(client, "notifications/tasks/status", _mapped(data, task))


def _heard(task: Relayed, status: Any) -> None:
    if isinstance(status, str):
        task.status = status


def _mapped(result: dict[str, Any], task: Relayed) -> dict[str, Any]:
    """A downstream's answer about a task, with its id (and its related-task `_meta`) as the client knows it."""
    if result.get("taskId") == task.remote:
        result["taskId"] = task.published
    meta = result.get("_meta")
    related = meta.get(RELATED_TASK) if isinstance(meta, dict) else None
    if isinstance(related, dict) and related.get("taskId") == task.remote:
        result["_meta"] = {**meta, RELATED_TASK: {**related, "taskId": task.published}}  # type: ignore[dict-item]
    return result


@contextmanager
def _answered(server: str, timeout: float | None) -> Iterator[None]:
    """A request about a task, bounded when `timeout` is set; what goes wrong becomes the client's MCPError."""
    try:
        with anyio.fail_after(timeout):
            yield
    except TimeoutError:
        raise MCPError(code=types.INTERNAL_ERROR, message=f"server {server!r} did not answer in {timeout:g}s") from None
    except DownstreamUnavailableError as exc:
        raise MCPError(code=types.INTERNAL_ERROR, message=str(exc)) from None
