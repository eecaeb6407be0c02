"""The fast lane's calls as tasks: on asyncio each runs as a plain task of the loop, which the lane cancels and
awaits itself when it ends; on trio (no loop to hand them to) in the lane's task group. Both answer every call,
and a call still running when the lane ends is cut short and answered, never left behind. Unit tests of the lane's
own logic: the proxy is a stand-in whose `call` waits on the test's word."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.message import SessionMessage

from circuitbox.server.direct_calls import WireResult
from circuitbox.server.lane import Lane, fast_lane

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class StandIn:
    """What the lane asks of the proxy, for one published tool `t`; a call answers when `release` is set."""

    def __init__(self) -> None:
        self.own: set[str] = set()
        self.catalog = SimpleNamespace(tools={"t": object()})
        self.clients = SimpleNamespace(count=lambda: 1)
        self.release = anyio.Event()
        self.cancelled = 0

    def reject_now(self, name: str) -> None:
        return None

    async def call(self, name: str, arguments: Any, progress: Any = None, *, wire: bool = False) -> WireResult:
        try:
            await self.release.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        return WireResult({"content": [{"text": str(arguments["n"]), "type": "text"}], "isError": False})


def initialized(lane: Lane) -> None:
    initialize = types.JSONRPCRequest(
        jsonrpc="2.0", id=0, method="initialize", params={"protocolVersion": "2025-11-25"}
    )
    assert not lane._take(initialize)
    assert not lane._take(types.JSONRPCNotification(jsonrpc="2.0", method="notifications/initialized"))


def call(n: int) -> bytes:
    return b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"t","arguments":{"n":%d}}}' % (n, n)


async def test_calls_run_as_tasks_and_each_is_answered() -> None:
    proxy = StandIn()
    send, answers = anyio.create_memory_object_stream[SessionMessage](100)
    client, upstream = anyio.create_memory_object_stream[SessionMessage](0)
    async with send, answers, client, upstream, fast_lane(proxy, upstream, send) as lane:  # type: ignore[arg-type]
        initialized(lane)
        assert all(lane.intercept_line(call(n)) for n in range(20))
        proxy.release.set()
        with anyio.fail_after(10):
            got = {}
            while len(got) < 20:
                message = (await answers.receive()).message
                got[message.id] = message.result["content"][0]["text"]
    assert got == {n: str(n) for n in range(20)}
    assert lane.taken == 20 and not lane._calls and not lane._tasks


async def test_calls_still_running_when_the_lane_ends_are_cut_short_and_answered() -> None:
    proxy = StandIn()
    send, answers = anyio.create_memory_object_stream[SessionMessage](100)
    client, upstream = anyio.create_memory_object_stream[SessionMessage](0)
    async with send, answers, client, upstream:
        with anyio.fail_after(10):
            async with fast_lane(proxy, upstream, send) as lane:  # type: ignore[arg-type]
                initialized(lane)
                assert all(lane.intercept_line(call(n)) for n in range(5))
                await anyio.wait_all_tasks_blocked()  # every call waits in the proxy
        assert proxy.cancelled == 5 and not lane._calls and not lane._tasks
        closed = [answers.receive_nowait().message for _ in range(5)]
    # Each answered as the SDK answers a call cut short when the client's input ends.
    assert sorted(m.id for m in closed) == list(range(5))
    assert {m.error.code for m in closed} == {types.CONNECTION_CLOSED}
