"""What circuitbox relays beyond tools: logging, completions, subscriptions, instructions (real server-everything)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client, MCPDeprecationWarning, MCPError

from tests.net import free_port
from tests.proxy.harness import chaos, everything_server, proxy_session, running_process, write_config
from tests.proxy.test_http_front_end import serve_args

pytestmark = pytest.mark.anyio


class Inbox:
    """Notifications the client received, with an event per arrival so tests wait without sleeping."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._arrived = anyio.Event()

    async def handler(self, message: Any) -> None:
        self.items.append(message)
        self._arrived.set()
        self._arrived = anyio.Event()

    async def wait_for(self, kind: type[Any], match: Any = lambda _: True) -> Any:
        with anyio.fail_after(30):
            while True:
                for item in self.items:
                    if isinstance(item, kind) and match(item):
                        return item
                await self._arrived.wait()


async def test_logging_completion_and_subscriptions_reach_the_downstream_and_come_back(tmp_path: Path) -> None:
    inbox = Inbox()
    # The chaos server declares no logging: setLevel skips it and still succeeds.
    config = {"mcpServers": {"ev": everything_server(), "c": chaos("echo=healthy")}}
    async with proxy_session(tmp_path, config, message_handler=inbox.handler) as s:
        caps = s.initialize_result.capabilities if s.initialize_result else None
        assert caps is not None and caps.logging is not None and caps.completions is not None
        assert caps.resources is not None and caps.resources.subscribe
        await s.list_tools()  # waits for the downstream to be up

        with pytest.warns(MCPDeprecationWarning):  # deprecated in the 2026 era, still what handshake clients use
            await s.set_logging_level("debug")
        await s.call_tool("ev__toggle-simulated-logging", {})
        log = await inbox.wait_for(types.LoggingMessageNotification)
        assert log.params.logger is not None and log.params.logger.startswith("ev")

        completion = await s.complete(
            types.PromptReference(name="ev__completable-prompt"), {"name": "department", "value": "Eng"}
        )
        assert completion.completion.values == ["Engineering"]
        by_template = await s.complete(
            types.ResourceTemplateReference(uri="demo://resource/dynamic/text/{resourceId}"),
            {"name": "resourceId", "value": "7"},
        )
        assert by_template.completion.values == ["7"]

        resources = await s.list_resources()
        uri = str(resources.resources[0].uri)
        with pytest.warns(MCPDeprecationWarning):
            await s.subscribe_resource(uri)
        await s.call_tool("ev__toggle-subscriber-updates", {})
        updated = await inbox.wait_for(types.ResourceUpdatedNotification)
        assert str(updated.params.uri) == uri
        with pytest.warns(MCPDeprecationWarning):
            await s.unsubscribe_resource(uri)


async def test_the_downstreams_instructions_reach_the_client_under_its_name(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"mcpServers": {"ev": everything_server()}})
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    async with running_process(serve_args(config, port), port=port):
        async with Client(url, mode="legacy") as first:
            await first.list_tools()  # the downstream is up from here on
        async with Client(url, mode="legacy") as second:
            instructions = second.instructions
    assert instructions is not None
    assert "circuit_status" in instructions  # circuitbox's own
    assert "## ev\n" in instructions  # server-everything's, under its name


async def test_a_completion_for_an_unknown_prompt_is_the_callers_mistake(tmp_path: Path) -> None:
    async with proxy_session(tmp_path, {"mcpServers": {"ev": everything_server()}}) as s:
        await s.list_tools()
        with pytest.raises(MCPError) as raised:
            await s.complete(types.PromptReference(name="nope"), {"name": "x", "value": ""})
        assert raised.value.error.code == types.INVALID_PARAMS
        with pytest.raises(MCPError) as unknown_uri:
            await s.complete(types.ResourceTemplateReference(uri="nowhere://{x}"), {"name": "x", "value": ""})
        assert unknown_uri.value.error.code == types.INVALID_PARAMS
        # An unlisted URI goes to the only server with resources, which answers for itself (server-everything
        # accepts any subscription, as it does directly); tests/proxy/test_unlisted_names.py has the rest.
        with pytest.warns(MCPDeprecationWarning):
            await s.subscribe_resource("demo://nowhere")


async def test_sampling_elicitation_and_roots_reach_the_calling_client_and_its_answers_reach_the_downstream(
    tmp_path: Path,
) -> None:
    asked: list[str] = []

    async def sampling(_: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        asked.append("sampling")
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(text="sampled by the client"), model="test-model"
        )

    async def elicitation(_: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append("elicitation")
        return types.ElicitResult(action="decline")

    async def roots(_: Any) -> types.ListRootsResult:
        asked.append("roots")
        return types.ListRootsResult(roots=[types.Root(uri="file:///client/root", name="the client's")])

    callbacks = {"sampling_callback": sampling, "elicitation_callback": elicitation, "list_roots_callback": roots}
    async with proxy_session(tmp_path, {"mcpServers": {"ev": everything_server()}}, **callbacks) as s:
        names = {tool.name for tool in (await s.list_tools()).tools}
        assert {"ev__trigger-sampling-request", "ev__trigger-elicitation-request", "ev__get-roots-list"} <= names
        sampled = await s.call_tool("ev__trigger-sampling-request", {"prompt": "hello", "maxTokens": 5})
        assert not sampled.is_error and "sampled by the client" in str(sampled.content)
        elicited = await s.call_tool("ev__trigger-elicitation-request", {})
        assert not elicited.is_error and "decline" in str(elicited.content).lower()
        listed = await s.call_tool("ev__get-roots-list", {})
        assert "file:///client/root" in str(listed.content)
    assert {"sampling", "elicitation", "roots"} <= set(asked)


async def test_a_clients_roots_change_reaches_the_downstream_which_asks_the_client_again(tmp_path: Path) -> None:
    asked = Inbox()

    async def roots(_: Any) -> types.ListRootsResult:
        await asked.handler("roots")
        return types.ListRootsResult(roots=[types.Root(uri=f"file:///root/{len(asked.items)}")])

    async with proxy_session(tmp_path, {"mcpServers": {"ev": everything_server()}}, list_roots_callback=roots) as s:
        await s.list_tools()
        await s.call_tool("ev__get-roots-list", {})  # server-everything syncs roots once, then on each change
        before = len(asked.items)
        with pytest.warns(MCPDeprecationWarning):
            await s.send_roots_list_changed()
        await asked.wait_for(str, lambda _: len(asked.items) > before)
