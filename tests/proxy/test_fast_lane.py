"""The fast lane of the stdio upstream: the proxy's MCP server runs in-process on memory streams (as `serve` runs it
on stdin/stdout, lane in front), its downstream is a real chaos server process, and the client side is raw JSON-RPC
so that every message, and which path answered it, is visible."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.message import SessionMessage

from circuitbox.config.load import parse_config
from circuitbox.server import guard as guard_module
from circuitbox.server import lane as lane_module
from circuitbox.server.app import build_proxy
from circuitbox.server.direct_calls import plain_result
from circuitbox.server.lane import Lane, fast_lane
from circuitbox.server.proxy import Proxy
from tests.proxy.harness import chaos
from tests.proxy.test_server_side_relay import elicit_server

pytestmark = pytest.mark.anyio

TOOLS = ("echo=healthy", "slow=progress:50:1", "broken=protocol_error:-32602", "boom=error")


def uncounted(result: dict[str, Any]) -> str:
    """A chaos echo result without its call counter (the one thing two calls' answers differ in)."""
    return re.sub(r'"call": ?\d+', '"call": N', json.dumps(result, sort_keys=True))


class Wire:
    """The client's end: raw JSON-RPC messages in, answers and notifications out."""

    def __init__(self, send: Any, receive: Any, proxy: Proxy) -> None:
        self._send = send
        self._receive = receive
        self.proxy = proxy
        self.lane: Lane | None = None
        self.notifications: list[dict[str, Any]] = []
        self.answers: dict[Any, dict[str, Any]] = {}

    async def send(self, message: dict[str, Any]) -> None:
        await self._send.send(SessionMessage(types.jsonrpc_message_adapter.validate_python(message)))

    async def request(self, request_id: Any, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)
        return await self.answer(request_id)

    async def answer(self, request_id: Any) -> dict[str, Any]:
        with anyio.fail_after(60):
            while request_id not in self.answers:
                await self.next()
        return self.answers.pop(request_id)

    async def next(self) -> dict[str, Any]:
        item = await self._receive.receive()
        data: dict[str, Any] = item.message.model_dump(by_alias=True, exclude_none=True)
        if "id" in data:
            self.answers[data["id"]] = data
        else:
            self.notifications.append(data)
        return data

    async def call(self, request_id: Any, name: str, arguments: dict[str, Any] | None = None, **extra: Any) -> Any:
        return await self.request(request_id, "tools/call", {"name": name, "arguments": arguments or {}, **extra})

    @property
    def taken(self) -> int:
        assert self.lane is not None
        return self.lane.taken

    async def handshake(self, version: str = "2025-11-25", *, listed: bool = True) -> None:
        info = {"name": "test", "version": "0"}
        await self.request(0, "initialize", {"protocolVersion": version, "capabilities": {}, "clientInfo": info})
        await self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        if listed:  # a client that lists is known: what a downstream asks during a call can reach it
            await self.request("list", "tools/list")


@asynccontextmanager
async def lane_proxy(*tools: str, server: dict[str, Any] | None = None) -> AsyncIterator[Wire]:
    server_entry = {**(server or chaos(*(tools or TOOLS))), "namespace": "", "breaker": {"failure_threshold": 2}}
    proxy, _ = build_proxy(parse_config({"environment": "testing", "mcpServers": {"d": server_entry}}), metrics=False)
    proxy.stdio_upstream = True
    to_server, server_reads = anyio.create_memory_object_stream[Any](32)
    server_writes, from_server = anyio.create_memory_object_stream[Any](32)
    wire = Wire(to_server, from_server, proxy)
    try:
        async with anyio.create_task_group() as tg:
            await proxy.start(tg)
            server = proxy.build_server()
            proxy.serve_one_client(server)  # as serve does: the downstream is offered what the client declares

            async def run() -> None:
                async with fast_lane(proxy, server_reads, server_writes) as upstream:
                    wire.lane = upstream
                    await server.run(upstream, server_writes, proxy.initialization_options(server))

            tg.start_soon(run)
            yield wire
            await proxy.wait_first_attempts()  # not cancelled mid-spawn: the child is reaped
            tg.cancel_scope.cancel()
    finally:
        for stream in (to_server, server_reads, server_writes, from_server):
            stream.close()


async def test_a_known_client_s_call_is_answered_by_the_lane_exactly_as_the_sdk_s_server_answers_it() -> None:
    async with lane_proxy() as wire:
        await wire.handshake(listed=False)
        by_sdk = await wire.call(1, "echo", {"message": "same"})
        assert wire.taken == 0  # the client is not known yet: the SDK's server answers
        await wire.request("list", "tools/list")
        by_lane = await wire.call(2, "echo", {"message": "same"})
        assert wire.taken == 1
        assert uncounted(by_lane["result"]) == uncounted(by_sdk["result"])
        assert by_lane["result"]["structuredContent"]["call"] == 2
        # A string id, an isError result and a downstream's JSON-RPC error answer the same way too.
        assert (await wire.call("s", "echo", {"message": "x"}))["id"] == "s"
        boom = await wire.call(3, "boom")
        assert boom["result"]["isError"] is True
        broken = await wire.call(4, "broken")
        assert broken["error"]["code"] == -32602
        assert wire.taken == 4


async def test_an_older_client_gets_its_version_s_shape_from_the_lane_too() -> None:
    async with lane_proxy() as wire:
        await wire.handshake("2025-03-26", listed=False)
        by_sdk = await wire.call(1, "echo", {"message": "old"})
        await wire.request("list", "tools/list")
        by_lane = await wire.call(2, "echo", {"message": "old"})
        assert wire.taken == 1
        assert uncounted(by_lane["result"]) == uncounted(by_sdk["result"])  # sieved by the same version's schema


async def test_an_unsupported_version_is_served_as_the_latest_handshake_version() -> None:
    async with lane_proxy() as wire:
        await wire.handshake("1999-01-01")
        assert "structuredContent" in (await wire.call(1, "echo", {"message": "m"}))["result"]
        assert wire.taken == 1


async def test_progress_reaches_the_client_with_its_token_and_its_cancel_stops_the_call_unanswered() -> None:
    async with lane_proxy() as wire:
        await wire.handshake()
        await wire.send(
            {
                "jsonrpc": "2.0",
                "id": 7,
                "method": "tools/call",
                "params": {"name": "slow", "arguments": {}, "_meta": {"progressToken": "tok"}},
            }
        )
        with anyio.fail_after(60):
            progress = await wire.next()
        assert progress["method"] == "notifications/progress" and progress["params"]["progressToken"] == "tok"
        assert wire.taken == 1
        await wire.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}})
        await wire.request(8, "ping")  # answered after the cancel was handled
        assert 7 not in wire.answers
        breaker = wire.proxy.find_breaker("d", "slow")
        assert breaker is not None and breaker.snapshot().calls == 0  # cancelled: counted neither way


async def test_a_cancel_for_a_request_the_lane_does_not_hold_goes_to_the_sdk() -> None:
    async with lane_proxy() as wire:
        await wire.handshake()
        await wire.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 99}})
        await wire.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {}})
        assert (await wire.request(1, "ping"))["result"] == {}


async def test_a_call_in_flight_when_the_client_s_input_ends_is_answered_connection_closed() -> None:
    async with lane_proxy() as wire:
        await wire.handshake()
        await wire.send(
            {
                "jsonrpc": "2.0",
                "id": 5,
                "method": "tools/call",
                "params": {"name": "slow", "_meta": {"progressToken": 1}},
            }
        )
        with anyio.fail_after(60):
            await wire.next()  # its first progress: the call is at the downstream
        await wire._send.aclose()
        answer = await wire.answer(5)
        assert answer["error"]["code"] == types.CONNECTION_CLOSED


@pytest.mark.parametrize(
    "params",
    [
        {"name": "circuit_status", "arguments": {}},  # circuitbox's own tool
        {"name": "nope", "arguments": {}},  # not in the catalog
        {"name": "echo", "arguments": {"message": "m"}, "task": {"ttl": 1000}},  # more than the lane knows
        {"name": "echo", "arguments": "not an object"},
        {"name": 5},
        {"name": "echo", "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}},
        {"name": "echo", "_meta": "not an object"},
        {"name": "echo", "_meta": {"progressToken": 1.5}},
        {"name": "echo", "_meta": {"progressToken": True}},
    ],
)
async def test_calls_the_lane_is_not_sure_of_go_to_the_sdk_s_server(params: dict[str, Any]) -> None:
    async with lane_proxy("echo=healthy") as wire:
        await wire.handshake()
        answer = await wire.request(1, "tools/call", params)
        assert "result" in answer or "error" in answer
        assert wire.taken == 0


async def test_nothing_is_taken_before_the_client_has_initialized() -> None:
    async with lane_proxy("echo=healthy") as wire:
        answer = await wire.call(1, "echo", {"message": "m"})
        assert "error" in answer and wire.taken == 0


async def test_a_second_request_with_an_id_in_flight_goes_to_the_sdk() -> None:
    async with lane_proxy() as wire:
        await wire.handshake()
        await wire.send(
            {
                "jsonrpc": "2.0",
                "id": 3,
                "method": "tools/call",
                "params": {"name": "slow", "_meta": {"progressToken": 3}},
            }
        )
        with anyio.fail_after(60):
            await wire.next()
        await wire.send({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "echo"}})
        with anyio.fail_after(60):
            while 3 not in wire.answers:
                await wire.next()
        assert wire.taken == 1
        await wire.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 3}})


async def test_with_traces_on_every_call_goes_through_the_sdk_s_server(monkeypatch: pytest.MonkeyPatch) -> None:
    async with lane_proxy("echo=healthy") as wire:
        await wire.handshake()
        monkeypatch.setattr(lane_module.traces, "active", lambda: True)
        assert "result" in await wire.call(1, "echo", {"message": "m"})
        assert wire.taken == 0


async def test_a_proxy_bug_is_answered_as_the_sdk_answers_a_raising_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    async with lane_proxy("echo=healthy") as wire:
        await wire.handshake()

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug")

        monkeypatch.setattr(wire.proxy, "call", broken)
        answer = await wire.call(1, "echo", {"message": "m"})
        assert answer["error"] == {"code": 0, "message": "a bug"} and wire.taken == 1


async def test_the_lane_passes_the_call_s_meta_keys_on_to_the_downstream_but_the_progress_token() -> None:
    meta = {"vendor.example/trace": "t-1", "io.example/depth": {"n": 2}}
    sent = {**meta, "progressToken": "p", "io.modelcontextprotocol/clientInfo": {"name": "x", "version": "1"}}
    async with lane_proxy(server=elicit_server()) as wire:
        await wire.handshake()
        answer = await wire.call(1, "echo_meta", {}, _meta=sent)
        assert wire.taken == 1
        seen = json.loads(answer["result"]["content"][0]["text"])
        assert {k: v for k, v in seen.items() if k != "progress_token"} == meta
        assert seen["progress_token"] != "p"  # the downstream hop has a token of its own


async def test_a_call_whose_policy_may_retry_or_fall_back_keeps_the_typed_path_in_the_lane(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    judged: list[Any] = []

    def spy(raw: dict[str, Any]) -> Any:
        judged.append(raw)
        return plain_result(raw)

    monkeypatch.setattr(guard_module, "plain_result", spy)
    server = {
        **chaos("echo=healthy", "kept=healthy"),
        "tools": {"kept": {"idempotent": True, "retry": {"attempts": 2}}},
    }
    async with lane_proxy(server=server) as wire:
        await wire.handshake()
        kept = await wire.call(1, "kept", {"message": "typed"})
        assert wire.taken == 1 and judged == []  # taken by the lane, answered from the typed result
        plain = await wire.call(2, "echo", {"message": "wire"})
        assert wire.taken == 2 and len(judged) == 1  # the plain one in wire form
    assert kept["result"]["structuredContent"]["arguments"] == {"message": "typed"}
    assert plain["result"]["structuredContent"]["arguments"] == {"message": "wire"}
    assert kept["result"]["content"] == [{"type": "text", "text": "typed"}]
