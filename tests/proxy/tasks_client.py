"""A handshake-era client that uses tasks (2025-11-25): the SDK's `ClientSession`, declaring `tasks`, sending the
task requests its typed API does not have as raw messages, and collecting `notifications/tasks/status`."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client.extension import NotificationBinding

from circuitbox.server._sdk_private import TaskOfferingSession, send_unvalidated
from tests.net import import_path_env
from tests.proxy.harness import write_config


class TasksClient(ClientSession):
    """Declares tasks (list, cancel) as a tasks-aware client does; keeps every task status it is sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.statuses: list[types.TaskStatusNotificationParams] = []
        self.status_seen = anyio.Event()
        binding = NotificationBinding(
            method="notifications/tasks/status", params_type=types.TaskStatusNotificationParams, handler=self._status
        )
        super().__init__(*args, notification_bindings=[binding], **kwargs)

    async def _status(self, params: types.TaskStatusNotificationParams) -> None:
        self.statuses.append(params)
        self.status_seen.set()
        self.status_seen = anyio.Event()

    def _build_capabilities(self, version: str) -> types.ClientCapabilities:
        capabilities = super()._build_capabilities(version)
        return capabilities.model_copy(
            update={
                "tasks": types.ClientTasksCapability(
                    list=types.TasksListCapability(), cancel=types.TasksCancelCapability()
                )
            }
        )

    async def raw(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A request whose answer the typed API would refuse or does not model (a task, tasks/*)."""
        return await send_unvalidated(self, {"method": method, "params": params})


@asynccontextmanager
async def tasks_client_over_stdio(
    tmp_path: Path, config: dict[str, Any], client: type[ClientSession] = TasksClient, **callbacks: Any
) -> AsyncIterator[Any]:
    """`circuitbox serve` over stdio as a child process, driven by a `TasksClient` (or `client`; `callbacks`: the
    `ClientSession` callbacks it has)."""
    path = write_config(tmp_path, config)
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "circuitbox", "serve", "--config", str(path)],
        env={
            "PYTHONUNBUFFERED": "1",
            **import_path_env(),
            **{k: v for k, v in os.environ.items() if k.startswith("COVERAGE")},
        },
        cwd=str(tmp_path),
    )
    async with (
        stdio_client(params) as (read, write),
        client(read, write, read_timeout_seconds=60, **callbacks) as session,
    ):
        with anyio.fail_after(60):
            await session.initialize()
        yield session


class TaskRunningClient(TaskOfferingSession):
    """A client that runs sampling as a task of its own when a server asks for one (tasks the other way): it
    declares `tasks.requests.sampling.createMessage`, answers a task-augmented sampling request with a task that is
    done by its first `tasks/get`, and keeps every task request it was sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.asked: list[tuple[str, dict[str, Any]]] = []
        self._results: dict[str, dict[str, Any]] = {}
        tasks = types.ClientTasksCapability.model_validate(
            {"list": {}, "cancel": {}, "requests": {"sampling": {"createMessage": {}}}}
        )
        super().__init__(
            *args, tasks=tasks, on_task_request=self._task_request, sampling_callback=self._sample, **kwargs
        )

    async def _sample(self, _: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="sampled at once"), model="test"
        )

    async def _task_request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.asked.append((method, params))
        if method == "sampling/createMessage":
            task_id = f"mine-{len(self._results)}"
            text = f"sampled in task {task_id}"
            self._results[task_id] = {"role": "assistant", "content": {"type": "text", "text": text}, "model": "test"}
            return {"task": self._task(task_id, "working")}
        task_id = params.get("taskId")
        if method == "tasks/list":
            return {"tasks": [self._task(known, "completed") for known in self._results]}
        if task_id not in self._results:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown task: {task_id!r}")
        if method == "tasks/result":
            return {**self._results[task_id], "_meta": {"io.modelcontextprotocol/related-task": {"taskId": task_id}}}
        done = self._task(task_id, "completed")
        if method == "tasks/get":  # it has ended: a status notification says so too
            await send_unvalidated_notification(self, "notifications/tasks/status", done)
        return done

    @staticmethod
    def _task(task_id: str, status: str) -> dict[str, Any]:
        return {"taskId": task_id, "status": status, "createdAt": "2026-12-04T00:00:00Z",
                "lastUpdatedAt": "2026-12-04T00:00:00Z", "ttl": 60000}  # fmt: skip


async def send_unvalidated_notification(session: ClientSession, method: str, params: dict[str, Any]) -> None:
    """A notification the typed API has no model for on the client's side (a task status of the client's)."""
    await session.send_notification(types.Notification[Any, str](method=method, params=params))  # type: ignore[arg-type]
