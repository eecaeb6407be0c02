"""A downstream flooding its log cannot starve calls, to it or to others, even while a client stops reading: its
notifications wait in a bounded buffer of their own (the overflow dropped and counted), never in front of answers."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from circuitbox.chaos._behaviours import parse_behaviour
from circuitbox.config.load import parse_config
from circuitbox.server.downstream import NOTE_BUFFER, Downstream
from circuitbox.server.transports import http_client
from tests.net import free_port
from tests.proxy.harness import chaos, running_process, write_config
from tests.proxy.test_http_front_end import serve_args
from tests.resilience.support import HANDSHAKE_VERSION, text_of

pytestmark = pytest.mark.anyio

HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def test_the_flood_behaviour_parses_its_count_and_size() -> None:
    assert (parse_behaviour("flood").count, parse_behaviour("flood").size) == (1000, 100)
    assert (parse_behaviour("flood:5:7").count, parse_behaviour("flood:5:7").size) == (5, 7)


async def _stalled_client(http: httpx2.AsyncClient, url: str) -> tuple[str, dict[str, str]]:
    """A handshake-era client that lists the tools, opens its standalone stream, then never reads it."""
    initialize = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": HANDSHAKE_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "stalled", "version": "1"},
        },
    }
    opened = await http.post(url, content=json.dumps(initialize), headers=HEADERS)
    session = {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": HANDSHAKE_VERSION}
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    await http.post(url, content=json.dumps(initialized), headers=HEADERS | session)
    listed = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    assert (await http.post(url, content=json.dumps(listed), headers=HEADERS | session)).status_code == 200
    return opened.headers["mcp-session-id"], session


async def test_a_log_flood_with_a_client_that_stopped_reading_starves_no_call(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {"mcpServers": {"noisy": chaos("echo=healthy", "spam=flood:20000:1000"), "calm": chaos("echo=healthy")}},
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    args = [*serve_args(config, port), "--log-level", "WARNING"]
    async with running_process(args, port=port), httpx2.AsyncClient(timeout=60) as raw:
        _, stalled = await _stalled_client(raw, url)
        async with (
            raw.stream("GET", url, headers={"accept": "text/event-stream"} | stalled),  # opened, never read
            http_client() as http,
            streamable_http_client(url, http_client=http) as (read, write),
            ClientSession(read, write, read_timeout_seconds=120) as session,
        ):
            with anyio.fail_after(120):
                await session.initialize()
                await session.list_tools()
                # 20 MB of log notifications, more than the stalled client's socket can hold: before, each one then
                # waited up to 1 s for that client in front of the downstream's answers.
                spammed = await session.call_tool("noisy__spam", {"message": "spammed"})
                assert text_of(spammed) == "spammed"
                assert text_of(await session.call_tool("noisy__echo", {"message": "still"})) == "still"
                assert text_of(await session.call_tool("calm__echo", {"message": "calm"})) == "calm"


async def test_notifications_past_the_buffer_are_dropped_with_a_count_and_a_failing_relay_loses_only_its_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    relayed: list[str] = []
    done = anyio.Event()

    async def relay(_: Downstream, message: types.ServerNotification) -> None:
        data = message.params.data  # type: ignore[union-attr]
        if data == "0":
            raise RuntimeError("that client went away")
        relayed.append(data)
        if len(relayed) == NOTE_BUFFER - 1:
            done.set()

    config = parse_config({"environment": "testing", "mcpServers": {"s": {"command": "x"}}}, env={})
    downstream = Downstream(config.servers["s"], on_notification=relay)
    for n in range(NOTE_BUFFER + 5):
        params = types.LoggingMessageNotificationParams(level="info", data=str(n))
        await downstream._on_message(types.LoggingMessageNotification(params=params))
    assert "faster than its clients take them: 1 dropped" in caplog.text
    async with anyio.create_task_group() as tg:
        tg.start_soon(downstream._relay_loop, relay)
        with anyio.fail_after(10):
            await done.wait()
        tg.cancel_scope.cancel()
    assert relayed == [str(n) for n in range(1, NOTE_BUFFER)]  # in order; the first failed alone, the last 5 dropped
