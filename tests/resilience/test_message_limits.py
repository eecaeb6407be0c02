"""Every hop refuses a message over `max_message_bytes` with a logged error instead of buffering and parsing it: an
oversized answer fails only its own call (at once, not at its deadline), an oversized listing marks its server, and
the other servers and calls go on."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from circuitbox.server.transports import MessageTooLargeError, _BoundedBodies, http_client
from tests.net import free_port, import_path_env
from tests.proxy.harness import chaos, running_process, write_config
from tests.proxy.test_http_front_end import serve_args
from tests.resilience.support import server_row, text_of

pytestmark = pytest.mark.anyio

LIMIT = 256 * 1024


def chaos_http_args(port: int) -> list[str]:
    return [sys.executable, "-m", "circuitbox", "chaos", "--transport", "http", "--port", str(port)]


async def test_oversized_answers_and_listings_are_refused_on_each_hop_and_the_rest_goes_on(tmp_path: Path) -> None:
    spec = tmp_path / "wide.json"
    spec.write_text(json.dumps({"tools": {f"tool_with_a_long_name_{i:05d}": "healthy" for i in range(3_000)}}))
    wide = chaos()
    wide["args"] = [*wide["args"], "--spec", str(spec)]
    downstream_port, port = free_port(), free_port()
    config = write_config(
        tmp_path,
        {
            "max_message_bytes": LIMIT,
            "mcpServers": {
                "big": {**chaos("echo=healthy"), "breaker": {"call_timeout": 60}},
                "wide": wide,
                "web": {"type": "http", "url": f"http://127.0.0.1:{downstream_port}/mcp"},
            },
        },
    )
    url = f"http://127.0.0.1:{port}/mcp"
    env = import_path_env()
    async with (
        running_process(chaos_http_args(downstream_port), port=downstream_port, env=env),
        running_process(serve_args(config, port), port=port, env=env),
        http_client() as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write, read_timeout_seconds=60) as session,
    ):
        with anyio.fail_after(120):
            await session.initialize()
            tools = {tool.name for tool in (await session.list_tools()).tools}
            assert {"big__echo", "web__echo"} <= tools
            assert not any(name.startswith("wide__") for name in tools)  # its listing never arrived
            # An answer over the limit: the echo of 150 KB comes back twice (text and structuredContent).
            message = "x" * (150 * 1024)
            for server in ("big", "web"):
                refused = await session.call_tool(f"{server}__echo", {"message": message})
                assert refused.is_error, server
                assert "max_message_bytes" in text_of(refused) or "byte limit" in text_of(refused), text_of(refused)
                fine = await session.call_tool(f"{server}__echo", {"message": "small"})
                assert text_of(fine) == "small"
            row = await server_row(session, "wide")
            assert row["connection"] != "connected" and "max_message_bytes" in (row["last_error"] or ""), row
            # The upstream HTTP hop: a body over the limit is refused before it is parsed.
            headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
            body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "y" * LIMIT}})
            too_big = await http.post(url, content=body, headers=headers)
            assert too_big.status_code == 413
            assert text_of(await session.call_tool("big__echo", {"message": "after"})) == "after"


async def test_an_http_response_body_over_the_limit_fails_its_request_without_being_read() -> None:
    class Serving(httpx2.AsyncBaseTransport):
        def __init__(self) -> None:
            self.closed = False

        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            kind = request.url.path.strip("/")
            body = b"z" * 2_000
            if kind == "streamed":  # no content-length: counted as it comes
                return httpx2.Response(200, stream=_Chunks([body[:1_000], body[1_000:]]))
            if kind == "events":
                return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)
            if kind == "small":
                return httpx2.Response(200, content=b"{}")
            return httpx2.Response(200, content=body)

        async def aclose(self) -> None:
            self.closed = True

    inner = Serving()
    async with httpx2.AsyncClient(transport=_BoundedBodies(inner, 1_500)) as client:
        for path in ("whole", "streamed"):
            with pytest.raises(MessageTooLargeError):
                await client.get(f"http://127.0.0.1/{path}")
        assert len((await client.get("http://127.0.0.1/events")).content) == 2_000  # the SSE decoder caps events
        assert (await client.get("http://127.0.0.1/small?token=secret")).content == b"{}"
    assert inner.closed


class _Chunks(httpx2.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        for chunk in self._chunks:
            yield chunk


def test_the_limit_is_a_config_key_with_the_contracts_default(tmp_path: Path) -> None:
    from circuitbox.config.load import ConfigError, load_config

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"mcpServers": {"a": {"command": "x"}}}))
    assert load_config(path).max_message_bytes == 16 * 1024 * 1024
    path.write_text(json.dumps({"max_message_bytes": 10, "mcpServers": {"a": {"command": "x"}}}))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "max_message_bytes" in str(caught.value)


async def test_an_oversized_line_names_the_request_it_answers_from_either_end() -> None:
    from circuitbox.server.stdio_child import Oversized

    python = Oversized(b'{"jsonrpc":"2.0","id":7,"result":{"content":[', b"]}}")
    typescript = Oversized(b'{"result":{"content":[', b'"isError":false},"jsonrpc":"2.0","id":"abc"}')
    nested = Oversized(b'{"result":{"id":5,', b'{"id":3}}}')
    notification = Oversized(b'{"jsonrpc":"2.0","method":"notifications/message","params":', b"}}")
    assert (refusal := python.refusal("s", 10)) is not None and refusal.id == 7
    assert (refusal := typescript.refusal("s", 10)) is not None and refusal.id == "abc"
    assert nested.refusal("s", 10) is None and notification.refusal("s", 10) is None
    assert python.refusal("s", 10).error.code == types.INTERNAL_ERROR  # type: ignore[union-attr]
