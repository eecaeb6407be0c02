"""The task table's bookkeeping (tasks.py): each client's ids bounded with the oldest forgotten first, a client never
finds another's task, a client that is gone leaves nothing behind for status notifications, and a forgotten task that
may still be running is cancelled on its server."""

from __future__ import annotations

import gc
import logging
from contextlib import nullcontext
from typing import Any, cast

import anyio
import mcp_types as types
import pytest
from mcp import MCPError

from circuitbox.server.downstream import Connection, DownstreamUnavailableError
from circuitbox.server.tasks import TaskHooks, TaskRelay, TaskTable


class Client:
    """Stands for an upstream connection: the table keys clients weakly, so it must be weak-referenceable."""


def downstream() -> Any:
    return object()  # the table only uses a downstream as a key


def unknown(table: TaskTable, client: Any, published: Any) -> int:
    with pytest.raises(MCPError) as raised:
        table.find(client, published)
    return raised.value.error.code


def test_past_the_limit_the_oldest_task_id_is_forgotten_with_its_status_route() -> None:
    table, client, ds = TaskTable(limit=3), Client(), downstream()
    tasks = [table.add(client, "ev", ds, f"r{i}") for i in range(4)]
    assert unknown(table, client, tasks[0].published) == -32602
    assert table.owner(ds, "r0") is None
    assert [t.published for t in table.of(client)] == [t.published for t in tasks[1:]]
    assert table.find(client, tasks[3].published) is tasks[3]
    assert table.owner(ds, "r3") == (client, tasks[3])
    assert tasks[3].published.startswith("ev:") and len({t.published for t in tasks}) == 4


def test_a_client_never_finds_another_clients_task_nor_a_non_string_id() -> None:
    table, mine, theirs, ds = TaskTable(), Client(), Client(), downstream()
    task = table.add(mine, "ev", ds, "r")
    assert unknown(table, theirs, task.published) == -32602
    assert table.of(theirs) == []
    for bad in (None, 7, ["x"]):
        assert unknown(table, mine, bad) == -32602
    assert table.owner(ds, 7) is None and table.owner(downstream(), "r") is None


def test_a_client_that_is_gone_has_its_tasks_forgotten_and_pruned() -> None:
    table, ds = TaskTable(limit=2), downstream()
    gone = Client()
    table.add(gone, "ev", ds, "old")
    del gone
    gc.collect()
    assert table.owner(ds, "old") is None  # its status notifications reach nobody
    # Enough tasks of others that the remote index is pruned: the gone client's entry goes.
    others = [Client() for _ in range(3)]
    for i, other in enumerate(others):
        table.add(other, "ev", ds, f"a{i}")
        table.add(other, "ev", ds, f"b{i}")
    assert all(key != (ds, "old") for key in table._remote)
    assert table.owner(ds, "b2") is not None


class ListingServer:
    """A task-listing downstream as the relay sees it: its name, capabilities and `tasks/list` answers."""

    def __init__(self, name: str, pages: list[dict[str, Any]] | None) -> None:
        self.name = name
        self.capabilities = types.ServerCapabilities.model_validate({"tasks": {"list": {}}})
        self._pages = pages  # None: it is down
        self.asked: list[Any] = []

    async def request(self, request: Any, result_type: Any) -> Any:
        self.asked.append(request.params)
        if self._pages is None:
            raise DownstreamUnavailableError(self.name, Connection.RESTARTING, "it crashed")
        return result_type.model_validate(self._pages[(len(self.asked) - 1) % len(self._pages)])  # each list re-asks


def relay() -> TaskRelay:
    async def never(*_: Any) -> Any:
        raise AssertionError("not used by tasks/list")

    hooks = TaskHooks(task_server=lambda _: None, call=never, serving=lambda *_: nullcontext(),
                      timeout=lambda _: 5.0, capabilities=list, ready=never)  # fmt: skip
    return TaskRelay(hooks)


@pytest.mark.anyio
async def test_tasks_list_leaves_out_a_server_that_fails_and_pages_the_rest_with_its_own_cursor() -> None:
    tasks, client = relay(), Client()
    down = ListingServer("down", None)
    up = ListingServer("up", [
        {"tasks": [task(f"u{i}") for i in range(60)], "nextCursor": "theirs"},  # the server's own paging, followed
        {"tasks": [task(f"u{i}") for i in range(60, 120)]},
    ])  # fmt: skip
    published = [tasks.table.add(client, "up", cast(Any, up), f"u{i}").published for i in range(120)]
    tasks.table.add(client, "down", cast(Any, down), "d0")
    with anyio.fail_after(10):
        first = await tasks._list(client, {})
        rest = await tasks._list(client, {"cursor": first["nextCursor"]})
    assert [t["taskId"] for t in first["tasks"]] == published[:100]
    assert [t["taskId"] for t in rest["tasks"]] == published[100:] and "nextCursor" not in rest
    assert up.asked[1] == {"cursor": "theirs"}  # the server's cursor stays between circuitbox and it
    with pytest.raises(MCPError) as foreign:
        await tasks._list(client, {"cursor": "bm90IG91cnM"})
    assert foreign.value.error.code == -32602


def task(task_id: str) -> dict[str, Any]:
    return {"taskId": task_id, "status": "working", "createdAt": "2026-12-04T00:00:00Z", "lastUpdatedAt":
            "2026-12-04T00:00:00Z", "ttl": None}  # fmt: skip


def test_a_related_task_meta_names_a_task_by_its_clients_id_and_is_left_alone_for_any_other() -> None:
    tasks, client, ds = relay(), Client(), downstream()
    task = tasks.table.add(client, "ev", ds, "r")

    def note(remote: Any) -> types.LoggingMessageNotification:
        meta = {"io.modelcontextprotocol/related-task": {"taskId": remote}, "other": 1}
        params = types.LoggingMessageNotificationParams(level="info", data="x", _meta=meta)
        return types.LoggingMessageNotification(params=params)

    mapped = tasks.related(ds, note("r"))
    assert mapped.params.meta == {"io.modelcontextprotocol/related-task": {"taskId": task.published}, "other": 1}
    for untouched in (note("unknown"), note(7)):
        assert tasks.related(ds, untouched) is untouched
    assert tasks.related(downstream(), same := note("r")) is same  # another connection's task of that id
    plain = types.ListRootsRequest()
    assert tasks.related(ds, plain) is plain


class CancellingServer:
    """A task server as the relay sees it when it cancels: its capabilities, and the `tasks/cancel` it is sent."""

    def __init__(self, name: str, cancels: bool = True, fails: bool = False) -> None:
        self.name = name
        self.capabilities = types.ServerCapabilities.model_validate({"tasks": {"cancel": {}} if cancels else {}})
        self.fails = fails
        self.cancelled: list[Any] = []

    async def request(self, request: Any, result_type: Any) -> Any:
        assert request.method == "tasks/cancel"
        self.cancelled.append(request.params["taskId"])
        if self.fails:
            raise DownstreamUnavailableError(self.name, Connection.RESTARTING, "it crashed")
        return result_type.model_validate({"taskId": request.params["taskId"], "status": "cancelled"})


@pytest.mark.anyio
async def test_a_task_forgotten_past_the_limit_is_cancelled_on_its_server_unless_it_ended_or_cannot_be(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "circuitbox.tasks")
    tasks, client = relay(), Client()
    tasks.table = TaskTable(limit=1, on_forget=tasks.forget)  # each task added forgets the one before
    server, mute, broken = (
        CancellingServer("s"),
        CancellingServer("mute", cancels=False),
        CancellingServer("b", fails=True),
    )
    async with anyio.create_task_group() as tg:
        tasks.start(tg)
        tasks.table.add(client, "s", cast(Any, server), "running")
        tasks.table.add(client, "s", cast(Any, server), "ended", status="completed")  # "running": cancelled
        tasks.table.add(client, "s", cast(Any, server), "ended-later")  # "ended": not asked
        tasks.table.of(client)[0].status = "failed"  # as a status notification would say
        tasks.table.add(client, "mute", cast(Any, mute), "unasked")  # "ended-later": not asked
        tasks.table.add(client, "b", cast(Any, broken), "down")  # "unasked": its server has no tasks/cancel
        tasks.table.add(client, "s", cast(Any, server), "last")  # "down": its server fails, logged
        with anyio.fail_after(10):
            await anyio.wait_all_tasks_blocked()
    assert server.cancelled == ["running"] and mute.cancelled == [] and broken.cancelled == ["down"]
    assert "forgotten task down not cancelled: server 'b' is restarting: it crashed" in caplog.text
