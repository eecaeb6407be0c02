"""Tasks (2025-11-25) are not relayed, so they are never advertised: a tool's `execution.taskSupport` is dropped from
what circuitbox publishes, and a tool that requires a task is not published at all (it could not be called)."""

from __future__ import annotations

import mcp_types as types
import pytest

from circuitbox.server.catalog import build_catalog
from circuitbox.server.downstream import Listing


def tool(name: str, support: str | None) -> types.Tool:
    execution = types.ToolExecution(task_support=support) if support else None  # type: ignore[arg-type]
    return types.Tool(name=name, input_schema={"type": "object"}, execution=execution)


def test_task_support_is_never_advertised_and_task_only_tools_are_not_published(
    caplog: pytest.LogCaptureFixture,
) -> None:
    listing = Listing(
        tools=(tool("plain", None), tool("never", "forbidden"), tool("may", "optional"), tool("must", "required"))
    )
    catalog = build_catalog([("s", "s", listing)])
    assert set(catalog.tools) == {"s__plain", "s__never", "s__may"}
    assert catalog.tools["s__may"][1].execution is None
    assert catalog.tools["s__never"][1].execution == types.ToolExecution(task_support="forbidden")
    assert "'must' of server 's' is hidden: it requires task-augmented calls" in caplog.text
