"""The modern lane: a 2026-era `mcp.Client` through `circuitbox serve --transport http` to a downstream that speaks
2026-07-28 itself (the SDK's conformance "everything" server over HTTP). The downstream's input-required results,
its requestState (sealed by circuitbox on the way out) and its refusal of an undeclared capability reach the client
as they would directly, under circuitbox's names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client, MCPError

from tests.conformance.test_conformance_suite import _import_path, direct_server, sdk_everything
from tests.net import free_port
from tests.proxy.harness import REPO, running_process, write_config
from tests.proxy.test_http_front_end import serve_args

pytestmark = pytest.mark.anyio

ERA = "2026-07-28"


async def test_a_2026_era_client_answers_a_2026_era_servers_input_requests_through_circuitbox(tmp_path: Path) -> None:
    server_port, port = free_port(), free_port()
    entry = {"type": "http", "url": f"http://127.0.0.1:{server_port}/mcp", "startup_timeout": 60}
    config = write_config(tmp_path, {"mcpServers": {"sdk": entry}})
    asked: list[str] = []

    async def elicitation(_: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        content: dict[str, Any] = {"color": "blue"} if "color" in params.message else {"name": "Ada", "context": "c1"}
        return types.ElicitResult(action="accept", content=content)

    async def sampling(_: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        asked.append("sampling")
        return types.CreateMessageResult(role="assistant", content=types.TextContent(text="Paris"), model="m")

    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    url = f"http://127.0.0.1:{port}/mcp"
    async with (
        direct_server("sdk-everything", server_port),
        running_process(serve_args(config, port), port=port),
        Client(url, mode=ERA, elicitation_callback=elicitation, sampling_callback=sampling) as client,
    ):
        with anyio.fail_after(120):
            elicited = await client.call_tool("sdk__test_input_required_result_elicitation", {})
            assert not elicited.is_error and "Hello, Ada!" in str(elicited.content), elicited
            sampled = await client.call_tool("sdk__test_input_required_result_sampling", {})
            assert "Model said: Paris" in str(sampled.content), sampled
            rounds = await client.call_tool("sdk__test_input_required_result_multi_round", {})
            assert "Ada likes blue" in str(rounds.content), rounds
            prompt = await client.get_prompt("sdk__test_input_required_result_prompt")
            assert "Use the following context: c1" in str(prompt.messages), prompt
            # Progress comes back on the lane too, and plain calls stay plain.
            done = await client.call_tool("sdk__test_tool_with_progress", {}, progress_callback=on_progress)
            assert not done.is_error and progress == [0, 50, 100]
            status = await client.call_tool("circuit_status", {"server": "sdk"})
        assert status.structured_content is not None
        breakers = {b["tool"]: b for b in status.structured_content["breakers"]}
        # Each round of an input-required call reached the server and answered: successes of its breaker.
        assert breakers["test_input_required_result_multi_round"]["successes"] == 3
        assert breakers["test_input_required_result_multi_round"]["failures"] == 0

        # The client's own capabilities reach the server: one that needs sampling refuses a client without it,
        # with the era's error (-32021, HTTP 400), which moves no breaker.
        async with Client(url, mode=ERA) as plain:
            with anyio.fail_after(60), pytest.raises(MCPError) as refused:
                await plain.call_tool("sdk__test_missing_capability", {})
        assert refused.value.error.code == types.MISSING_REQUIRED_CLIENT_CAPABILITY
        assert (refused.value.error.data or {}).get("requiredCapabilities") == {"sampling": {}}

        async with httpx2.AsyncClient(timeout=60) as http:
            first = await _post(http, url, "sdk__test_input_required_result_request_state")
            state = first["result"]["requestState"]
            assert first["result"]["resultType"] == "input_required" and state != "request-state-nonce"
            answer = {"confirm": {"action": "accept", "content": {"ok": True}}}
            ok = await _post(http, url, "sdk__test_input_required_result_request_state", state, answer)
            assert "state-ok" in json.dumps(ok["result"]), ok
            # Altered, or handed to another tool: refused by circuitbox before the server sees it.
            for name, sent in (
                ("sdk__test_input_required_result_request_state", state[:-2] + "AA"),
                ("sdk__test_input_required_result_tampered_state", state),
            ):
                refused_state = await _post(http, url, name, sent, answer)
                assert refused_state["error"]["code"] == types.INVALID_PARAMS, refused_state
    assert asked == [
        "What is your name?",
        "sampling",
        "Step 1: What is your name?",
        "Step 2: What is your favorite color?",
        "What context should the prompt use?",
    ]


async def _post(
    http: httpx2.AsyncClient, url: str, name: str, state: str | None = None, responses: dict[str, Any] | None = None
) -> dict[str, Any]:
    meta = {
        types.PROTOCOL_VERSION_META_KEY: ERA,
        types.CLIENT_INFO_META_KEY: {"name": "raw", "version": "1"},
        types.CLIENT_CAPABILITIES_META_KEY: {"elicitation": {}},
    }
    params: dict[str, Any] = {"name": name, "arguments": {}, "_meta": meta}
    if state is not None:
        params |= {"requestState": state, "inputResponses": responses or {}}
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": ERA,
        "mcp-method": "tools/call",
        "mcp-name": name,
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    response = await http.post(url, content=json.dumps(body), headers=headers)
    answer: dict[str, Any] = response.json()
    return answer


@pytest.mark.parametrize("downstream", ["stdio", "http"])
async def test_a_2026_era_client_gets_its_calls_questions_refusals_and_log_messages_from_either_downstream(
    tmp_path: Path, downstream: str
) -> None:
    """Over stdio the server is reached in its own era on a child of its own (a stdio connection serves one era),
    still through the tool's breaker; its log messages during a call reach the client that asked for that level."""
    server_port, port = free_port(), free_port()
    if downstream == "http":
        entry: dict[str, Any] = {"type": "http", "url": f"http://127.0.0.1:{server_port}/mcp"}
    else:
        command, *args = sdk_everything("stdio")
        entry = {"command": command, "args": args, "cwd": str(REPO), "env": {"PYTHONPATH": _import_path()}}
    config = write_config(tmp_path, {"mcpServers": {"sdk": {**entry, "startup_timeout": 60}}})
    logged: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logged.append(params)

    async def elicitation(_: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"name": "Ada"})

    url = f"http://127.0.0.1:{port}/mcp"
    async with (
        direct_server("sdk-everything", server_port),
        running_process(serve_args(config, port), port=port),
        Client(url, mode=ERA, elicitation_callback=elicitation, logging_callback=on_log, log_level="info") as client,
        Client(url, mode=ERA, logging_callback=on_log) as quiet,
    ):
        with anyio.fail_after(120):
            elicited = await client.call_tool("sdk__test_input_required_result_elicitation", {})
            assert not elicited.is_error and "Hello, Ada!" in str(elicited.content), elicited
            assert not (await quiet.call_tool("sdk__test_tool_with_logging", {})).is_error
            assert logged == []  # it asked for no log level: the era's opt-in
            assert not (await client.call_tool("sdk__test_tool_with_logging", {})).is_error
            with pytest.raises(MCPError) as refused:  # its own capabilities reached the server
                await quiet.call_tool("sdk__test_missing_capability", {})
            status = await client.call_tool("circuit_status", {"server": "sdk"})
    assert [(entry.level, entry.logger, entry.data) for entry in logged] == [
        ("info", "sdk", "Tool execution started"),
        ("info", "sdk", "Tool processing data"),
        ("info", "sdk", "Tool execution completed"),
    ]
    assert refused.value.error.code == types.MISSING_REQUIRED_CLIENT_CAPABILITY
    assert status.structured_content is not None
    breakers = {b["tool"]: b for b in status.structured_content["breakers"]}
    assert breakers["test_input_required_result_elicitation"]["successes"] == 2  # both rounds, through its breaker
    assert breakers["test_tool_with_logging"]["successes"] == 2
    assert breakers["test_missing_capability"]["failures"] == 0  # the client's shortcoming, not the server's
