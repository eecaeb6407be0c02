"""The era bridge: a 2026-era `mcp.Client` (server/discover, stateless requests) calls, through circuitbox, a
handshake-era downstream that asks for sampling or elicitation mid-call; the client gets the 2026-era
input-required result, answers it, and its answer reaches the waiting downstream request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client, MCPError

from circuitbox.server.bridge import Bridge, ParkedCall
from tests.net import free_port
from tests.proxy.harness import everything_server, running_process, write_config
from tests.proxy.test_http_front_end import serve_args

pytestmark = pytest.mark.anyio


async def test_a_2026_era_client_answers_a_handshake_era_servers_questions_through_the_bridge(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"mcpServers": {"ev": {**everything_server(), "startup_timeout": 60}}})
    port = free_port()
    asked: list[str] = []

    async def sampling(_: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        asked.append("sampling")
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(text="sampled by the 2026 client"), model="test-model"
        )

    async def elicitation(_: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append("elicitation")
        return types.ElicitResult(action="accept", content={"name": "Ada", "check": True})

    url = f"http://127.0.0.1:{port}/mcp"
    async with (
        running_process(serve_args(config, port), port=port),
        Client(url, sampling_callback=sampling, elicitation_callback=elicitation) as client,
    ):
        with anyio.fail_after(120):
            listed = (await client.list_tools()).tools
            names = {tool.name for tool in listed}
            assert {"ev__trigger-sampling-request", "ev__trigger-elicitation-request"} <= names
            # Tasks are not relayed: no tool says it takes them, and the one that requires them is not published.
            assert "ev__simulate-research-query" not in names and all(t.execution is None for t in listed)
            sampled = await client.call_tool("ev__trigger-sampling-request", {"prompt": "hello", "maxTokens": 5})
            assert not sampled.is_error and "sampled by the 2026 client" in str(sampled.content)
            elicited = await client.call_tool("ev__trigger-elicitation-request", {})
            assert not elicited.is_error and "Ada" in str(elicited.content)
            # The same call still works for a plain tool, and a requestState the proxy never gave out is refused.
            echoed = await client.call_tool("ev__echo", {"message": "plain"})
            assert "plain" in str(echoed.content)
        async with httpx2.AsyncClient(timeout=30) as http:
            forged = await http.post(
                url,
                content=json.dumps(_modern_call("ev__trigger-elicitation-request", request_state="forged")),
                headers={
                    "content-type": "application/json",
                    "accept": "application/json, text/event-stream",
                    "mcp-protocol-version": "2026-07-28",
                    "mcp-method": "tools/call",
                    "mcp-name": "ev__trigger-elicitation-request",
                },
            )
        assert forged.json()["error"]["code"] == types.INVALID_PARAMS, forged.text
    assert asked == ["sampling", "elicitation"]


def _modern_call(name: str, *, request_state: str) -> dict[str, Any]:
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "forger", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}},
    }
    params = {"name": name, "arguments": {}, "requestState": request_state, "inputResponses": {}, "_meta": meta}
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}


def _call(name: str = "t", state: str | None = None, responses: dict[str, Any] | None = None) -> Any:
    return types.CallToolRequestParams(name=name, arguments={}, request_state=state, input_responses=responses)


ELICIT = types.ElicitRequest(
    params=types.ElicitRequestFormParams(message="who?", requested_schema={"type": "object", "properties": {}})
)
CAPS = types.ClientCapabilities(elicitation=types.ElicitationCapability(), sampling=types.SamplingCapability())


async def test_a_parked_call_resumes_with_the_answer_and_ends_with_the_downstreams_result() -> None:
    bridge = Bridge()

    async def downstream(parked: ParkedCall) -> types.CallToolResult:
        answer = await parked.session.send_request(ELICIT, types.ElicitResult)
        return types.CallToolResult(content=[types.TextContent(text=f"got {answer.action}")])

    async with anyio.create_task_group() as tg:
        with anyio.fail_after(10):
            first = await bridge.call(tg, _call(), CAPS, downstream)
            assert isinstance(first, types.InputRequiredResult) and first.input_requests and first.request_state
            (key,) = first.input_requests
            with pytest.raises(MCPError):  # another tool cannot take over the call
                await bridge.call(tg, _call("other", first.request_state, {}), CAPS, downstream)
        tg.cancel_scope.cancel()  # the parked call and its expiry
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(10):
            first = await bridge.call(tg, _call(), CAPS, downstream)
            assert isinstance(first, types.InputRequiredResult) and first.input_requests
            (key,) = first.input_requests
            done = await bridge.call(tg, _call("t", first.request_state, {key: {"action": "accept"}}), CAPS, downstream)
            assert isinstance(done, types.CallToolResult) and "got accept" in str(done.content)
            with pytest.raises(MCPError):  # used once
                await bridge.call(tg, _call("t", first.request_state, {}), CAPS, downstream)
        tg.cancel_scope.cancel()


async def test_a_question_the_client_did_not_declare_fails_the_downstream_request_at_once() -> None:
    bridge = Bridge()
    seen: list[str] = []

    async def downstream(parked: ParkedCall) -> types.CallToolResult:
        for request in (types.CreateMessageRequest(params=_sampling()), types.ListRootsRequest()):
            try:
                await parked.session.send_request(request, types.ListRootsResult)
            except MCPError as exc:
                seen.append(f"{request.method}: {exc.error.code}")
        answer = await parked.session.send_request(ELICIT, types.ElicitResult)
        return types.CallToolResult(content=[types.TextContent(text=answer.action)])

    caps = types.ClientCapabilities(elicitation=types.ElicitationCapability())  # no sampling, no roots
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(10):
            first = await bridge.call(tg, _call(), caps, downstream)
            assert isinstance(first, types.InputRequiredResult) and first.input_requests
            (key,) = first.input_requests
            declined = {key: types.ElicitResult(action="decline")}
            done = await bridge.call(tg, _call("t", first.request_state, declined), caps, downstream)
        tg.cancel_scope.cancel()
    assert isinstance(done, types.CallToolResult) and "decline" in str(done.content)
    assert seen == ["sampling/createMessage: -32601", "roots/list: -32601"]
    assert await _no_caps_refused()


async def _no_caps_refused() -> bool:
    parked = ParkedCall("t", None)
    with pytest.raises(MCPError):
        await parked.ask(ELICIT, types.ElicitResult)
    return True


def _sampling() -> types.CreateMessageRequestParams:
    return types.CreateMessageRequestParams(
        messages=[types.SamplingMessage(role="user", content=types.TextContent(text="hi"))], max_tokens=5
    )


async def test_a_call_that_fails_or_whose_client_goes_away_ends_its_downstream_work() -> None:
    bridge = Bridge()

    async def broken(_: ParkedCall) -> types.CallToolResult:
        raise MCPError(code=types.INVALID_PARAMS, message="Unknown tool")

    cancelled = anyio.Event()

    async def waits(parked: ParkedCall) -> types.CallToolResult:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        raise AssertionError  # never reached

    async with anyio.create_task_group() as tg:
        with anyio.fail_after(10):
            with pytest.raises(MCPError):
                await bridge.call(tg, _call(), CAPS, broken)
            with anyio.move_on_after(0):  # the client's request goes away
                await bridge.call(tg, _call(), CAPS, waits)
            await cancelled.wait()


async def test_a_parked_call_nobody_resumes_is_cancelled_after_its_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("circuitbox.server.bridge.PARK_TTL", 0.0)
    bridge = Bridge()
    cancelled = anyio.Event()

    async def downstream(parked: ParkedCall) -> types.CallToolResult:
        try:
            await parked.session.send_request(ELICIT, types.ElicitResult)
        finally:
            cancelled.set()
        raise AssertionError  # never reached

    async with anyio.create_task_group() as tg:
        with anyio.fail_after(10):
            first = await bridge.call(tg, _call(), CAPS, downstream)
            assert isinstance(first, types.InputRequiredResult)
            await cancelled.wait()
            with pytest.raises(MCPError):
                await bridge.call(tg, _call("t", first.request_state, {}), CAPS, downstream)


async def test_an_answer_resumed_before_its_expiry_runs_is_not_cancelled_and_unknown_keys_are_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("circuitbox.server.bridge.PARK_TTL", 0.0)
    bridge = Bridge()

    async def downstream(parked: ParkedCall) -> types.CallToolResult:
        answer = await parked.session.send_request(ELICIT, types.ElicitResult)
        return types.CallToolResult(content=[types.TextContent(text=answer.action)])

    async with anyio.create_task_group() as tg:
        with anyio.fail_after(10):
            first = await bridge.call(tg, _call(), CAPS, downstream)
            assert isinstance(first, types.InputRequiredResult) and first.input_requests
            (key,) = first.input_requests
            # Resumed at once: the expiry that was due finds the call no longer parked.
            done = await bridge.call(
                tg, _call("t", first.request_state, {"nobody#9": {"action": "cancel"}, key: {"action": "accept"}}),
                CAPS, downstream,
            )  # fmt: skip
        tg.cancel_scope.cancel()
    assert isinstance(done, types.CallToolResult) and "accept" in str(done.content)
    parked = ParkedCall("t", CAPS)
    async with anyio.create_task_group() as tg:
        tg.start_soon(parked.ask, ELICIT, types.ElicitResult)
        with anyio.fail_after(10):
            (question,) = await parked.next()  # type: ignore[misc]
        parked.answer({question.key: {"action": "decline"}})  # a plain dict answers too
