"""Tasks (2025-11-25) are published where circuitbox relays them: the tools of a server that declares tasks for
tools/call keep their `execution.taskSupport`; another server's tools lose it, and one that requires a task is not
published (it could not be called). Clients without tasks (2026-era) get the tool list without them."""

from __future__ import annotations

import mcp_types as types
import pytest

from circuitbox.server.catalog import build_catalog
from circuitbox.server.downstream import Listing
from circuitbox.server.tasks import offers_tool_tasks, upstream_capability, without_tasks


def tool(name: str, support: str | None) -> types.Tool:
    execution = types.ToolExecution(task_support=support) if support else None  # type: ignore[arg-type]
    return types.Tool(name=name, input_schema={"type": "object"}, execution=execution)


LISTING = Listing(
    tools=(tool("plain", None), tool("never", "forbidden"), tool("may", "optional"), tool("must", "required"))
)


def test_a_server_without_tasks_has_no_task_support_published_and_its_task_only_tools_hidden(
    caplog: pytest.LogCaptureFixture,
) -> None:
    catalog = build_catalog([("s", "s", LISTING)])
    assert set(catalog.tools) == {"s__plain", "s__never", "s__may"}
    assert catalog.tools["s__may"][1].execution is None
    assert catalog.tools["s__never"][1].execution == types.ToolExecution(task_support="forbidden")
    assert "'must' of server 's' is hidden: it requires task-augmented calls" in caplog.text


def test_a_server_that_offers_tasks_has_its_tools_published_with_their_task_support() -> None:
    catalog = build_catalog([("s", "s", LISTING), ("t", "t", LISTING)], task_servers={"t"})
    assert {name for name in catalog.tools if name.startswith("t__")} == {"t__plain", "t__never", "t__may", "t__must"}
    assert catalog.tools["t__must"][1].execution == types.ToolExecution(task_support="required")
    assert catalog.tools["t__may"][1].execution == types.ToolExecution(task_support="optional")
    assert "s__must" not in catalog.tools


def test_a_client_without_tasks_gets_the_list_without_task_support_or_task_only_tools() -> None:
    tools = without_tasks(LISTING.tools)
    assert [(t.name, t.execution) for t in tools] == [
        ("plain", None),
        ("never", types.ToolExecution(task_support="forbidden")),
        ("may", None),
    ]


def caps(tasks: dict[str, object] | None) -> types.ServerCapabilities:
    return types.ServerCapabilities.model_validate({"tasks": tasks} if tasks is not None else {})


def test_the_tasks_capability_declares_only_the_parts_a_task_offering_downstream_declares() -> None:
    calls = {"requests": {"tools": {"call": {}}}}
    assert upstream_capability([None, caps(None), caps({"list": {}, "cancel": {}})]) is None  # no tools/call
    assert upstream_capability([caps(calls)]) == calls
    assert upstream_capability([caps({**calls, "cancel": {}}), caps({"list": {}, "requests": {}})]) == {
        **calls,
        "cancel": {},
    }
    assert upstream_capability([caps({**calls, "list": {}}), caps(calls)]) == {**calls, "list": {}}
    assert not offers_tool_tasks(caps({"requests": {"tools": {}}})) and offers_tool_tasks(caps(calls))
