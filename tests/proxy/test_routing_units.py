"""Our own routing decisions, unit by unit: which client hears a log line, an update, a downstream's question."""

from __future__ import annotations

from typing import Any

import mcp_types as types
import pytest
from mcp import MCPError

from circuitbox.server.callers import Callers
from circuitbox.server.relay import Clients

pytestmark = pytest.mark.anyio


class Outbound:
    def __init__(self, fail: bool = False, answer: Any = None) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.fail = fail
        self.answer = answer

    async def notify(self, method: str, params: Any) -> None:
        if self.fail:
            raise RuntimeError("client went away")
        self.sent.append((method, params))

    async def send_raw_request(self, method: str, params: Any, opts: Any) -> Any:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


# What a client that answers everything declares (a downstream's question reaches only a client that declared it).
EVERYTHING = types.ClientCapabilities(
    sampling=types.SamplingCapability(), elicitation=types.ElicitationCapability(), roots=types.RootsCapability()
)


class Connection:
    client_capabilities = EVERYTHING

    def __init__(self, fail: bool = False, answer: Any = None) -> None:
        self.outbound = Outbound(fail, answer)


class Session:
    """The upstream side of one request: answers a relayed request, or fails as a client can."""

    client_capabilities = EVERYTHING

    def __init__(self, connection: Connection, answer: Any) -> None:
        self._connection = connection
        self.answer = answer

    async def send_request(self, request: Any, result_type: Any, metadata: Any = None) -> Any:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return result_type.model_validate(self.answer)


class Ctx:
    def __init__(self, session: Session, request_id: int = 1) -> None:
        self.session = session
        self.request_id = request_id


async def test_a_log_line_reaches_each_client_whose_level_admits_it_with_the_namespace_as_prefix() -> None:
    clients = Clients()
    verbose, quiet, silent = Connection(), Connection(), Connection(fail=True)
    clients.add(verbose).level = "debug"
    clients.add(quiet).level = "error"
    clients.add(silent)
    assert clients.most_verbose_level() == "debug"
    await clients.relay_log("ev", {"level": "info", "data": "x", "logger": "db"})
    await clients.relay_log("", {"level": "critical", "data": "y"})
    assert verbose.outbound.sent == [
        ("notifications/message", {"level": "info", "data": "x", "logger": "ev__db"}),
        ("notifications/message", {"level": "critical", "data": "y"}),
    ]
    assert quiet.outbound.sent == [("notifications/message", {"level": "critical", "data": "y"})]
    await clients.relay_log("ev", {"level": "warning", "data": "z"})
    assert verbose.outbound.sent[-1][1]["logger"] == "ev"


async def test_a_resource_update_reaches_only_its_subscribers() -> None:
    clients = Clients()
    subscriber, other = Connection(), Connection()
    clients.add(subscriber).subscriptions.add("demo://a")
    clients.add(other)
    assert clients.subscribed("demo://a") and not clients.subscribed("demo://b")
    await clients.relay_updated({"uri": "demo://a"})
    assert subscriber.outbound.sent == [("notifications/resources/updated", {"uri": "demo://a"})]
    assert other.outbound.sent == []
    assert Clients().most_verbose_level() is None


async def test_a_downstreams_question_goes_to_the_one_calling_client_or_gets_an_error() -> None:
    callers = Callers()
    roots = types.ListRootsRequest()
    unrouted = await callers.relay("s", roots)
    assert isinstance(unrouted, types.ErrorData) and "no client" in unrouted.message

    alice = Connection()
    with callers.calling("s", Ctx(Session(alice, {"roots": [{"uri": "file:///a"}]}))):
        answered = await callers.relay("s", roots)
        assert isinstance(answered, types.ListRootsResult) and str(answered.roots[0].uri) == "file:///a"
        with callers.calling("s", Ctx(Session(Connection(), {"roots": []}))):
            several = await callers.relay("s", roots)
            assert isinstance(several, types.ErrorData) and "several" in several.message
    assert callers.caller("s") is None


async def test_a_clients_error_or_failure_goes_back_to_the_downstream_as_an_error() -> None:
    callers = Callers()
    refused = MCPError(code=types.METHOD_NOT_FOUND, message="no roots here")
    with callers.calling("s", Ctx(Session(Connection(), refused))):
        answer = await callers.relay("s", types.ListRootsRequest())
    assert isinstance(answer, types.ErrorData) and answer.code == types.METHOD_NOT_FOUND
    with callers.calling("s", Ctx(Session(Connection(), RuntimeError("stream closed")))):
        broken = await callers.relay("s", types.ListRootsRequest())
    assert isinstance(broken, types.ErrorData) and "stream closed" in broken.message


async def test_with_no_call_in_flight_the_only_client_is_asked() -> None:
    callers = Callers()
    roots = types.ListRootsRequest()
    answered = await callers.relay("s", roots, Connection(answer={"roots": [{"uri": "file:///only"}]}))
    assert isinstance(answered, types.ListRootsResult) and str(answered.roots[0].uri) == "file:///only"
    refused = MCPError(code=types.METHOD_NOT_FOUND, message="no roots")
    assert (await callers.relay("s", roots, Connection(answer=refused))).code == types.METHOD_NOT_FOUND
    broken = await callers.relay("s", roots, Connection(answer=RuntimeError("gone")))
    assert isinstance(broken, types.ErrorData) and "gone" in broken.message


async def test_only_the_latest_url_elicitations_are_remembered_and_each_completion_reaches_its_own_client() -> None:
    from circuitbox.server.callers import MAX_PENDING_URL_ELICITATIONS

    callers = Callers()
    first, last = Connection(), Connection()

    def url_elicitation(key: str) -> types.ElicitRequest:
        params = types.ElicitRequestURLParams(message="in", url="https://example.invalid", elicitation_id=key)
        return types.ElicitRequest(params=params)

    callers._remember_url_elicitation("s", url_elicitation("e-0"), first)
    for n in range(1, MAX_PENDING_URL_ELICITATIONS + 1):
        callers._remember_url_elicitation("s", url_elicitation(f"e-{n}"), last)
    await callers.elicitation_complete("s", {"elicitationId": "e-0"})  # forgotten: the oldest went first
    await callers.elicitation_complete("s", {"elicitationId": f"e-{MAX_PENDING_URL_ELICITATIONS}"})
    await callers.elicitation_complete("other", {"elicitationId": "e-1"})  # ids are per server
    assert first.outbound.sent == []
    assert last.outbound.sent == [
        ("notifications/elicitation/complete", {"elicitationId": f"e-{MAX_PENDING_URL_ELICITATIONS}"})
    ]
