"""Bad input from the agent's side: clear errors, no tripped breaker, and the proxy keeps serving."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from tests.proxy.harness import chaos, proxy_session
from tests.resilience.support import alive, breaker_row, proxy_pid, raw_proxy, timed_call

pytestmark = pytest.mark.anyio

BREAKER = {"failure_threshold": 3, "timeout": 1, "jitter": 0, "minimum_calls": 100, "call_timeout": 2}
CONFIG = {"mcpServers": {"c": {**chaos("echo=healthy", "add=add"), "breaker": BREAKER}}}


async def test_an_unknown_tool_gets_a_clear_error_at_once(tmp_path: Path) -> None:
    async with proxy_session(tmp_path, CONFIG) as session:
        # Once its server has listed (before, a name may be a tool of a server still starting: that call waits for
        # the first listing, up to startup_timeout), an unknown name is answered at once: a hang would meet the
        # harness's read timeout. No wall-clock bound: on a loaded machine a round trip alone can take seconds.
        assert (await timed_call(session, "c__echo", {"message": "up"})).text == "up"
        for name in ("c__nope", "nope", "c__", "__echo", "x" * 10_000):
            answer = await timed_call(session, name, {})
            assert answer.kind in ("rpc_error", "error") and "unknown tool" in answer.text.lower(), answer
        assert (await timed_call(session, "c__echo", {"message": "fine"})).text == "fine"


async def test_arguments_that_break_the_schema_are_the_agents_mistake_and_never_trip_the_breaker(
    tmp_path: Path,
) -> None:
    async with proxy_session(tmp_path, CONFIG) as session:
        for arguments in ({"a": "x", "b": []}, {}, {"a": 1}, {"a": None, "b": {"deep": [1, 2, 3]}}):
            answer = await timed_call(session, "c__add", arguments)
            assert answer.kind in ("rpc_error", "error"), answer
            assert "validation" in answer.text.lower() or "invalid" in answer.text.lower(), answer
        row = await breaker_row(session, "c", "add")
        assert row["state"] == "closed" and row["failures"] == 0
        assert (await timed_call(session, "c__add", {"a": 2, "b": 3})).text == "5"


async def test_a_one_megabyte_argument_is_carried_through_and_answered_in_time(tmp_path: Path) -> None:
    big = "0123456789abcdef" * 65_536  # 1 MiB
    async with proxy_session(tmp_path, CONFIG) as session:
        answer = await timed_call(session, "c__echo", {"message": big})
        assert answer.kind == "ok" and answer.text == big  # "ok": not cut by call_timeout (that answers an error)
        nested = await timed_call(session, "c__echo", {"message": "small", "blob": {"k": [big[:4096]] * 256}})
        assert nested.kind == "ok" and nested.text == "small"
        assert (await timed_call(session, "c__echo", {"message": "after"})).text == "after"
        assert alive(proxy_pid(tmp_path / "circuitbox.json"))


GARBAGE_LINES = [
    b"this is not json\n",
    b"\xff\xfe\x00\x01 binary\n",
    b"{\n",
    b"[1, 2, 3]\n",
    b'{"jsonrpc": "2.0"}\n',
    b'{"jsonrpc": "1.0", "id": "old", "method": "ping"}\n',
    b'{"jsonrpc": "2.0", "method": "notifications/nonsense", "params": 7}\n',
    b"null\n",
    b"\n",
    b"   \n",
    b"{" + b'"x": "' + b"y" * 1_048_576 + b'"\n',  # a 1 MB line that never becomes valid JSON
]


async def test_invalid_json_rpc_lines_on_stdin_leave_the_proxy_serving(tmp_path: Path) -> None:
    async with raw_proxy(tmp_path, CONFIG) as client:
        for line in GARBAGE_LINES:
            await client.send_bytes(line)
            answer = await client.call_tool("c__echo", {"message": f"after {line[:12]!r}"}, limit=10)
            assert answer["result"]["content"][0]["text"] == f"after {line[:12]!r}"
        unknown = await client.request("no/such/method", {})
        assert unknown["error"]["code"] == -32601
        assert alive(client.pid)


async def test_a_line_over_the_message_limit_is_dropped_and_the_proxy_keeps_serving(tmp_path: Path) -> None:
    async with raw_proxy(tmp_path, CONFIG) as client:
        huge = json.dumps({"jsonrpc": "2.0", "id": "huge", "method": "ping", "params": {"x": "y" * (17 << 20)}})
        await client.send_bytes(huge.encode() + b"\n")
        answer = await client.call_tool("c__echo", {"message": "after the huge line"}, limit=30)
        assert answer["result"]["content"][0]["text"] == "after the huge line"
        assert alive(client.pid)
    assert "dropped a message over" in (tmp_path / "proxy.log").read_text()


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"arguments": {}}, id="no tool name"),
        pytest.param({"name": "c__echo", "arguments": "not an object"}, id="arguments not an object"),
        pytest.param({"name": 42}, id="tool name not a string"),
        pytest.param("not an object", id="params not an object"),
    ],
)
async def test_a_malformed_request_with_an_id_gets_a_json_rpc_error_and_the_proxy_keeps_serving(
    tmp_path: Path, params: object
) -> None:
    message = {"jsonrpc": "2.0", "id": "malformed", "method": "tools/call", "params": params}
    answered = None
    async with raw_proxy(tmp_path, CONFIG) as client:
        with anyio.move_on_after(3):
            answered = await client.exchange("malformed", json.dumps(message).encode() + b"\n", limit=10)
        answer = await client.call_tool("c__echo", {"message": "still here"})
        assert answer["result"]["content"][0]["text"] == "still here"
    assert answered is not None, "no answer at all"
    assert answered["error"]["code"] in (-32600, -32602), answered
