"""Every malformed upstream message gets the JSON-RPC answer the spec gives it, over stdio and HTTP alike:
-32700 with a null id for what is not JSON, -32600 for batches, unusable ids and missing methods; broken
notifications and responses are dropped with a logged warning. The proxy keeps serving throughout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from pydantic import ValidationError

from circuitbox.server.malformed import (
    MalformedMessage,
    _http_answer,
    describe,
    judge,
    judge_bytes,
    judge_error,
    judge_oversized,
    parse_line,
)
from tests.net import free_port
from tests.proxy.harness import chaos, running_process, write_config
from tests.proxy.test_http_front_end import serve_args
from tests.resilience.support import HANDSHAKE_VERSION, alive, raw_proxy

pytestmark = pytest.mark.anyio

CONFIG = {"mcpServers": {"c": chaos("echo=healthy")}}

# (line, the error code it gets, the id it names)
ANSWERED: list[tuple[bytes, int, Any]] = [
    (b"this is not json", -32700, None),
    (b'{"jsonrpc": "2.0", "id": "cut", "method": "pi', -32700, None),
    (b'[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]', -32600, None),
    (b"[]", -32600, None),
    (b"7", -32600, None),
    (b'"a string"', -32600, None),
    (b'{"jsonrpc": "2.0", "id": 1.5, "method": "ping"}', -32600, None),
    (b'{"jsonrpc": "2.0", "id": true, "method": "ping"}', -32600, None),
    (b'{"jsonrpc": "2.0", "id": null, "method": "ping"}', -32600, None),
    (b'{"jsonrpc": "2.0", "id": {"deep": 1}, "method": "tools/list"}', -32600, None),
    (b'{"jsonrpc": "2.0", "id": "no-method"}', -32600, "no-method"),
    (b'{"jsonrpc": "2.0", "id": 77, "method": 7}', -32600, 77),
    (b'{"jsonrpc": "1.0", "id": "old", "method": "ping"}', -32600, "old"),
    (b'{"jsonrpc": "2.0", "id": "params", "method": "tools/call", "params": "x"}', -32600, "params"),
]
DROPPED = [
    b'{"jsonrpc": "2.0", "method": "notifications/nonsense", "params": 7}',
    b'{"jsonrpc": "2.0", "id": "nobody", "result": {}}',
    b'{"jsonrpc": "2.0", "id": "broken", "result": 7, "error": 5}',
]


@pytest.mark.parametrize(("line", "code", "request_id"), ANSWERED)
def test_each_malformed_line_is_judged_with_the_specs_code_and_id(line: bytes, code: int, request_id: Any) -> None:
    refusal = parse_line(line)
    assert isinstance(refusal, MalformedMessage) and refusal.answer is not None
    assert (refusal.answer.error.code, refusal.answer.id) == (code, request_id)


def test_a_valid_message_and_a_notification_that_mentions_an_id_in_its_params_pass() -> None:
    ping = parse_line(b'{"jsonrpc": "2.0", "id": 3, "method": "ping"}')
    assert not isinstance(ping, Exception) and isinstance(ping.message, types.JSONRPCRequest)
    note = parse_line(b'{"jsonrpc": "2.0", "method": "notifications/progress", "params": {"id": 1, "progress": 1}}')
    assert not isinstance(note, Exception) and isinstance(note.message, types.JSONRPCNotification)
    # Bytes that are not UTF-8 are not JSON text.
    odd = parse_line(b'{"jsonrpc": "2.0", "id": 1, "method": "x", "params": {"s": "\xff"}}')
    assert isinstance(odd, MalformedMessage) and odd.answer is not None and odd.answer.error.code == -32700


@pytest.mark.parametrize("line", DROPPED)
def test_broken_notifications_and_responses_are_dropped_not_answered(line: bytes) -> None:
    item = parse_line(line)
    if isinstance(item, MalformedMessage):
        assert item.answer is None and "dropped" in item.reason
    else:  # a well-formed response to nothing: the session drops it
        assert isinstance(item.message, types.JSONRPCResponse)


def _validation_error(line: bytes) -> ValidationError:
    try:
        types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    except ValidationError as exc:
        return exc
    raise AssertionError(f"{line!r} is valid")


# The SDK's own transport (a terminal, a regular file) hands on only the validation error: judged from it alone.
FALLBACK = [
    *ANSWERED[:4],
    (b'{"jsonrpc": "2.0", "id": "params", "method": "tools/call", "params": "x"}', -32600, "params"),
]


@pytest.mark.parametrize(("line", "code", "request_id"), FALLBACK)
def test_the_sdks_fallback_transport_errors_are_judged_the_same(line: bytes, code: int, request_id: Any) -> None:
    refusal = describe(_validation_error(line))
    assert refusal is not None and refusal.answer is not None
    assert (refusal.answer.error.code, refusal.answer.id) == (code, request_id)


def test_anything_else_a_transport_hands_on_is_not_a_refusal() -> None:
    assert describe(RuntimeError("stream broke")) is None
    assert describe(types.JSONRPCNotification(jsonrpc="2.0", method="x")) is None


def test_a_validation_error_that_shows_no_message_is_dropped() -> None:
    nested = _validation_error(b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": "x"}')
    only_nested = ValidationError.from_exception_data(
        "x", [e for e in nested.errors() if len(e["loc"]) > 2 or (e["type"] != "missing" and len(e["loc"]) > 1)]
    )
    refusal = judge_error(only_nested)
    assert refusal.answer is None and "dropped" in refusal.reason


def test_a_valid_looking_request_judged_without_details_still_names_its_id() -> None:
    refusal = judge({"jsonrpc": "2.0", "id": 9, "method": "tools/call"})
    assert refusal.answer is not None and refusal.answer.id == 9 and "not a valid request" in refusal.reason
    assert judge_bytes(b"{").answer is not None


def test_the_http_judge_keeps_the_sdks_answers_it_has_no_reason_to_change() -> None:
    notification = b'{"jsonrpc": "2.0", "method": "notifications/initialized"}'
    assert _http_answer(202, notification, b"") is None
    assert _http_answer(202, b'{"jsonrpc": "2.0", "id": "r", "result": {}, "method": 1}', b"") is None
    assert _http_answer(202, b'["id", "method"]', b"") is None
    assert _http_answer(202, b'{"id": ,"method"', b"") is None
    assert _http_answer(400, b"{}", b'{"error": {"code": -32600, "message": "Bad Request"}}') is None
    invalid_params = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32602,"message":"Validation error: x"}}'
    dropped = _http_answer(400, b'{"jsonrpc": "2.0", "method": "n", "params": 7}', invalid_params)
    assert dropped is not None and dropped.error.code == -32600 and dropped.id is None


async def test_every_malformed_line_on_stdio_gets_its_answer_and_the_proxy_keeps_serving(tmp_path: Path) -> None:
    async with raw_proxy(tmp_path, CONFIG) as client:
        for line, code, request_id in ANSWERED:
            before = len(client.unmatched)
            if request_id is None:
                await client.send_bytes(line + b"\n")
                # Answered before the next line is read: once the ping is answered, so is the malformed line.
                await client.request("ping")
                assert len(client.unmatched) == before + 1, line
                answer = client.unmatched[-1]
            else:
                answer = await client.exchange(request_id, line + b"\n", limit=10)
            assert answer["error"]["code"] == code and answer["id"] == request_id, (line, answer)
            assert answer["error"]["message"]
        for line in DROPPED:
            before = len(client.unmatched)
            await client.send_bytes(line + b"\n")
            await client.request("ping")
            assert len(client.unmatched) == before and "nobody" not in client.answers, line
        answer = await client.call_tool("c__echo", {"message": "still here"})
        assert answer["result"]["content"][0]["text"] == "still here"
        assert alive(client.pid)
    log = (tmp_path / "proxy.log").read_text()
    assert "answered a malformed message with -32700" in log and "malformed notification was dropped" in log


async def _post(http: httpx2.AsyncClient, url: str, body: bytes, session: str | None) -> httpx2.Response:
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    if session:
        headers |= {"mcp-session-id": session, "mcp-protocol-version": HANDSHAKE_VERSION}
    return await http.post(url, content=body, headers=headers)


async def test_every_malformed_body_over_http_gets_its_answer_and_the_session_keeps_working(tmp_path: Path) -> None:
    config = write_config(tmp_path, CONFIG)
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    initialize = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": HANDSHAKE_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    async with running_process(serve_args(config, port), port=port), httpx2.AsyncClient(timeout=30) as http:
        with anyio.fail_after(60):
            opened = await _post(http, url, json.dumps(initialize).encode(), None)
            session = opened.headers["mcp-session-id"]
            initialized = b'{"jsonrpc": "2.0", "method": "notifications/initialized"}'
            assert (await _post(http, url, initialized, session)).status_code == 202
            for line, code, request_id in ANSWERED:
                response = await _post(http, url, line, session)
                assert response.status_code == 400, (line, response.text)
                answer = response.json()
                assert answer["error"]["code"] == code and answer["id"] == request_id, (line, answer)
            # A broken notification is refused for what it is; a response to nothing is accepted and dropped.
            broken = await _post(http, url, DROPPED[0], session)
            assert broken.status_code == 400 and broken.json()["error"]["code"] == -32600
            assert (await _post(http, url, DROPPED[1], session)).status_code == 202
            call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "c__echo", "arguments": {}}}
            response = await _post(http, url, json.dumps(call).encode(), session)
            assert response.status_code == 200 and '"isError":false' in response.text.replace(" ", "")
            ended = {"mcp-session-id": session, "mcp-protocol-version": HANDSHAKE_VERSION}
            closed = await http.delete(url, headers=ended)
            assert closed.status_code in (200, 204)


def test_an_oversized_request_is_answered_by_the_id_at_either_end_of_its_line() -> None:
    python = judge_oversized(b'{"jsonrpc": "2.0", "id": "py", "method": "tools/call", "params": {', b"}}", 10)
    typescript = judge_oversized(b'{"method": "tools/call", "params": {', b'"jsonrpc": "2.0", "id": 12}', 10)
    nested = judge_oversized(b'{"method": "x", "params": {"id": 5,', b'{"id": 3}}}', 10)
    assert python.answer is not None and python.answer.id == "py" and python.answer.error.code == -32600
    assert typescript.answer is not None and typescript.answer.id == 12
    assert nested.answer is None and "max_message_bytes" in nested.reason


async def test_a_50_mb_line_on_stdio_gets_an_error_for_its_request_and_the_proxy_keeps_serving(tmp_path: Path) -> None:
    pad = "y" * (50 << 20)
    async with raw_proxy(tmp_path, CONFIG) as client:
        head_first = {"jsonrpc": "2.0", "id": "huge", "method": "tools/call", "params": {"name": "c__echo", "x": pad}}
        answer = await client.exchange("huge", json.dumps(head_first).encode() + b"\n", limit=120)
        assert answer["error"]["code"] == -32600 and "max_message_bytes" in answer["error"]["message"]
        id_last = json.dumps({"method": "ping", "params": {"x": pad[: 17 << 20]}, "jsonrpc": "2.0", "id": 99})
        answer = await client.exchange(99, id_last.encode() + b"\n", limit=120)
        assert answer["error"]["code"] == -32600
        echoed = await client.call_tool("c__echo", {"message": "after 50 MB"}, limit=60)
        assert echoed["result"]["content"][0]["text"] == "after 50 MB"
        assert alive(client.pid)
