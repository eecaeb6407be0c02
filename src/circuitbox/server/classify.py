"""What a downstream's answer means for its breaker (the README's policies section).

Transport errors, timeouts, JSON-RPC internal errors and `isError` results are failures; caller mistakes (invalid
params, unknown tool, an `isError` whose text reports input validation) are ignored, so an agent that keeps sending
bad arguments cannot open a circuit for everybody. `tool_errors`, `ignore_errors` and `failure_errors` refine the
`isError` rule per server or tool.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

import mcp_types as types
from mcp import MCPError

from circuitbox.config.policy import ToolPolicy

# JSON-RPC codes that mean "the caller asked wrongly", not "the server is unwell". Not -32600: circuitbox builds the
# request itself, and the SDK reports transport trouble (a lost HTTP session, a wrong content type) with that code.
CALLER_MISTAKES = frozenset({types.INVALID_PARAMS, types.METHOD_NOT_FOUND})
# Only texts that *start* as an input-validation report: "Output validation error" or an API's own "validation
# error" deep in a message are the server's trouble, not the caller's.
_VALIDATION = re.compile(r"^\s*(MCP error -32602|Input validation error|Invalid (arguments|params|parameters))", re.I)


class Verdict(Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    kind: str = ""  # failure kind for the breaker and metrics: timeout, transport, protocol, tool_error
    error: str | None = None


SUCCESS = Outcome(Verdict.SUCCESS)


def result_text(result: types.CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, types.TextContent))


def classify_result(result: types.CallToolResult, policy: ToolPolicy) -> Outcome:
    if not result.is_error:
        return SUCCESS
    text = result_text(result)
    error = text[:500] or "the tool returned isError without a message"
    if any(p.search(text) for p in policy.failure_errors):
        return Outcome(Verdict.FAILURE, "tool_error", error)
    if any(p.search(text) for p in policy.ignore_errors) or _VALIDATION.search(text):
        return Outcome(Verdict.IGNORED, error=error)
    if policy.tool_errors == "ignore":
        return Outcome(Verdict.IGNORED, error=error)
    return Outcome(Verdict.FAILURE, "tool_error", error)


def classify_error(exc: MCPError) -> Outcome:
    """A JSON-RPC error from the downstream (or the SDK's own closed-connection error)."""
    code = exc.error.code
    message = f"MCP error {code}: {exc.error.message}"
    if code in CALLER_MISTAKES:
        return Outcome(Verdict.IGNORED, error=message)
    if code in (types.CONNECTION_CLOSED, types.INVALID_REQUEST):
        return Outcome(Verdict.FAILURE, "transport", message)
    if code == types.REQUEST_TIMEOUT:
        return Outcome(Verdict.FAILURE, "timeout", message)
    return Outcome(Verdict.FAILURE, "protocol", message)
