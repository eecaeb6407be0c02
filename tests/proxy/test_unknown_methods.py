"""Methods no spec has (a newer one, an extension's), from the client: forwarded as they came to the one server
circuitbox fronts, whose own answer comes back; with several servers, the JSON-RPC error for an unknown method or,
for a notification, a logged drop. A real server process with such methods (tests/proxy/elicit_server.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import MCPError
from pydantic import BaseModel, ConfigDict

from tests.net import free_port
from tests.proxy.harness import chaos, proxy_session, running_process, write_config
from tests.proxy.test_http_front_end import serve_args
from tests.proxy.test_server_side_relay import elicit_server

pytestmark = pytest.mark.anyio


class Anything(BaseModel):
    model_config = ConfigDict(extra="allow")


def vendor_request(params: dict[str, Any]) -> Any:
    return types.Request[Any, str](method="vendor.example/echo", params=params)


def vendor_note(params: dict[str, Any]) -> Any:
    return cast(Any, types.Notification[Any, str](method="vendor.example/note", params=params))


async def test_an_unknown_request_and_notification_reach_the_only_server_as_they_came(tmp_path: Path) -> None:
    async with proxy_session(tmp_path, {"mcpServers": {"v": elicit_server()}}) as s:
        answer = await s.send_request(vendor_request({"x": 1, "nested": {"y": [2, 3]}}), Anything)
        assert answer.model_dump() == {"echoed": {"x": 1, "nested": {"y": [2, 3]}}, "by": "elicit-server"}

        await s.send_notification(vendor_note({"seq": 1}))
        with anyio.fail_after(30):
            while True:  # the notification has no answer to wait on: ask the server what it got
                noted = json.loads((await s.call_tool("v__noted", {})).content[0].text)  # type: ignore[union-attr]
                if noted:
                    break
                await anyio.sleep(0.05)
        assert noted == [{"seq": 1}]


async def test_with_several_servers_an_unknown_method_gets_the_json_rpc_error_and_a_notification_a_logged_drop(
    tmp_path: Path,
) -> None:
    config = {"mcpServers": {"v": elicit_server(), "c": chaos("echo=healthy")}}
    log = tmp_path / "stderr.log"
    with log.open("w") as errlog:
        async with proxy_session(tmp_path, config, errlog=errlog) as s:
            with pytest.raises(MCPError) as unknown:
                await s.send_request(vendor_request({"x": 1}), Anything)
            assert unknown.value.error.code == types.METHOD_NOT_FOUND
            await s.send_notification(vendor_note({"seq": 1}))
            with anyio.fail_after(30):
                while "dropped the client's vendor.example/note" not in log.read_text():
                    await anyio.sleep(0.05)  # polling the proxy's stderr file: nothing to wait on instead
            assert json.loads((await s.call_tool("v__noted", {})).content[0].text) == []  # type: ignore[union-attr]


async def test_a_2026_era_clients_unknown_method_gets_the_servers_own_answer_not_a_refusal_of_its_envelope(
    tmp_path: Path,
) -> None:
    """A stdio server's connection from circuitbox is of the handshake era, which refuses a request carrying the
    2026-era envelope (-32600): the envelope is the upstream hop's, so the server answers for the method itself."""
    port = free_port()
    config = write_config(tmp_path, {"mcpServers": {"v": elicit_server()}})
    url = f"http://127.0.0.1:{port}/mcp"
    async with running_process(serve_args(config, port), port=port), httpx2.AsyncClient(timeout=60) as http:
        echoed_status, echoed = await _post_2026(http, url, "vendor.example/echo", {"x": 1})
        missing_status, missing = await _post_2026(http, url, "vendor.example/missing", {})
    assert echoed_status == 200, echoed
    assert echoed["result"] == {"echoed": {"x": 1, "meta": {"trace": "t1"}}, "by": "elicit-server"}  # its model's dump
    assert missing_status == 404 and missing["error"]["code"] == types.METHOD_NOT_FOUND, missing  # as directly


async def _post_2026(http: httpx2.AsyncClient, url: str, method: str, params: dict[str, Any]) -> tuple[int, Any]:
    meta = {
        types.PROTOCOL_VERSION_META_KEY: "2026-07-28",
        types.CLIENT_INFO_META_KEY: {"name": "raw", "version": "1"},
        types.CLIENT_CAPABILITIES_META_KEY: {},
        "trace": "t1",  # a key of the client's own: it goes on
    }
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": method,
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": meta}}
    response = await http.post(url, content=json.dumps(body), headers=headers)
    return response.status_code, response.json()
