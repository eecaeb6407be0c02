"""Tasks the other way (MCP 2025-11-25): a downstream asks the client for task-augmented sampling or elicitation.

A client that declares `tasks.requests.sampling.createMessage` (or `elicitation.create`) may answer a request that
carries `params.task` with a `CreateTaskResult`, run it in the background and be asked about it with `tasks/get`,
`tasks/result`, `tasks/list` and `tasks/cancel`; it may send `notifications/tasks/status`. circuitbox offers a
downstream exactly the client's `tasks` capability only where the connection serves that one client (its own
connection to the server, or the stdio upstream's one client): over a connection shared by many clients, one offer
made before any client arrives could not be exactly each client's, and its questions could not be routed safely.

The client's task comes back to the downstream under an id circuitbox mints, and the downstream's `tasks/*` reach
the client under the client's own id: each side only ever sees the ids of its own hop, and a downstream can reach no
task but those its own connection created (-32602).
"""

from __future__ import annotations

import logging
import secrets
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import mcp_types as types
from mcp import MCPError

if TYPE_CHECKING:
    from circuitbox.server.downstream import Downstream

logger = logging.getLogger("circuitbox.client_tasks")

RELATED_TASK = "io.modelcontextprotocol/related-task"
MAX_TASKS_PER_CONNECTION = 1000
"""Client-side tasks one downstream connection's ids are kept for; past it the oldest is forgotten (-32602)."""


@dataclass(frozen=True, eq=False)
class ClientTask:
    """A client's task that a downstream created: the id the downstream knows, and the client's own."""

    minted: str
    client: Any
    remote: str
    downstream: Downstream


class ClientTasks:
    """The client-side tasks each downstream connection created, both ways (weakly keyed: a closed connection's
    tasks go with it)."""

    def __init__(self, limit: int = MAX_TASKS_PER_CONNECTION) -> None:
        self._limit = limit
        self._of: weakref.WeakKeyDictionary[Downstream, OrderedDict[str, ClientTask]] = weakref.WeakKeyDictionary()
        self._from_client: weakref.WeakKeyDictionary[Any, dict[str, ClientTask]] = weakref.WeakKeyDictionary()

    def _add(self, downstream: Downstream, client: Any, remote: str) -> ClientTask:
        tasks = self._of.setdefault(downstream, OrderedDict())
        task = ClientTask(f"circuitbox:{secrets.token_urlsafe(12)}", client, remote, downstream)
        tasks[task.minted] = task
        self._from_client.setdefault(client, {})[remote] = task
        while len(tasks) > self._limit:
            _, old = tasks.popitem(last=False)
            known = self._from_client.get(old.client, {})
            if known.get(old.remote) is old:
                del known[old.remote]
        return task

    def _find(self, downstream: Downstream, minted: Any) -> ClientTask:
        tasks = self._of.get(downstream)
        task = tasks.get(minted) if tasks is not None and isinstance(minted, str) else None
        if task is None:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown task: {minted!r}")
        return task

    async def request(self, downstream: Downstream, client: Any, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """A downstream's task-augmented request or `tasks/*` request to its client (`client`: the upstream
        connection it asks), answered as the client answers, with the ids of the downstream's hop.

        Raises:
            MCPError: the client's own error, -32602 for a task this connection did not create, or -32603 when
                there is no client to ask.
        """
        if method == "tasks/list":
            return await self._list(downstream, client, params)
        if method not in ("tasks/get", "tasks/result", "tasks/cancel"):  # sampling or elicitation, with a task
            answer = await _ask(client, method, params)
            created = answer.get("task")
            if isinstance(created, dict) and isinstance(created.get("taskId"), str):
                task = self._add(downstream, client, created["taskId"])
                answer = {**answer, "task": {**created, "taskId": task.minted}}
            return answer
        task = self._find(downstream, params.get("taskId"))
        return _mapped(await _ask(task.client, method, _mapped(dict(params), task, to_client=True)), task)

    async def _list(self, downstream: Downstream, client: Any, params: dict[str, Any]) -> dict[str, Any]:
        """The client's tasks/list page, with only the tasks this connection created (the cursor is the client's,
        passed through: the connection serves that one client)."""
        answer = await _ask(client, "tasks/list", params)
        mine = {task.remote: task for task in self._of.get(downstream, {}).values()}
        listed = [t for t in answer.get("tasks") or () if isinstance(t, dict) and t.get("taskId") in mine]
        return {**answer, "tasks": [{**t, "taskId": mine[t["taskId"]].minted} for t in listed]}

    async def status(self, client: Any, params: dict[str, Any]) -> None:
        """A client's `notifications/tasks/status` for a task a downstream created, to that downstream."""
        task_id = params.get("taskId")
        task = self._from_client.get(client, {}).get(task_id) if isinstance(task_id, str) else None
        session = task.downstream.session if task is not None else None
        if task is None or session is None:
            logger.info("a client's status of a task no connected server created (%s): dropped", params.get("taskId"))
            return
        note = types.Notification[Any, str](method="notifications/tasks/status", params=_mapped(dict(params), task))
        try:
            await session.send_notification(cast(Any, note))
        except Exception as exc:  # the server went away: its task status has nobody to reach
            logger.debug("server %r: relaying a client's task status failed: %s", task.downstream.name, exc)


async def _ask(client: Any, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """On the client's own channel (outside any request: a task outlives the call that created it)."""
    if client is None:
        raise MCPError(code=types.INTERNAL_ERROR, message=f"circuitbox cannot route {method} to a client")
    try:
        answer: dict[str, Any] = await client.outbound.send_raw_request(method, params, None)
    except MCPError:
        raise
    except Exception as exc:  # the client went away, or has no channel to be asked on
        raise MCPError(code=types.INTERNAL_ERROR, message=f"relaying {method} failed: {exc}") from None
    return answer


def _mapped(data: dict[str, Any], task: ClientTask, *, to_client: bool = False) -> dict[str, Any]:
    """A message about a client's task with its id (and its related-task `_meta`) as the downstream knows it
    (`to_client`: as the client knows it)."""
    old, new = (task.minted, task.remote) if to_client else (task.remote, task.minted)
    if data.get("taskId") == old:
        data["taskId"] = new
    meta = data.get("_meta")
    related = meta.get(RELATED_TASK) if isinstance(meta, dict) else None
    if isinstance(meta, dict) and isinstance(related, dict) and related.get("taskId") == old:
        data["_meta"] = {**meta, RELATED_TASK: {**related, "taskId": new}}
    return data
