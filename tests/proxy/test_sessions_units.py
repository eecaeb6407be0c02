"""Which connection a client's request takes, and how a per-client connection's messages reach its client, in
process (the end-to-end behaviour is in test_client_sessions.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from circuitbox.server.sessions import (
    ClientLink,
    _ask,
    _tell,
    declares_client_features,
    own_connection_of,
    undeclared,
)
from tests.config.support import one

pytestmark = pytest.mark.anyio

ROOTS = types.ClientCapabilities(roots=types.RootsCapability())


def ctx_of(capabilities: types.ClientCapabilities | None, version: str = "2025-06-18") -> Any:
    connection = SimpleNamespace(client_capabilities=capabilities)
    return SimpleNamespace(protocol_version=version, session=SimpleNamespace(_connection=connection))


def test_auto_gives_a_connection_of_its_own_only_to_a_stdio_servers_clients_that_declare_client_features() -> None:
    stdio = one({"command": "some-server"}).servers["srv"]
    http = one({"url": "http://127.0.0.1:1/mcp"}).servers["srv"]
    declaring = ctx_of(ROOTS)
    assert own_connection_of(stdio, declaring) is declaring.session._connection
    assert own_connection_of(stdio, ctx_of(types.ClientCapabilities())) is None
    assert own_connection_of(http, declaring) is None
    assert own_connection_of(stdio, ctx_of(ROOTS, sorted(MODERN_PROTOCOL_VERSIONS)[0])) is None  # no session
    assert own_connection_of(stdio, SimpleNamespace(protocol_version="2025-06-18", session=object())) is None


def test_the_session_key_overrides_auto_either_way() -> None:
    per_client = one({"command": "some-server", "session": "per_client"}).servers["srv"]
    shared = one({"command": "some-server", "session": "shared"}).servers["srv"]
    bare = ctx_of(None)
    assert own_connection_of(per_client, bare) is bare.session._connection
    assert own_connection_of(shared, ctx_of(ROOTS)) is None
    assert not declares_client_features(None)


class Outbound:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.sent: list[tuple[str, Any]] = []

    async def send_raw_request(self, method: str, params: Any, opts: Any) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        return {"roots": [{"uri": "file:///mine"}]}

    async def notify(self, method: str, params: Any) -> None:
        if self.error is not None:
            raise self.error
        self.sent.append((method, params))


def link_with(outbound: Outbound, capabilities: types.ClientCapabilities = ROOTS) -> ClientLink:
    connection = SimpleNamespace(outbound=outbound, client_capabilities=capabilities)
    return ClientLink("srv", connection, downstream=None, scope=anyio.CancelScope())  # type: ignore[arg-type]


async def test_a_question_with_no_call_in_flight_goes_to_the_clients_standalone_channel() -> None:
    answer = await _ask(link_with(Outbound()), types.ListRootsRequest())
    assert isinstance(answer, types.ListRootsResult) and str(answer.roots[0].uri) == "file:///mine"


async def test_a_question_the_client_refuses_or_cannot_take_gets_the_downstream_an_error() -> None:
    refused = MCPError(code=types.METHOD_NOT_FOUND, message="no roots here")
    assert (await _ask(link_with(Outbound(refused)), types.ListRootsRequest())).code == types.METHOD_NOT_FOUND
    broken = await _ask(link_with(Outbound(RuntimeError("stream closed"))), types.ListRootsRequest())
    assert broken.code == types.INTERNAL_ERROR and "stream closed" in broken.message


async def test_a_log_message_reaches_the_client_under_the_namespace_and_a_closed_client_is_skipped() -> None:
    outbound = Outbound()
    log = types.LoggingMessageNotification(params=types.LoggingMessageNotificationParams(level="info", data="x"))
    named = types.LoggingMessageNotification(
        params=types.LoggingMessageNotificationParams(level="info", data="y", logger="db")
    )
    await _tell(link_with(outbound), "ev", log)
    await _tell(link_with(outbound), "ev", named)
    await _tell(link_with(outbound), "", named)
    assert [params["logger"] for _, params in outbound.sent] == ["ev", "ev__db", "db"]
    await _tell(link_with(Outbound(RuntimeError("gone"))), "ev", log)  # logged, not raised


def test_a_url_elicitation_needs_the_url_mode_declared_a_form_one_the_capability() -> None:
    url = types.ElicitRequest(
        params=types.ElicitRequestURLParams(message="sign in", url="https://example.invalid", elicitation_id="e1")
    )
    form = types.ElicitRequest(
        params=types.ElicitRequestFormParams(message="name?", requested_schema={"type": "object"})
    )
    form_only = types.ClientCapabilities(elicitation=types.ElicitationCapability())
    both = types.ClientCapabilities(
        elicitation=types.ElicitationCapability(
            form=types.FormElicitationCapability(), url=types.UrlElicitationCapability()
        )
    )
    assert undeclared(form_only, "srv", form) is None
    refused = undeclared(form_only, "srv", url)
    assert refused is not None and "URL elicitation" in refused.message
    assert undeclared(both, "srv", url) is None
    assert undeclared(None, "srv", form) is not None


async def test_a_per_client_connection_never_asks_its_client_what_it_did_not_declare() -> None:
    outbound = Outbound()
    refused = await _ask(link_with(outbound, types.ClientCapabilities()), types.ListRootsRequest())
    assert refused.code == types.METHOD_NOT_FOUND and not outbound.sent
