"""The lifecycle decisions of the proxy and its child transport, in process (the downstreams are still real chaos
processes): reloads racing a connection that is not up yet, refusals before any breaker, ending a stubborn group."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
import pytest
import trio
import trio.testing

from circuitbox.config.load import ProxyConfig, parse_config
from circuitbox.server import stdio_child
from circuitbox.server.downstream import NOTE_ORDER_WAIT, Connection, Downstream, DownstreamUnavailableError
from circuitbox.server.guard import SERVER_META_KEY, Guard
from circuitbox.server.proxy import Proxy
from circuitbox.server.shutdown import Drain
from circuitbox.server.stdio_child import _lines, open_stdio_child
from tests.proxy.harness import chaos
from tests.proxy.test_stdio_child import group_members, groups_led_by_our_children

pytestmark = pytest.mark.anyio

NEVER_UP = {"command": sys.executable, "args": ["-c", "import time; time.sleep(600)"], "startup_timeout": 60}


def cfg(servers: dict[str, Any]) -> ProxyConfig:
    return parse_config({"environment": "testing", "mcpServers": servers}, env={})


@asynccontextmanager
async def running(config: ProxyConfig) -> AsyncIterator[Proxy]:
    proxy = Proxy(config)
    async with anyio.create_task_group() as tg:
        await proxy.start(tg)
        yield proxy
        tg.cancel_scope.cancel()


async def connected(downstream: Downstream) -> None:
    with anyio.fail_after(30):
        while downstream.state is not Connection.CONNECTED:
            await anyio.sleep(0.02)  # the owner connects a real process; bounded


async def test_a_reload_while_the_new_connection_is_still_pending_keeps_or_supersedes_it() -> None:
    first = cfg({"c": chaos("echo=healthy", seed=1)})
    async with running(first) as proxy:
        old = proxy.downstreams["c"]
        await connected(old)
        stuck = cfg({"c": {**NEVER_UP, "namespace": "c"}})
        assert (await proxy.reload(stuck))["restarted"] == ["c"]
        pending = proxy._pending["c"]
        assert proxy.downstreams["c"] is old  # the old connection keeps serving while the new one starts

        renamed = cfg({"c": {**NEVER_UP, "namespace": "c", "startup_timeout": 61}})
        assert (await proxy.reload(renamed))["restarted"] == []
        assert proxy._pending["c"] is pending and pending.config.startup_timeout == 61  # same connection: kept

        assert (await proxy.reload(first))["restarted"] == []  # back to what runs: the pending one is dropped
        assert "c" not in proxy._pending and proxy.downstreams["c"] is old

        await proxy.reload(stuck)
        assert "c" in proxy._pending
        gone = cfg({"other": chaos("echo=healthy", seed=3)})
        assert (await proxy.reload(gone))["removed"] == ["c"]  # removed: the running and the pending one retire
        assert "c" not in proxy._pending and "c" not in proxy.downstreams


async def test_a_reload_of_a_server_that_is_down_switches_at_once() -> None:
    dead = {"command": sys.executable, "args": ["-c", "import sys; sys.exit(3)"]}
    async with running(cfg({"c": dead})) as proxy:
        old = proxy.downstreams["c"]
        with anyio.fail_after(30):
            await old.first_attempt_done.wait()
        await proxy.reload(cfg({"c": chaos("echo=healthy")}))
        fresh = proxy.downstreams["c"]
        assert fresh is not old and "c" not in proxy._pending  # nothing worked on the old one: nothing to keep
        await connected(fresh)


async def test_a_call_to_a_server_not_connected_is_refused_before_any_breaker_even_with_a_bad_policy() -> None:
    # Each glob alone is valid; together they contradict each other (an open period over its cap) for "abc".
    tools = {"a*": {"timeout": 500}, "ab*": {"max_timeout": 400}}
    config = cfg({"c": {**NEVER_UP, "tools": tools}})
    guard = Guard(config, Proxy(config).registry)
    downstream = Downstream(config.servers["c"])
    answer = await guard.call(downstream, "abc", {}, published="c__abc")
    assert answer.is_error and (answer.meta or {})[SERVER_META_KEY]["connection"] == "starting"
    assert guard.known() == []  # no breaker was even created


async def test_a_session_lost_between_the_check_and_the_send_is_refused_without_counting() -> None:
    config = cfg({"c": NEVER_UP})
    guard = Guard(config, Proxy(config).registry)

    class Racing(Downstream):
        async def request(self, request: Any, result_type: Any, progress: Any = None) -> Any:
            raise DownstreamUnavailableError(self.name, Connection.RESTARTING, "connection closed")

    downstream = Racing(config.servers["c"])
    downstream.session = object()  # type: ignore[assignment]  # looks connected to call(); the send finds it gone
    answer = await guard.call(downstream, "t", {}, published="c__t")
    assert answer.is_error and SERVER_META_KEY in (answer.meta or {})
    assert guard.find("c", "t") is not None and guard.find("c", "t").snapshot().calls == 0  # type: ignore[union-attr]


def test_a_downstream_that_is_not_connected_says_what_it_is() -> None:
    downstream = Downstream(cfg({"c": NEVER_UP}).servers["c"])
    with pytest.raises(DownstreamUnavailableError, match="server 'c' is starting"):
        downstream.connected_session()
    assert downstream.retry_after() == 1.0


async def test_a_drain_refuses_nothing_until_closed_and_cancels_what_outlives_its_timeout() -> None:
    drain = Drain()
    finished: list[bool] = []

    async def call(seconds: float) -> None:
        with drain.track() as scope:
            await anyio.sleep(seconds)
        finished.append(not scope.cancelled_caught)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, 0)
        tg.start_soon(call, 600)
        await anyio.wait_all_tasks_blocked()
        assert not drain.closing and drain.in_flight == 1
        assert await drain.close(0) == 1
    assert drain.closing and finished == [True, False]


async def test_lines_are_split_across_chunks_and_one_over_the_limit_is_dropped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    send, receive = anyio.create_memory_object_stream[bytes](10)
    for chunk in (b"ab", b"c\n\n  \n", b"x" * 8, b"y" * 8, b"still too long\nok\n"):
        send.send_nowait(chunk)
    send.close()
    with receive:
        lines = [line async for line in _lines(receive, "s", 10)]  # type: ignore[arg-type]
    assert lines == [b"abc", stdio_child.Oversized(b"x" * 8 + b"y" * 8, b"x" * 8 + b"y" * 8 + b"still too long"), b"ok"]
    assert "server 's' wrote a stdout line over 10 bytes (max_message_bytes); dropped" in caplog.text


async def test_stderr_lines_over_the_budget_are_counted_in_the_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(stdio_child, "STDERR_BURST", 5)
    caplog.set_level(logging.INFO, logger="circuitbox.downstream")
    script = "import sys; [print(i, file=sys.stderr) for i in range(12)]"
    with anyio.fail_after(30):
        async with open_stdio_child("noisy", sys.executable, ["-c", script], {}):
            while "stderr lines not logged" not in caplog.text:
                await anyio.sleep(0.02)  # polling the log the child's stderr feeds; bounded
    assert "[noisy] 7 stderr lines not logged (over 5 per 10s)" in caplog.text


async def test_a_group_that_ignores_sigterm_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stdio_child, "EXIT_GRACE", 0.2)
    monkeypatch.setattr(stdio_child, "KILL_GRACE", 0.5)
    with anyio.fail_after(30):
        async with open_stdio_child("stubborn", "sh", ["-c", "trap '' TERM; sleep 600 & wait"], {}):
            groups: set[int] = set()
            while not any(len(group_members(g)) >= 2 for g in groups):
                groups = groups_led_by_our_children()
                await anyio.sleep(0.02)  # polling /proc for the shell's child; bounded
    assert all(group_members(g) == [] for g in groups)


def test_every_policy_and_outcome_kind_is_classified() -> None:
    from mcp import MCPError

    from circuitbox.server.classify import Verdict, classify_error

    def kind(code: int) -> tuple[Verdict, str]:
        outcome = classify_error(MCPError(code, "x"))
        return outcome.verdict, outcome.kind

    assert kind(types.INVALID_PARAMS) == (Verdict.IGNORED, "")
    assert kind(types.CONNECTION_CLOSED) == (Verdict.FAILURE, "transport")
    assert kind(types.REQUEST_TIMEOUT) == (Verdict.FAILURE, "timeout")
    assert kind(types.INTERNAL_ERROR) == (Verdict.FAILURE, "protocol")


def test_an_answer_waits_for_the_log_messages_ahead_of_it_to_be_relayed_but_never_past_its_bound() -> None:
    downstream = Proxy(cfg({"d": {"command": "unused"}})).downstreams["d"]
    relayed: list[tuple[str, float]] = []

    async def relay(_: Downstream, note: Any) -> None:
        if note.params.data == "stuck":
            await trio.sleep_forever()  # a client that stopped reading
        await trio.sleep(0.25)
        relayed.append((note.params.data, trio.current_time()))

    def log(data: str) -> None:
        params = types.LoggingMessageNotificationParams(level="info", data=data)
        downstream._log_in_order(types.LoggingMessageNotification(params=params))

    async def main() -> list[float]:
        waited = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(downstream._relay_loop, relay)
            for data in ("first", "stuck"):
                log(data)  # read off the child before the answer
                began = trio.current_time()
                await downstream._after_notes()  # what the answer's call does before it returns
                waited.append(trio.current_time() - began)
            nursery.cancel_scope.cancel()
        return waited

    downstream._on_notification = relay
    waited = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert relayed == [("first", 0.25)]
    assert waited == [0.25, NOTE_ORDER_WAIT]  # after the note; at most the bound behind a stuck one
