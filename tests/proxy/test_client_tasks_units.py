"""The bookkeeping of tasks the other way (client_tasks.py): a client's task that a downstream created is known to
that downstream connection only, under circuitbox's id, within a bound; the client's own ids stay on its hop."""

from __future__ import annotations

from typing import Any, cast

import pytest
from mcp import MCPError

from circuitbox.server.client_tasks import ClientTasks

pytestmark = pytest.mark.anyio


class Outbound:
    """A client's channel: answers as a task-running client would, and keeps what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, dict[str, Any]]] = []
        self.created = 0

    async def send_raw_request(self, method: str, params: dict[str, Any], opts: Any) -> dict[str, Any]:
        self.asked.append((method, params))
        if method == "sampling/createMessage":
            self.created += 1
            return {"task": {"taskId": f"mine-{self.created}", "status": "working"}}
        if method == "tasks/list":
            return {"tasks": [{"taskId": f"mine-{i}"} for i in range(1, self.created + 1)], "nextCursor": "c2"}
        return {"taskId": params["taskId"], "status": "completed"}


class Client:
    def __init__(self) -> None:
        self.outbound = Outbound()


class Session:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send_notification(self, notification: Any) -> None:
        self.sent.append(notification)


class Server:
    """A downstream connection as the bookkeeping sees it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.session = Session()


SAMPLING: dict[str, Any] = {"messages": [], "maxTokens": 1, "task": {"ttl": 1000}}


async def create(tasks: ClientTasks, server: Server, client: Client) -> str:
    created = await tasks.request(cast(Any, server), client, "sampling/createMessage", dict(SAMPLING))
    minted: str = created["task"]["taskId"]
    return minted


async def test_a_client_task_is_reached_only_by_the_connection_that_created_it_under_circuitbox_ids() -> None:
    tasks, client, first, second = ClientTasks(), Client(), Server("a"), Server("b")
    mine = await create(tasks, first, client)
    theirs = await create(tasks, second, client)
    assert mine.startswith("circuitbox:") and mine != theirs
    got = await tasks.request(cast(Any, first), client, "tasks/get", {"taskId": mine})
    assert got == {"taskId": mine, "status": "completed"} and client.outbound.asked[-1] == (
        "tasks/get",
        {"taskId": "mine-1"},
    )
    for other, task_id in ((second, mine), (first, theirs), (first, "mine-1"), (first, 7)):
        with pytest.raises(MCPError) as raised:
            await tasks.request(cast(Any, other), client, "tasks/result", {"taskId": task_id})
        assert raised.value.error.code == -32602
    listed = await tasks.request(cast(Any, first), client, "tasks/list", {"cursor": "c1"})
    assert listed == {"tasks": [{"taskId": mine}], "nextCursor": "c2"}  # the client's cursor passed through
    assert client.outbound.asked[-1] == ("tasks/list", {"cursor": "c1"})

    related = {"io.modelcontextprotocol/related-task": {"taskId": "mine-2"}}
    await tasks.status(client, {"taskId": "mine-2", "status": "completed", "_meta": related})
    [note] = second.session.sent
    assert note.method == "notifications/tasks/status" and note.params["taskId"] == theirs
    assert note.params["_meta"]["io.modelcontextprotocol/related-task"] == {"taskId": theirs}
    await tasks.status(client, {"taskId": "unknown", "status": "completed"})
    await tasks.status(Client(), {"taskId": "mine-1", "status": "completed"})  # another client's id: not this one
    assert first.session.sent == [] and len(second.session.sent) == 1


async def test_past_the_limit_a_connections_oldest_client_task_is_forgotten_both_ways() -> None:
    tasks, client, server = ClientTasks(limit=2), Client(), Server("a")
    minted = [await create(tasks, server, client) for _ in range(3)]
    with pytest.raises(MCPError):
        await tasks.request(cast(Any, server), client, "tasks/get", {"taskId": minted[0]})
    await tasks.status(client, {"taskId": "mine-1", "status": "completed"})
    assert server.session.sent == []
    assert (await tasks.request(cast(Any, server), client, "tasks/get", {"taskId": minted[2]}))["taskId"] == minted[2]


async def test_with_no_client_to_ask_the_downstream_gets_an_error() -> None:
    with pytest.raises(MCPError) as raised:
        await ClientTasks().request(cast(Any, Server("a")), None, "sampling/createMessage", dict(SAMPLING))
    assert raised.value.error.code == -32603
