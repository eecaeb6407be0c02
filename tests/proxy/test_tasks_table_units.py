"""The task table's bookkeeping (tasks.py): each client's ids bounded with the oldest forgotten first, a client never
finds another's task, and a client that is gone leaves nothing behind for status notifications."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from mcp import MCPError

from circuitbox.server.tasks import TaskTable


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
