"""Tasks (2025-11-25) through circuitbox, with npm server-everything as the downstream: its task-required
`simulate-research-query` created, polled, fetched, listed and cancelled through `circuitbox serve` over stdio and
HTTP, under task ids of circuitbox's own that only their client can reach; and with a small task server
(tests/proxy/task_server.py) where what the downstream saw must be told."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client, ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client

from tests.net import import_path_env
from tests.proxy.harness import REPO, everything_server
from tests.proxy.tasks_client import TaskRunningClient, TasksClient, tasks_client_over_stdio
from tests.proxy.test_client_sessions import serving

pytestmark = pytest.mark.anyio

RESEARCH = "ev__simulate-research-query"


RELATED = "io.modelcontextprotocol/related-task"


def research(topic: str, **arguments: Any) -> dict[str, Any]:
    return {"name": RESEARCH, "arguments": {"topic": topic, **arguments}, "task": {"ttl": 60000}}


def task_server() -> dict[str, Any]:
    return {
        "command": sys.executable,
        "args": ["-m", "tests.proxy.task_server"],
        "cwd": str(REPO),
        "env": {"PYTHONPATH": ":".join(filter(None, [str(REPO), import_path_env().get("PYTHONPATH")]))},
    }


async def wait_status(client: TasksClient, task_id: str, status: str) -> None:
    with anyio.fail_after(60):
        while not any(s.task_id == task_id and s.status == status for s in client.statuses):
            await client.status_seen.wait()


@asynccontextmanager
async def http_client(url: str, client: type[ClientSession] = TasksClient) -> AsyncIterator[Any]:
    async with streamable_http_client(url) as (read, write), client(read, write, read_timeout_seconds=60) as c:
        with anyio.fail_after(60):
            await c.initialize()
        yield c


async def test_a_task_augmented_call_over_stdio_runs_to_its_result_under_circuitbox_task_ids(tmp_path: Path) -> None:
    config = {"mcpServers": {"ev": everything_server()}, "admin": {"enabled": True}}
    async with tasks_client_over_stdio(tmp_path, config) as client:
        with anyio.fail_after(60):
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        # A tasks-aware client waits for the downstreams at initialize: the capability is what they offer.
        tasks = client._initialize_result.capabilities.tasks  # type: ignore[union-attr]
        assert tasks is not None and tasks.requests is not None and tasks.requests.tools is not None
        assert tasks.requests.tools.call is not None and tasks.list is not None and tasks.cancel is not None
        assert tools[RESEARCH].execution is not None and tools[RESEARCH].execution.task_support == "required"
        assert tools["ev__echo"].execution is not None and tools["ev__echo"].execution.task_support == "forbidden"
        # Offered exactly the client's tasks capability, which has no task-augmented sampling or elicitation, the
        # downstream lists none of its async triggers (they need one).
        assert not [name for name in tools if name.endswith("-async")]

        with anyio.fail_after(60):
            created = await client.raw("tools/call", research("python"))
        task_id = created["task"]["taskId"]
        assert task_id.startswith("ev:") and created["task"]["status"] == "working"
        with anyio.fail_after(60):
            working = await client.raw("tasks/get", {"taskId": task_id})
            listed = await client.raw("tasks/list")
            result = await client.raw("tasks/result", {"taskId": task_id})  # waits for the task to end
            done = await client.raw("tasks/get", {"taskId": task_id})
        assert working["taskId"] == task_id and working["status"] in ("working", "completed")
        assert [task["taskId"] for task in listed["tasks"]] == [task_id]
        assert "Research Report: python" in result["content"][0]["text"]
        assert result["_meta"]["io.modelcontextprotocol/related-task"] == {"taskId": task_id}
        assert done["status"] == "completed"
        await wait_status(client, task_id, "completed")
        assert {s.task_id for s in client.statuses} == {task_id}  # every status under circuitbox's id

        # The breaker records the creation answer as the call's outcome.
        with anyio.fail_after(60):
            status = await client.call_tool("circuit_status", {"server": "ev", "tool": "simulate-research-query"})
        [breaker] = status.structured_content["breakers"]  # type: ignore[index]
        assert breaker["calls"] == 1 and breaker["successes"] == 1

        with anyio.fail_after(60):
            second = (await client.raw("tools/call", research("rust")))["task"]["taskId"]
            cancelled = await client.raw("tasks/cancel", {"taskId": second})
            after = await client.raw("tasks/get", {"taskId": second})
        assert cancelled["taskId"] == second and cancelled["status"] == "cancelled"
        assert after["status"] == "cancelled"

        for unknown in ("nope", "ev:unknown", 7):
            with pytest.raises(MCPError) as raised, anyio.fail_after(60):
                await client.raw("tasks/get", {"taskId": unknown})
            assert raised.value.error.code == -32602

        # A circuit that rejects the call answers at once, without a task.
        with anyio.fail_after(60):
            await client.call_tool(
                "circuit_force", {"server": "ev", "tool": "simulate-research-query", "state": "open"}
            )
            rejected = await client.raw("tools/call", research("go"))
        assert rejected["isError"] is True and "task" not in rejected
        assert rejected["_meta"]["circuitbox/breaker"]["state"] == "forced_open"


async def test_over_http_each_client_sees_only_its_own_tasks(tmp_path: Path) -> None:
    async with serving(tmp_path, {"mcpServers": {"ev": everything_server()}}) as (url, _):
        async with http_client(url) as first, http_client(url) as second:
            with anyio.fail_after(60):
                task_id = (await first.raw("tools/call", research("python")))["task"]["taskId"]
                theirs = await second.raw("tasks/list")
                mine = await first.raw("tasks/list")
            assert theirs["tasks"] == [] and [task["taskId"] for task in mine["tasks"]] == [task_id]
            for method in ("tasks/get", "tasks/result", "tasks/cancel"):
                with pytest.raises(MCPError) as raised, anyio.fail_after(60):
                    await second.raw(method, {"taskId": task_id})
                assert raised.value.error.code == -32602
            with anyio.fail_after(60):
                result = await first.raw("tasks/result", {"taskId": task_id})
            assert "Research Report: python" in result["content"][0]["text"]
            await wait_status(first, task_id, "completed")
            assert not second.statuses

        # A 2026-era client has no tasks: no capability, no task-only tool, no taskSupport, no tasks/* methods.
        async with Client(url) as modern:
            with anyio.fail_after(60):
                tools = {tool.name: tool for tool in (await modern.list_tools()).tools}
            assert RESEARCH not in tools and "ev__echo" in tools
            assert all(tool.execution is None or tool.execution.task_support != "optional" for tool in tools.values())


async def test_a_question_a_task_asks_the_client_names_the_task_by_circuitbox_id(tmp_path: Path) -> None:
    asked: list[dict[str, Any] | None] = []

    async def elicit(_: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(dict(params.meta or {}))
        return types.ElicitResult(action="accept", content={"interpretation": "snake"})

    config = {"mcpServers": {"ev": everything_server()}}
    async with tasks_client_over_stdio(tmp_path, config, elicitation_callback=elicit) as client:
        with anyio.fail_after(60):
            # An ambiguous query asks the client to clarify, on the stream of the tasks/result waiting for it.
            task_id = (await client.raw("tools/call", research("python", ambiguous=True)))["task"]["taskId"]
            result = await client.raw("tasks/result", {"taskId": task_id})
        assert asked == [{RELATED: {"taskId": task_id}}]
        assert "Research Report: python (snake)" in result["content"][0]["text"]


async def test_a_log_message_about_a_task_names_it_by_circuitbox_id(tmp_path: Path) -> None:
    notes: list[Any] = []

    async def note(message: Any) -> None:
        if isinstance(message, types.LoggingMessageNotification):
            notes.append(message.params)

    async with tasks_client_over_stdio(tmp_path, {"mcpServers": {"ts": task_server()}}, message_handler=note) as c:
        with anyio.fail_after(60):
            await c.list_tools()
            task_id = (await c.raw("tools/call", {"name": "ts__work", "arguments": {"seconds": 0}, "task": {}}))[
                "task"
            ]["taskId"]
            result = await c.raw("tasks/result", {"taskId": task_id})  # the server logs about the task first
        assert result["_meta"][RELATED] == {"taskId": task_id}
        [logged] = notes
        assert logged.logger == "ts__tasks" and logged.meta == {RELATED: {"taskId": task_id}}


def work(**arguments: Any) -> dict[str, Any]:
    return {"name": "ts__work", "arguments": arguments, "task": {"ttl": 60000}}


async def test_a_task_left_running_by_a_client_that_leaves_is_cancelled_on_its_server(tmp_path: Path) -> None:
    async with serving(tmp_path, {"mcpServers": {"ts": task_server()}}) as (url, _):
        async with http_client(url) as leaving:
            with anyio.fail_after(60):
                running = (await leaving.raw("tools/call", work()))["task"]
                ended = (await leaving.raw("tools/call", work(seconds=0)))["task"]["taskId"]
                await leaving.raw("tasks/result", {"taskId": ended})  # known to have ended: not to be cancelled
        # The client is gone (its session deleted): nobody can reach its tasks, and the one still running is
        # cancelled on the server, which another client can see through a plain tool of that server's.
        async with http_client(url) as other:
            with anyio.fail_after(60):
                result = await other.call_tool("ts__cancelled", {"count": 1})
        assert result.content[0].text == json.dumps([running["statusMessage"].removeprefix("task ")])  # type: ignore[union-attr]


def text(result: types.CallToolResult) -> str:
    return " ".join(block.text for block in result.content if isinstance(block, types.TextContent))


async def test_a_downstream_asks_the_client_for_sampling_as_a_task_under_ids_of_its_own_hop(tmp_path: Path) -> None:
    config = {"mcpServers": {"ev": everything_server()}}
    async with tasks_client_over_stdio(tmp_path, config, client=TaskRunningClient) as client:
        with anyio.fail_after(60):
            tools = {tool.name for tool in (await client.list_tools()).tools}
            # server-everything offers this tool only to a client that declares task-augmented sampling.
            assert "ev__trigger-sampling-request-async" in tools
            result = await client.call_tool("ev__trigger-sampling-request-async", {"prompt": "hi", "maxTokens": 5})
        report = text(result)
        assert "[COMPLETED] Async sampling completed!" in report and "sampled in task mine-0" in report
        [minted] = [line.removeprefix("Task created: ") for line in report.splitlines() if "Task created" in line]
        assert minted.startswith("circuitbox:") and f'"taskId": "{minted}"' in report  # its result's related task
        assert [(method, params.get("taskId")) for method, params in client.asked] == [
            ("sampling/createMessage", None),
            ("tasks/get", "mine-0"),
            ("tasks/result", "mine-0"),
        ]
        assert client.asked[0][1]["task"] == {"ttl": 300000}


async def test_over_http_a_clients_own_connection_is_offered_its_tasks_and_a_shared_one_is_not(tmp_path: Path) -> None:
    own, shared = task_server(), {**task_server(), "session": "shared"}
    async with serving(tmp_path, {"mcpServers": {"own": own, "shared": shared}}) as (url, _):
        async with http_client(url, TaskRunningClient) as client:
            with anyio.fail_after(60):
                seen = json.loads(text(await client.call_tool("own__sample_in_task", {})))
                not_offered = json.loads(text(await client.call_tool("shared__sample_in_task", {})))
        assert seen["offered"] == {"list": {}, "cancel": {}, "requests": {"sampling": {"createMessage": {}}}}
        minted = seen["created"]["task"]["taskId"]
        assert minted.startswith("circuitbox:") and seen["got"] == {**seen["got"], "taskId": minted}
        assert seen["got"]["status"] == "completed" and [s["taskId"] for s in seen["statuses"]] == [minted]
        assert seen["result"]["content"]["text"] == "sampled in task mine-0"
        assert seen["result"]["_meta"][RELATED] == {"taskId": minted}
        assert [t["taskId"] for t in seen["listed"]["tasks"]] == [minted]
        assert seen["unknown"] == -32602  # a task this connection never created: refused by circuitbox
        assert [(method, params.get("taskId")) for method, params in client.asked] == [
            ("sampling/createMessage", None),
            ("tasks/get", "mine-0"),
            ("tasks/result", "mine-0"),
            ("tasks/list", None),
        ]
        # One downstream connection for every client: it cannot be offered each client's tasks exactly.
        assert not_offered == {"offered": None}
