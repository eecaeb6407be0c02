"""Which `isError` results count against a breaker: a server's distress does, the caller's own mistakes do not."""

from __future__ import annotations

from typing import Any

import mcp_types as types
import pytest

from circuitbox.config.load import parse_config
from circuitbox.config.policy import ToolPolicy, error_rules
from circuitbox.server.classify import SCAN_CHARS, Verdict, classify_result


def policy(preset: str = "none", **server: Any) -> ToolPolicy:
    config = parse_config({"mcpServers": {"s": {"command": "x", "preset": preset, **server}}}, env={})
    return config.policy("s", "t")


def verdict(text: str, p: ToolPolicy | None = None) -> Verdict:
    result = types.CallToolResult(content=[types.TextContent(text=text)], is_error=True)
    return classify_result(result, p or policy()).verdict


# Texts real servers send (mcp-server-fetch, -git, -filesystem, Node and Python HTTP clients, cloud APIs).
DISTRESS = [
    "Failed to fetch http://127.0.0.1:9/x: ConnectError('All connection attempts failed')",
    "Failed to fetch https://example.com/: ReadTimeout('')",
    "connect ECONNREFUSED 127.0.0.1:5432",
    "[Errno 111] Connection refused",
    "read ECONNRESET",
    "Connection reset by peer",
    "getaddrinfo ENOTFOUND api.example.com",
    "[Errno -3] Temporary failure in name resolution",
    "Failed to fetch https://example.com/ - status code 503",
    "HTTP 502 Bad Gateway",
    "Error: 500 Internal Server Error",
    "status code 429",
    "You are being rate limited, retry in 30 s",
    "The service is temporarily unavailable",
    "Overloaded: the model is overloaded",
    "internal error while processing the request",
    "request timed out after 30s",
    "TimeoutError: the backend did not answer",
    "Authentication failed: invalid API key",
    "401 Unauthorized",
]
CALLER = [
    "Failed to fetch https://example.com/missing - status code 404",
    "Failed to fetch https://example.com/private - status code 403",
    "fatal: bad revision 'nope'",
    "Error executing tool git_show: Ref 'nope' did not resolve to an object",
    "ENOENT: no such file or directory, open '/tmp/nothing'",
    "Access denied - path outside allowed directories: /etc",
    'syntax error at or near "SELEC"',
    "Input validation error: 'a' is a required property",
    "Entity with name 'x' not found",
    "",
]


@pytest.mark.parametrize("text", DISTRESS)
def test_a_text_reporting_the_servers_distress_is_a_failure_by_default(text: str) -> None:
    assert verdict(text) is Verdict.FAILURE


@pytest.mark.parametrize("text", CALLER)
def test_any_other_is_error_text_is_the_callers_answer_and_ignored(text: str) -> None:
    assert verdict(text) is Verdict.IGNORED


@pytest.mark.parametrize(
    ("preset", "text"),
    [
        ("docker", "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"),
        ("kubernetes", "The connection to the server 10.0.0.1:6443 was refused - did you specify the right host?"),
        ("slack", "Slack API error: ratelimited"),
        ("s3", "An error occurred (SlowDown) when calling the PutObject operation: Please reduce your request rate."),
        ("s3", "An error occurred (ServiceUnavailable) when calling the GetObject operation"),
        ("claude", '{"type": "error", "error": {"type": "overloaded_error"}}'),
    ],
)
def test_each_service_preset_adds_the_ways_its_service_reports_distress(preset: str, text: str) -> None:
    assert verdict(text, policy(preset)) is Verdict.FAILURE
    assert any(rule["source"] == f"preset:{preset}" for rule in error_rules(policy(preset)))


def test_a_preset_pattern_applies_only_to_servers_of_that_preset() -> None:
    assert verdict("Slack API error: ratelimited", policy("slack")) is Verdict.FAILURE
    assert verdict("error: token_revoked", policy("slack")) is Verdict.FAILURE
    assert verdict("error: token_revoked", policy("none")) is Verdict.IGNORED


def test_strict_mode_counts_every_is_error_but_input_validation() -> None:
    strict = policy(tool_errors="failure")
    assert verdict("fatal: bad revision 'nope'", strict) is Verdict.FAILURE
    assert verdict("Input validation error: 'a' is a required property", strict) is Verdict.IGNORED


def test_ignore_mode_counts_none_but_failure_errors() -> None:
    lenient = policy(tool_errors="ignore", failure_errors=["disk full"])
    assert verdict("503 Service Unavailable", lenient) is Verdict.IGNORED
    assert verdict("write failed: disk full", lenient) is Verdict.FAILURE


def test_failure_errors_add_to_the_distress_patterns_and_ignore_errors_take_them_back() -> None:
    refined = policy(failure_errors=["(?i)quota"], ignore_errors=["status code 503 from the sandbox"])
    assert verdict("Quota of the project reached", refined) is Verdict.FAILURE
    assert verdict("proxy said status code 503 from the sandbox", refined) is Verdict.IGNORED
    assert verdict("status code 503", refined) is Verdict.FAILURE
    assert verdict("fatal: bad revision 'nope'", refined) is Verdict.IGNORED


def test_a_tool_entry_may_switch_back_to_the_classified_default() -> None:
    config = parse_config(
        {
            "mcpServers": {
                "s": {"command": "x", "tool_errors": "failure", "tools": {"t": {"tool_errors": "classified"}}}
            }
        },
        env={},
    )
    assert verdict("fatal: bad revision 'nope'", config.policy("s", "other")) is Verdict.FAILURE
    assert verdict("fatal: bad revision 'nope'", config.policy("s", "t")) is Verdict.IGNORED


def test_an_error_reported_only_as_structured_content_is_classified_by_it() -> None:
    result = types.CallToolResult(content=[], structured_content={"error": "service unavailable"}, is_error=True)
    assert classify_result(result, policy()).verdict is Verdict.FAILURE
    result = types.CallToolResult(content=[], structured_content={"error": "no such user"}, is_error=True)
    assert classify_result(result, policy()).verdict is Verdict.IGNORED


def test_only_the_head_of_a_long_error_text_is_scanned() -> None:
    page = "Failed to fetch https://example.com/ - status code 404\n" + "x" * SCAN_CHARS + " service unavailable"
    assert verdict(page) is Verdict.IGNORED


def test_a_success_is_never_classified_by_its_text() -> None:
    result = types.CallToolResult(content=[types.TextContent(text="connection refused")])
    assert classify_result(result, policy()).verdict is Verdict.SUCCESS


def test_the_rules_list_the_order_in_which_they_are_tried_and_where_each_comes_from() -> None:
    rules = error_rules(policy("docker", failure_errors=["boom"], ignore_errors=["meh"]))
    kinds = [(r["counts_as"], r["source"]) for r in rules]
    assert kinds[:3] == [("failure", "server"), ("ignored", "server"), ("ignored", "default")]
    assert kinds[-2:] == [("failure", "preset:docker"), ("ignored", "default")]
    assert {k for k in kinds[3:-2]} == {("failure", "default")}
    assert [r["pattern"] for r in error_rules(policy(tool_errors="ignore"))][-1] == "(any other text)"
    assert not any(
        r["source"] == "default" and r["counts_as"] == "failure" for r in error_rules(policy(tool_errors="ignore"))
    )
