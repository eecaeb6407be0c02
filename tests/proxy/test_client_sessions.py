"""Per-client downstream sessions behind the HTTP upstream: `circuitbox serve --transport http` in front of real
server-everything and chaos processes, driven by the SDK's clients."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client, MCPDeprecationWarning, MCPError

from tests.net import free_port
from tests.proxy.harness import chaos, everything_server, pid_of, proxy_session, running_process, write_config
from tests.proxy.test_http_front_end import serve_args

pytestmark = pytest.mark.anyio


def callbacks_of(who: str, asked: list[str] | None = None) -> dict[str, Any]:
    """Sampling, elicitation and roots callbacks that answer in `who`'s name."""

    async def sampling(_: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        if asked is not None:
            asked.append("sampling")
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(text=f"sampled by {who}"), model=who
        )

    async def elicitation(_: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"name": who})

    async def roots(_: Any) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri=f"file:///roots/{who}", name=who)])

    return {"sampling_callback": sampling, "elicitation_callback": elicitation, "list_roots_callback": roots}


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, their children...), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError("no VmRSS")


@asynccontextmanager
async def serving(tmp_path: Path, config: dict[str, Any]) -> AsyncIterator[tuple[str, Path]]:
    path = write_config(tmp_path, config)
    port = free_port()
    async with running_process(serve_args(path, port), port=port):
        yield f"http://127.0.0.1:{port}/mcp", path


async def wait_children(path: Path, count: int) -> set[int]:
    """Until the serve process has exactly `count` descendants (a child's exit is seen a moment after it happens)."""
    pid = pid_of(path)
    with anyio.fail_after(60):
        while len(found := descendants(pid)) != count:
            await anyio.sleep(0.05)
    return found


def text(result: types.CallToolResult) -> str:
    return " ".join(block.text for block in result.content if isinstance(block, types.TextContent))


async def test_two_clients_with_their_own_callbacks_each_get_their_own_answers_for_100_rounds(tmp_path: Path) -> None:
    async with serving(tmp_path, {"mcpServers": {"ev": everything_server()}}) as (url, path):
        async with (
            Client(url, mode="legacy", **callbacks_of("alice")) as alice,
            Client(url, mode="legacy", **callbacks_of("bob")) as bob,
        ):
            answers: dict[str, list[str]] = {"alice": [], "bob": []}

            async def rounds(who: str, client: Client) -> None:
                for _ in range(100):
                    sampled = await client.call_tool("ev__trigger-sampling-request", {"prompt": "hi", "maxTokens": 5})
                    elicited = await client.call_tool("ev__trigger-elicitation-request", {})
                    roots = await client.call_tool("ev__get-roots-list", {})
                    answers[who].append(" | ".join(text(r) for r in (sampled, elicited, roots)))

            with anyio.fail_after(300):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(rounds, "alice", alice)
                    tg.start_soon(rounds, "bob", bob)
            # Each client's own connection: one child each, beside the shared one that lists the tools.
            assert len(await wait_children(path, 3)) == 3
        for who, other in (("alice", "bob"), ("bob", "alice")):
            assert len(answers[who]) == 100
            for answer in answers[who]:
                assert f"sampled by {who}" in answer and f"file:///roots/{who}" in answer and who in answer
                assert other not in answer
        # Both sessions ended: their connections closed, the shared one stays.
        await wait_children(path, 1)


async def test_a_client_disconnecting_mid_call_does_not_disturb_the_other(tmp_path: Path) -> None:
    # A client that vanishes sends no DELETE: its session (and its connection) goes when it idles out.
    config = {"http": {"session_idle_timeout": 2}, "mcpServers": {"ev": everything_server()}}
    async with serving(tmp_path, config) as (url, path):
        asked = anyio.Event()

        async def stuck(_: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
            asked.set()
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

        async with Client(url, mode="legacy", **callbacks_of("bob")) as bob:
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:

                    async def leaver() -> None:
                        async with Client(
                            url, mode="legacy", **{**callbacks_of("alice"), "sampling_callback": stuck}
                        ) as a:
                            await a.call_tool("ev__trigger-sampling-request", {"prompt": "hi", "maxTokens": 5})

                    tg.start_soon(leaver)
                    await asked.wait()  # alice's call is in flight, her client answering the question: she leaves
                    tg.cancel_scope.cancel()
            for _ in range(5):
                sampled = await bob.call_tool("ev__trigger-sampling-request", {"prompt": "hi", "maxTokens": 5})
                assert not sampled.is_error and "sampled by bob" in text(sampled)
            await wait_children(path, 2)  # alice's connection is gone once her session idled out; bob's stays


async def test_each_clients_log_level_and_subscriptions_stay_its_own(tmp_path: Path) -> None:
    inboxes: dict[str, list[Any]] = {"alice": [], "bob": []}
    arrived = {"alice": anyio.Event(), "bob": anyio.Event()}

    def handler(who: str) -> Any:
        async def handle(message: Any) -> None:
            inboxes[who].append(message)
            arrived[who].set()

        return handle

    async def until(who: str, kind: type[Any]) -> Any:
        with anyio.fail_after(60):
            while True:
                found = [m for m in inboxes[who] if isinstance(m, kind)]
                if found:
                    return found[0]
                arrived[who] = anyio.Event()
                await arrived[who].wait()

    async with serving(tmp_path, {"mcpServers": {"ev": everything_server()}}) as (url, _):
        async with (
            Client(url, mode="legacy", message_handler=handler("alice"), **callbacks_of("alice")) as alice,
            Client(url, mode="legacy", message_handler=handler("bob"), **callbacks_of("bob")) as bob,
        ):
            uri = str((await alice.list_resources()).resources[0].uri)
            with pytest.warns(MCPDeprecationWarning):
                await alice.set_logging_level("emergency")  # alice wants nothing but emergencies
                await bob.set_logging_level("debug")
                await alice.subscribe_resource(uri)  # only alice subscribes
            for client in (alice, bob):
                await client.call_tool("ev__toggle-simulated-logging", {})
                await client.call_tool("ev__toggle-subscriber-updates", {})
            log = await until("bob", types.LoggingMessageNotification)
            assert log.params.logger is None or log.params.logger.startswith("ev")
            updated = await until("alice", types.ResourceUpdatedNotification)
            assert str(updated.params.uri) == uri
            # Several more rounds of the server's simulated logs and updates reach bob's inbox meanwhile.
            with anyio.fail_after(60):
                while len([m for m in inboxes["bob"] if isinstance(m, types.LoggingMessageNotification)]) < 3:
                    arrived["bob"] = anyio.Event()
                    await arrived["bob"].wait()
            with pytest.warns(MCPDeprecationWarning):
                await alice.unsubscribe_resource(uri)
        alice_logs = [m for m in inboxes["alice"] if isinstance(m, types.LoggingMessageNotification)]
        assert all(m.params.level == "emergency" for m in alice_logs)
        assert not [m for m in inboxes["bob"] if isinstance(m, types.ResourceUpdatedNotification)]


async def test_past_max_sessions_a_new_client_gets_a_clear_error_until_another_leaves(tmp_path: Path) -> None:
    config = {"mcpServers": {"c": {**chaos("echo=healthy"), "session": "per_client", "max_sessions": 1}}}
    async with serving(tmp_path, config) as (url, path), Client(url, mode="legacy") as second:
        async with Client(url, mode="legacy") as first:
            assert not (await first.call_tool("c__echo", {"text": "hi"})).is_error
            refused = await second.call_tool("c__echo", {"text": "hi"})
            assert refused.is_error and "max_sessions" in text(refused)
            async with Client(url) as modern:  # a 2026-era client has no session: it uses the shared connection
                echoed = await modern.call_tool("c__echo", {"text": "hi"})
                assert not echoed.is_error, text(echoed)
            status = await first.call_tool("circuit_status", {"server": "c"})
            assert all(b["state"] == "closed" for b in status.structured_content["breakers"])  # no breaker moved
        # The first client left: its connection closed, the second gets one. Left running: the shared connection's
        # child and the one the 2026-era client's call opened (a stdio connection serves one era: modern_stdio.py).
        await wait_children(path, 2)
        assert not (await second.call_tool("c__echo", {"text": "hi"})).is_error


async def test_200_sessions_opened_and_closed_leave_no_child_process_and_bounded_memory(tmp_path: Path) -> None:
    config = {"mcpServers": {"ev": {**everything_server(), "session": "per_client", "max_sessions": 64}}}
    async with serving(tmp_path, config) as (url, path):
        pid = pid_of(path)
        baseline = await wait_children(path, 1)

        async def one_session() -> None:
            async with Client(url, mode="legacy") as client:
                assert not (await client.call_tool("ev__echo", {"message": "hi"})).is_error

        async def batch(size: int) -> None:
            with anyio.fail_after(300):
                async with anyio.create_task_group() as tg:
                    for _ in range(size):
                        tg.start_soon(one_session)

        await batch(20)
        await wait_children(path, 1)
        after_first = rss_kib(pid)
        for _ in range(9):
            await batch(20)
        assert await wait_children(path, 1) == baseline  # only the shared connection's child is left
        grown = rss_kib(pid) - after_first
        assert grown < 40 * 1024, f"{grown} KiB more after 180 more sessions"
        assert rss_kib(pid) > 0  # still serving


async def test_past_max_sessions_a_prompt_request_gets_a_clear_protocol_error(tmp_path: Path) -> None:
    config = {"mcpServers": {"ev": {**everything_server(), "session": "per_client", "max_sessions": 1}}}
    async with (
        serving(tmp_path, config) as (url, _),
        Client(url, mode="legacy") as first,
        Client(url, mode="legacy") as second,
    ):
        prompt = next(p for p in (await first.list_prompts()).prompts if not p.arguments)
        assert (await first.get_prompt(prompt.name)).messages  # on first's own connection
        with pytest.raises(MCPError, match="max_sessions"):
            await second.get_prompt(prompt.name)


async def test_a_question_for_a_client_that_did_not_declare_it_gets_the_downstream_an_error(tmp_path: Path) -> None:
    # A shared connection is offered sampling before any client arrives; this client declared none.
    config = {"mcpServers": {"ev": {**everything_server(), "session": "shared"}}}
    async with serving(tmp_path, config) as (url, _), Client(url, mode="legacy") as client:
        result = await client.call_tool("ev__trigger-sampling-request", {"prompt": "hi", "maxTokens": 5})
        assert "did not declare sampling" in text(result)


async def test_behind_the_stdio_upstream_a_downstream_is_offered_exactly_what_the_client_declared(
    tmp_path: Path,
) -> None:
    # server-everything lists its sampling, elicitation and roots tools only to a client that declared them.
    asking = {"ev__trigger-sampling-request", "ev__trigger-elicitation-request", "ev__get-roots-list"}
    async with proxy_session(tmp_path, {"mcpServers": {"ev": everything_server()}}) as bare:
        assert not asking & {tool.name for tool in (await bare.list_tools()).tools}
    roots_only = {"list_roots_callback": callbacks_of("alice")["list_roots_callback"]}
    async with proxy_session(tmp_path, {"mcpServers": {"ev": everything_server()}}, **roots_only) as rooted:
        assert asking & {tool.name for tool in (await rooted.list_tools()).tools} == {"ev__get-roots-list"}


async def test_a_reload_that_changes_a_servers_connection_closes_its_per_client_connections(tmp_path: Path) -> None:
    entry = {**chaos("echo=healthy"), "session": "per_client"}
    async with serving(tmp_path, {"mcpServers": {"c": entry}}) as (url, path), Client(url, mode="legacy") as client:
        assert not (await client.call_tool("c__echo", {"text": "hi"})).is_error
        before = await wait_children(path, 2)
        write_config(tmp_path, {"mcpServers": {"c": {**chaos("echo=healthy", seed=2), "session": "per_client"}}})
        os.kill(pid_of(path), signal.SIGHUP)
        with anyio.fail_after(60):  # the old shared child and the client's own are replaced
            while descendants(pid_of(path)) & before:
                await anyio.sleep(0.05)
        assert not (await client.call_tool("c__echo", {"text": "hi"})).is_error  # on a new connection of its own
        await wait_children(path, 2)
        # Switched to shared: the client's own connection closes and its calls go to the shared one.
        write_config(tmp_path, {"mcpServers": {"c": {**chaos("echo=healthy", seed=2), "session": "shared"}}})
        os.kill(pid_of(path), signal.SIGHUP)
        await wait_children(path, 1)
        assert not (await client.call_tool("c__echo", {"text": "hi"})).is_error
        assert len(await wait_children(path, 1)) == 1


async def test_breakers_stay_shared_an_outage_one_client_runs_into_protects_the_other(tmp_path: Path) -> None:
    entry = {**chaos("boom=error"), "session": "per_client", "breaker": {"failure_threshold": 2}}
    async with (
        serving(tmp_path, {"mcpServers": {"c": entry}}) as (url, path),
        Client(url, mode="legacy") as alice,
        Client(url, mode="legacy") as bob,
    ):
        for _ in range(2):  # on alice's own connection: its "service unavailable" answers open the circuit
            failed = await alice.call_tool("c__boom", {})
            assert failed.is_error and "unavailable" in text(failed)
        rejected = await bob.call_tool("c__boom", {})
        assert rejected.is_error and rejected.meta is not None
        assert rejected.meta["circuitbox/breaker"]["state"] == "open"
        assert len(await wait_children(path, 2)) == 2  # bob was answered without a connection of his own
