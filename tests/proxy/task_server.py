"""A real MCP server (stdio) that serves tasks (2025-11-25) and tells what was done to them, for the relay tests.

    python -m tests.proxy.task_server

The SDK has the task types but no tasks runtime, so this serves them on the raw messages (a `Server.middleware`):

- `work` (task support optional): a task that is `working` until cancelled, or, with `{"seconds": s}`, completes
  after that long. Its `statusMessage` tells its id on this server.
- `tasks/get`, `tasks/list`, `tasks/cancel` (a task already ended: -32602, as the spec says), and `tasks/result`,
  which first sends a log message naming the task in its related-task `_meta`, then waits for the task to end.
- `cancelled` (a plain tool): waits until `{"count": n}` tasks were cancelled, then lists their ids (its own).
- `sample_in_task` (tasks the other way): when the client offers tasks, asks it for sampling as a task of the
  client's, then `tasks/get`, waits for the client's `notifications/tasks/status` of it, `tasks/result`,
  `tasks/list` and `tasks/get` of a task it never had, and answers with what it saw, as JSON.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
from mcp import MCPError
from mcp.server import Server
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.stdio import stdio_server
from pydantic import BaseModel

from circuitbox.server._sdk_private import client_connection

RELATED_TASK = "io.modelcontextprotocol/related-task"
TERMINAL = frozenset({"completed", "failed", "cancelled"})
STAMP = "2026-12-04T00:00:00Z"


@dataclass
class Task:
    task_id: str
    status: str = "working"
    ended: anyio.Event = field(default_factory=anyio.Event)

    def wire(self) -> dict[str, Any]:
        return {"taskId": self.task_id, "status": self.status, "statusMessage": f"task {self.task_id}",
                "createdAt": STAMP, "lastUpdatedAt": STAMP, "ttl": 60000}  # fmt: skip

    def end(self, status: str) -> None:
        self.status = status
        self.ended.set()


tasks: dict[str, Task] = {}
client_statuses: list[dict[str, Any]] = []
client_status_came = anyio.Event()
cancelled: list[str] = []
cancels_changed = anyio.Event()
group: anyio.abc.TaskGroup | None = None


@asynccontextmanager
async def lifespan(_: Server[Any]) -> AsyncIterator[dict[str, Any]]:
    global group
    async with anyio.create_task_group() as tg:
        group = tg
        yield {}
        tg.cancel_scope.cancel()


async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
    schema = {"type": "object", "properties": {"seconds": {"type": "number"}, "count": {"type": "integer"}}}
    return types.ListToolsResult(
        tools=[
            types.Tool(name="work", input_schema=schema, execution=types.ToolExecution(task_support="optional")),
            types.Tool(name="cancelled", input_schema=schema),
            types.Tool(name="sample_in_task", input_schema=schema),
        ]
    )


async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    arguments = params.arguments or {}
    if params.name == "cancelled":
        global cancels_changed
        while len(cancelled) < int(arguments.get("count", 1)):
            await cancels_changed.wait()
        return types.CallToolResult(content=[types.TextContent(type="text", text=json.dumps(cancelled))])
    if params.name == "sample_in_task":
        return types.CallToolResult(content=[types.TextContent(type="text", text=json.dumps(await sample(ctx)))])
    return types.CallToolResult(content=[types.TextContent(type="text", text="worked without a task")])


async def sample(ctx: Any) -> dict[str, Any]:
    offered = ctx.session.client_capabilities.tasks
    if offered is None:
        return {"offered": None}
    outbound = client_connection(ctx.session).outbound  # raw: the SDK's typed send refuses a task for sampling

    async def ask(request: Any) -> dict[str, Any]:
        data = request.model_dump(by_alias=True, mode="json", exclude_none=True)
        answer: dict[str, Any] = await outbound.send_raw_request(data["method"], data.get("params"), None)
        return answer

    message = types.SamplingMessage(role="user", content=types.TextContent(type="text", text="hi"))
    sampling = types.CreateMessageRequestParams(messages=[message], max_tokens=5, task=types.TaskMetadata(ttl=60000))
    created = await ask(types.CreateMessageRequest(params=sampling))
    task_id = created["task"]["taskId"]
    got = await ask(types.GetTaskRequest(params=types.GetTaskRequestParams(task_id=task_id)))
    while not any(status.get("taskId") == task_id for status in client_statuses):
        await client_status_came.wait()
    result = await ask(types.GetTaskPayloadRequest(params=types.GetTaskPayloadRequestParams(task_id=task_id)))
    listed = await ask(types.ListTasksRequest())
    unknown: Any = None
    try:
        await ask(types.GetTaskRequest(params=types.GetTaskRequestParams(task_id="not-mine")))
    except MCPError as exc:
        unknown = exc.error.code
    return {
        "offered": offered.model_dump(by_alias=True, exclude_none=True),
        "created": created,
        "got": got,
        "statuses": client_statuses,
        "result": result,
        "listed": listed,
        "unknown": unknown,
    }


async def complete_after(task: Task, seconds: float) -> None:
    await anyio.sleep(seconds)
    if task.status not in TERMINAL:
        task.end("completed")


async def tasks_runtime(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    global cancels_changed
    params = ctx.params or {}
    if ctx.method == "notifications/tasks/status":
        global client_status_came
        client_statuses.append(dict(params))
        client_status_came.set()
        client_status_came = anyio.Event()
        return None
    if ctx.method == "initialize":
        result = await call_next(ctx)
        data = (
            result.model_dump(by_alias=True, mode="json", exclude_none=True)
            if isinstance(result, BaseModel)
            else result
        )
        assert isinstance(data, dict)
        tasks_capability = {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
        return {**data, "capabilities": {**data["capabilities"], "tasks": tasks_capability}}
    if ctx.method == "tools/call" and "task" in params and params.get("name") == "work":
        task = Task(secrets.token_hex(8))
        tasks[task.task_id] = task
        seconds = (params.get("arguments") or {}).get("seconds")
        if seconds is not None:
            assert group is not None
            group.start_soon(complete_after, task, float(seconds))
        return {"task": task.wire()}
    if ctx.method not in ("tasks/get", "tasks/list", "tasks/cancel", "tasks/result"):
        return await call_next(ctx)
    if ctx.method == "tasks/list":
        return {"tasks": [task.wire() for task in tasks.values()]}
    task = tasks.get(str(params.get("taskId")))
    if task is None:
        raise MCPError(code=types.INVALID_PARAMS, message=f"no task {params.get('taskId')!r}")
    if ctx.method == "tasks/get":
        return task.wire()
    if ctx.method == "tasks/cancel":
        if task.status in TERMINAL:
            raise MCPError(code=types.INVALID_PARAMS, message=f"task {task.task_id} already {task.status}")
        task.end("cancelled")
        cancelled.append(task.task_id)
        cancels_changed.set()
        cancels_changed = anyio.Event()
        return task.wire()
    note = types.LoggingMessageNotificationParams(
        level="info", logger="tasks", data=f"fetching {task.task_id}", _meta={RELATED_TASK: {"taskId": task.task_id}}
    )
    await ctx.session.send_notification(
        types.LoggingMessageNotification(params=note), related_request_id=ctx.request_id
    )
    await task.ended.wait()
    return {
        "content": [{"type": "text", "text": f"task {task.status}"}],
        "_meta": {RELATED_TASK: {"taskId": task.task_id}},
    }


server = Server("task-server", lifespan=lifespan, on_list_tools=list_tools, on_call_tool=call_tool)
server.middleware.append(tasks_runtime)


async def main() -> None:
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
