"""The bundled fault-injecting MCP server (`circuitbox chaos`).

`build_server` (which imports `mcp`) is loaded on first use, so `circuitbox chaos --help` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from circuitbox.chaos._behaviours import (
    DEFAULT_TOOLS,
    SYNTAX,
    Behaviour,
    BehaviourError,
    parse_behaviour,
    parse_tool,
    resolve,
)
from circuitbox.chaos._state import ChaosState, ToolStats, UnknownToolError

if TYPE_CHECKING:
    from circuitbox.chaos._server import build_server

__all__ = [
    "DEFAULT_TOOLS",
    "SYNTAX",
    "Behaviour",
    "BehaviourError",
    "ChaosState",
    "ToolStats",
    "UnknownToolError",
    "build_server",
    "parse_behaviour",
    "parse_tool",
    "resolve",
]


def __getattr__(name: str) -> Any:
    if name == "build_server":
        from circuitbox.chaos._server import build_server

        return build_server
    raise AttributeError(name)
