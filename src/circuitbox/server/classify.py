"""What a downstream's answer means for its breaker (the README's "What counts as a failure").

A breaker opens on a server's distress, never on the caller's own mistakes. Transport errors, timeouts and JSON-RPC
internal errors are failures. An `isError` result is a failure only when its text reports distress of the server or
of what it fronts (the built-in `DISTRESS_PATTERNS` plus the service preset's); any other (a page that does not
exist, a bad git ref) is the tool's answer about the caller's input and is recorded as ignored. Caller mistakes
(invalid params, unknown tool) are ignored too, so an agent that keeps sending bad requests cannot open a circuit for
everybody. `tool_errors` ("failure": every `isError` counts; "ignore": none), `failure_errors` and
`ignore_errors` refine this per server or tool (`config.policy.error_rules` lists the rules in order).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum

import mcp_types as types
from mcp import MCPError

from circuitbox.config.policy import INPUT_VALIDATION, ToolPolicy

# JSON-RPC codes that mean "the caller asked wrongly", not "the server is unwell". Not -32600: circuitbox builds the
# request itself, and the SDK reports transport trouble (a lost HTTP session, a wrong content type) with that code.
# -32021: the request needs a capability its client did not declare (2026-07-28): the client's mistake too.
CALLER_MISTAKES = frozenset({types.INVALID_PARAMS, types.METHOD_NOT_FOUND, types.MISSING_REQUIRED_CLIENT_CAPABILITY})
_VALIDATION = re.compile(INPUT_VALIDATION, re.I)
# Distress is reported in the first lines of a message; a tool that returns a whole error page must not cost a scan
# of all of it.
SCAN_CHARS = 4096


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
    text = "\n".join(block.text for block in result.content if isinstance(block, types.TextContent))
    if not text and result.structured_content is not None:  # some servers report errors as data only
        text = json.dumps(result.structured_content, default=str)[:SCAN_CHARS]
    return text


def classify_result(result: types.CallToolResult, policy: ToolPolicy) -> Outcome:
    """The verdict on a result, by the rules `config.policy.error_rules` lists (first match decides)."""
    if not result.is_error:
        return SUCCESS
    text = result_text(result)[:SCAN_CHARS]
    error = text[:500] or "the tool returned isError without a message"
    failure = Outcome(Verdict.FAILURE, "tool_error", error)
    if any(p.search(text) for p in policy.failure_errors):
        return failure
    if any(p.search(text) for p in policy.ignore_errors) or _VALIDATION.search(text):
        return Outcome(Verdict.IGNORED, error=error)
    if policy.tool_errors == "failure":
        return failure
    if policy.tool_errors == "classified":
        distress = policy.distress_regex
        if distress is not None and distress.search(text):
            return failure
    return Outcome(Verdict.IGNORED, error=error)


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
