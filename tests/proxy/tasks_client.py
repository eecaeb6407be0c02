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
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.extension import NotificationBinding

from circuitbox.server._sdk_private import send_unvalidated
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
    tmp_path: Path, config: dict[str, Any], **callbacks: Any
) -> AsyncIterator[TasksClient]:
    """`circuitbox serve` over stdio as a child process, driven by a `TasksClient` (with `callbacks`: the
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
        TasksClient(read, write, read_timeout_seconds=60, **callbacks) as session,
    ):
        with anyio.fail_after(60):
            await session.initialize()
        yield session
