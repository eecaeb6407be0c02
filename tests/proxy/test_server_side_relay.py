"""What passes between a client and a downstream besides names and results reaches the other side through
circuitbox: `notifications/elicitation/complete` after a URL elicitation, `notifications/cancelled` for a question
the server takes back, and the `_meta` keys of the client's requests. A real server process
(tests/proxy/elicit_server.py), the SDK's real client.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest

from tests.net import import_path_env
from tests.proxy.harness import REPO, proxy_session

pytestmark = pytest.mark.anyio


def elicit_server() -> dict[str, Any]:
    return {
        "command": sys.executable,
        "args": ["-m", "tests.proxy.elicit_server"],
        "cwd": str(REPO),
        "env": {"PYTHONPATH": ":".join(filter(None, [str(REPO), import_path_env().get("PYTHONPATH")]))},
    }


async def test_a_url_elicitation_and_its_completion_reach_the_client_that_was_asked(tmp_path: Path) -> None:
    asked: list[types.ElicitRequestParams] = []
    completed = anyio.Event()
    completions: list[str] = []

    async def elicitation(_: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        return types.ElicitResult(action="accept")

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ElicitCompleteNotification):
            completions.append(message.params.elicitation_id)
            completed.set()

    config = {"mcpServers": {"auth": elicit_server()}}
    async with proxy_session(tmp_path, config, elicitation_callback=elicitation, message_handler=on_message) as s:
        result = await s.call_tool("auth__sign_in", {})
        assert result.content[0].text == "sign-in accept"  # type: ignore[union-attr]
        with anyio.fail_after(30):
            await completed.wait()
    assert isinstance(asked[0], types.ElicitRequestURLParams)
    assert (asked[0].url, asked[0].elicitation_id) == ("https://example.invalid/sign-in", "sign-in-1")
    assert completions == ["sign-in-1"]


async def test_a_completion_for_an_elicitation_no_client_was_asked_is_dropped_and_logged(tmp_path: Path) -> None:
    completions: list[Any] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ElicitCompleteNotification):
            completions.append(message)

    config = {"mcpServers": {"auth": elicit_server()}}
    log = tmp_path / "stderr.log"
    with log.open("w") as errlog:
        async with proxy_session(tmp_path, config, message_handler=on_message, errlog=errlog) as s:
            assert (await s.call_tool("auth__complete_unknown", {})).is_error is False
            with anyio.fail_after(30):
                while "which no client was asked" not in log.read_text():
                    await anyio.sleep(0.05)  # polling the proxy's stderr file: nothing to wait on instead
            await s.call_tool("circuit_status", {})  # the session still serves
    assert completions == []
    assert "notifications/elicitation/complete for 'never-asked', which no client was asked: dropped" in log.read_text()


async def test_a_question_the_server_takes_back_is_cancelled_at_the_client(tmp_path: Path) -> None:
    asked, cancelled = anyio.Event(), anyio.Event()

    async def elicitation(_: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()  # the client's own SDK cancelled this handler: notifications/cancelled arrived
        raise AssertionError("unreachable")

    config = {"mcpServers": {"auth": elicit_server()}}
    async with proxy_session(tmp_path, config, elicitation_callback=elicitation) as s:
        results: list[types.CallToolResult] = []

        async def ask() -> None:
            results.append(await s.call_tool("auth__ask_then_withdraw", {}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            with anyio.fail_after(30):
                await asked.wait()
            await s.call_tool("auth__withdraw", {})
            with anyio.fail_after(30):
                await cancelled.wait()
        assert results[0].content[0].text == "withdrawn"  # type: ignore[union-attr]


async def test_the_meta_keys_of_a_request_reach_the_downstream_as_they_came_but_the_progress_token(
    tmp_path: Path,
) -> None:
    meta = {"vendor.example/trace": "t-1", "io.example/depth": {"n": 2}}
    # A 2026-era client's envelope describes its own hop: a handshake-era downstream refuses requests carrying it.
    sent = {**meta, "io.modelcontextprotocol/clientInfo": {"name": "x", "version": "1"}}
    async with proxy_session(tmp_path, {"mcpServers": {"m": elicit_server()}}) as s:

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            pass

        result = await s.call_tool("m__echo_meta", {}, meta=sent, progress_callback=on_progress)  # type: ignore[arg-type]
        seen = json.loads(result.content[0].text)  # type: ignore[union-attr]
        # circuitbox's own token for its hop, never the client's (progress comes back mapped to the client's).
        assert {k: v for k, v in seen.items() if k != "progress_token"} == meta
        plain = json.loads((await s.call_tool("m__echo_meta", {})).content[0].text)  # type: ignore[union-attr]
        assert set(plain) <= {"progress_token"}  # nothing invented

        prompt = await s.send_request(
            types.GetPromptRequest(params=types.GetPromptRequestParams(name="m__meta_prompt", _meta=sent)),
            types.GetPromptResult,
        )
        assert json.loads(prompt.messages[0].content.text) == meta  # type: ignore[union-attr]
        read = await s.send_request(
            types.ReadResourceRequest(params=types.ReadResourceRequestParams(uri="meta://echo/1", _meta=sent)),
            types.ReadResourceResult,
        )
        assert json.loads(read.contents[0].text) == meta  # type: ignore[union-attr]
