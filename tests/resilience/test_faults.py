"""Fault scenarios against a real `circuitbox serve` process with chaos downstreams, under concurrent load.

Every scenario checks the same promises: each upstream call is answered within call_timeout + 1 s, the healthy
downstream keeps a 100% success rate, the proxy process is still alive and answering at the end, and the breaker of
the faulty tool follows the contract (it opens, and what it fails fast never reaches the downstream).
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession

from tests.proxy.harness import chaos, proxy_session
from tests.resilience.support import (
    Load,
    alive,
    breaker_row,
    chaos_stats,
    proxy_pid,
    run_load,
    server_row,
    timed_call,
    wait_connected,
)

pytestmark = pytest.mark.anyio

CALL_TIMEOUT = 1.0
STARTUP_TIMEOUT = 3.0
BREAKER = {
    "failure_threshold": 3,
    "success_threshold": 2,
    "timeout": 1.0,
    "jitter": 0,
    "minimum_calls": 100,
    "call_timeout": CALL_TIMEOUT,
}
GOOD_LANES = [("good__echo", 2), ("good__add", 1)]


def good() -> dict[str, Any]:
    return chaos("echo=healthy", "add=add", seed=2)


async def listed(session: ClientSession, *names: str) -> None:
    """An agent lists tools before calling them; the first list waits for downstreams that are still starting."""
    with anyio.fail_after(15):
        tools = {tool.name for tool in (await session.list_tools()).tools}
    assert set(names) <= tools, (names, tools)


def arguments(tool: str, number: int) -> dict[str, Any]:
    return {"a": number, "b": 1} if tool.endswith("__add") else {"message": f"{tool} call {number}"}


async def check_promises(session: ClientSession, tmp_path: Path, load: Load, *, call_timeout: float) -> None:
    """The promises every scenario keeps (see the module docstring)."""
    slowest = max(load.answers, key=lambda a: a.seconds)
    assert slowest.seconds <= call_timeout + 1, f"{slowest.tool} took {slowest.seconds:.2f}s: {slowest.text}"
    for tool, _ in GOOD_LANES:
        kinds = load.kinds(tool)
        assert kinds["ok"] > 0 and set(kinds) == {"ok"}, (tool, kinds, [a.text for a in load.of(tool)][:3])
    pid = proxy_pid(tmp_path / "circuitbox.json")
    assert alive(pid)
    with anyio.fail_after(5):
        assert (await timed_call(session, "good__echo", {"message": "still serving"})).kind == "ok"
        assert (await session.call_tool("circuit_status", {})).structured_content is not None
    assert alive(pid)


def record(figures: Callable[..., None], label: str, load: Load, tool: str, **extra: Any) -> None:
    kinds = load.kinds(tool)
    figures(
        label,
        **load.figures(tool),
        fast_fails=kinds["fast_fail"],
        healthy_p99=load.figures("good__echo")["p99"],
        healthy_calls=len(load.of("good__echo")) + len(load.of("good__add")),
        **extra,
    )


async def test_a_hanging_tool_is_cut_at_its_deadline_then_fails_fast_and_the_downstream_sees_cancellations(
    tmp_path: Path, figures: Callable[..., None]
) -> None:
    config = {"mcpServers": {"bad": {**chaos("stuck=hang"), "breaker": BREAKER}, "good": good()}}
    async with proxy_session(tmp_path, config) as session:
        await listed(session, "bad__stuck", "good__echo")
        load = await run_load(session, [("bad__stuck", 4), *GOOD_LANES], seconds=3.5, arguments=arguments)
        await check_promises(session, tmp_path, load, call_timeout=CALL_TIMEOUT)

        kinds = load.kinds("bad__stuck")
        assert set(kinds) == {"error", "fast_fail"} and kinds["error"] >= 3, kinds
        assert all("timed out" in a.text for a in load.of("bad__stuck") if a.kind == "error")
        fast = next(a for a in load.of("bad__stuck") if a.kind == "fast_fail")
        assert fast.breaker["server"] == "bad" and fast.breaker["tool"] == "stuck"
        assert fast.breaker["state"] in ("open", "half_open") and "call_timeout" in fast.breaker["last_error"]
        reached = (await chaos_stats(session, "bad"))["tools"]["stuck"]["calls"]
        assert reached == kinds["error"]  # fast-fails never reached the downstream
        with anyio.fail_after(10):  # every timed-out call was cancelled downstream, none left hanging there
            while (await chaos_stats(session, "bad"))["tools"]["stuck"]["cancelled"] < reached:
                await anyio.sleep(0.05)
        record(figures, "hang", load, "bad__stuck", saved=kinds["fast_fail"], reached=reached)


async def test_a_slow_tool_opens_on_its_slow_call_rate_and_every_answer_it_gives_is_a_success(
    tmp_path: Path, figures: Callable[..., None]
) -> None:
    breaker = {**BREAKER, "slow_call_duration": 0.25, "minimum_calls": 5, "sliding_window_size": 10}
    config = {"mcpServers": {"bad": {**chaos("slow=latency:0.3-0.5", seed=3), "breaker": breaker}, "good": good()}}
    async with proxy_session(tmp_path, config) as session:
        await listed(session, "bad__slow", "good__echo")
        load = await run_load(session, [("bad__slow", 4), *GOOD_LANES], seconds=3.0, arguments=arguments)
        await check_promises(session, tmp_path, load, call_timeout=CALL_TIMEOUT)

        kinds = load.kinds("bad__slow")
        assert set(kinds) == {"ok", "fast_fail"} and kinds["ok"] >= 5, kinds  # opened only once the window had 5
        slow_answers = [a.seconds for a in load.of("bad__slow") if a.kind == "ok"]
        assert min(slow_answers) >= 0.3
        reached = (await chaos_stats(session, "bad"))["tools"]["slow"]["calls"]
        assert reached == kinds["ok"]
        row = await breaker_row(session, "bad", "slow")
        assert row["failures"] == 0  # slowness opened it, not failures
        record(figures, "slow", load, "bad__slow", saved=kinds["fast_fail"], reached=reached)


async def test_an_error_storm_on_three_tools_opens_each_circuit_and_only_the_first_failures_reach_the_server(
    tmp_path: Path, figures: Callable[..., None]
) -> None:
    bad = chaos(
        "e1=error:storm one: 503 Service Unavailable", "e2=error:storm two: connection refused", "e3=protocol_error"
    )
    config = {"mcpServers": {"bad": {**bad, "breaker": BREAKER}, "good": good()}}
    lanes = [("bad__e1", 6), ("bad__e2", 6), ("bad__e3", 4), *GOOD_LANES]
    async with proxy_session(tmp_path, config) as session:
        await listed(session, "bad__e1", "good__echo")
        load = await run_load(session, lanes, seconds=3.0, pause=0.005, arguments=arguments)
        await check_promises(session, tmp_path, load, call_timeout=CALL_TIMEOUT)

        stats = (await chaos_stats(session, "bad"))["tools"]
        saved = 0
        for name in ("e1", "e2", "e3"):
            kinds = load.kinds(f"bad__{name}")
            assert set(kinds) == {"error", "fast_fail"} and kinds["error"] >= 3, (name, kinds)
            assert stats[name]["calls"] == kinds["error"], name
            assert kinds["fast_fail"] > kinds["error"], (name, kinds)  # a storm is mostly answered by the breaker
            saved += kinds["fast_fail"]
        storm = Load([a for a in load.answers if a.tool.startswith("bad__")])
        figures(
            "error storm",
            **storm.figures(),
            fast_fails=saved,
            saved=saved,
            reached=sum(stats[n]["calls"] for n in ("e1", "e2", "e3")),
            healthy_p99=load.figures("good__echo")["p99"],
            healthy_calls=len(load.of("good__echo")) + len(load.of("good__add")),
        )


async def test_garbage_on_a_servers_stdout_neither_breaks_its_connection_nor_loses_an_answer(
    tmp_path: Path, figures: Callable[..., None]
) -> None:
    config = {
        "mcpServers": {"bad": {**chaos("noisy=garbage", "garbled=garbage:hang"), "breaker": BREAKER}, "good": good()}
    }
    async with proxy_session(tmp_path, config) as session:
        await listed(session, "bad__noisy", "good__echo")
        lanes = [("bad__noisy", 2), ("bad__garbled", 3), *GOOD_LANES]
        load = await run_load(session, lanes, seconds=3.0, arguments=arguments)
        await check_promises(session, tmp_path, load, call_timeout=CALL_TIMEOUT)

        assert set(load.kinds("bad__noisy")) == {"ok"}  # garbage lines between answers lose nothing
        assert all(a.text.startswith("bad__noisy call") for a in load.of("bad__noisy"))
        assert (await breaker_row(session, "bad", "noisy"))["state"] == "closed"
        garbled = load.kinds("bad__garbled")
        assert set(garbled) == {"error", "fast_fail"} and garbled["error"] >= 3, garbled
        stats = (await chaos_stats(session, "bad"))["tools"]
        assert stats["garbled"]["calls"] == garbled["error"]
        assert (await server_row(session, "bad"))["connects"] == 1  # never reconnected
        record(figures, "garbage then hang", load, "bad__garbled", saved=garbled["fast_fail"])
        figures("garbage then answer", **load.figures("bad__noisy"))


async def test_a_flapping_tool_opens_and_closes_with_its_server_and_its_circuit_only_moves_along_the_table(
    tmp_path: Path, figures: Callable[..., None]
) -> None:
    breaker = {**BREAKER, "timeout": 0.3, "timeout_multiplier": 1.0, "half_open_max_calls": 1}
    config = {"mcpServers": {"bad": {**chaos("wobble=flapping:1:1"), "breaker": breaker}, "good": good()}}
    seen: list[str] = []

    async def watch() -> None:
        while True:
            state = (await breaker_row(session, "bad", "wobble"))["state"]
            if not seen or seen[-1] != state:
                seen.append(state)
            await anyio.sleep(0.02)

    async with proxy_session(tmp_path, config) as session:
        await listed(session, "bad__wobble", "good__echo")
        await timed_call(session, "bad__wobble", {})  # creates the breaker, so there is a row to watch
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            load = await run_load(session, [("bad__wobble", 3), *GOOD_LANES], seconds=5.0, arguments=arguments)
            tg.cancel_scope.cancel()
        await check_promises(session, tmp_path, load, call_timeout=CALL_TIMEOUT)

        kinds = load.kinds("bad__wobble")
        assert kinds["ok"] > 0 and kinds["error"] >= 3 and kinds["fast_fail"] > 0, kinds
        assert "open" in seen and "closed" in seen[seen.index("open") :], seen  # it opened and then healed
        allowed = {("closed", "open"), ("open", "half_open"), ("half_open", "closed"), ("half_open", "open")}
        # Polling can miss a short-lived state, never invent a move: closed never goes straight to half-open.
        moves = set(itertools.pairwise(seen))
        assert ("closed", "half_open") not in moves, seen
        assert moves <= allowed | {("open", "closed")}, seen
        reached = (await chaos_stats(session, "bad"))["tools"]["wobble"]["calls"]
        assert reached == 1 + kinds["ok"] + kinds["error"]  # the first call above, then the load's non-fast-fails
        cycles = seen.count("open")
        record(figures, "flapping 1s/1s", load, "bad__wobble", saved=kinds["fast_fail"], opened=cycles)


async def test_a_crash_looping_server_is_restarted_with_backoff_while_its_breaker_keeps_calls_off_it(
    tmp_path: Path, figures: Callable[..., None]
) -> None:
    breaker = {**BREAKER, "call_timeout": 2.0}
    config = {"mcpServers": {"bad": {**chaos("boom=crash", "echo=healthy"), "breaker": breaker}, "good": good()}}
    async with proxy_session(tmp_path, config) as session:
        await listed(session, "bad__boom", "good__echo")
        lanes = [("bad__boom", 2), ("bad__echo", 1), *GOOD_LANES]
        load = await run_load(session, lanes, seconds=4.0, pause=0.02, arguments=arguments)
        await check_promises(session, tmp_path, load, call_timeout=2.0)

        boom = load.kinds("bad__boom")
        assert set(boom) <= {"error", "fast_fail"} and boom["fast_fail"] > 0, boom
        # Each restart follows a crash, and only calls the breaker let through can crash it.
        restarts = (await server_row(session, "bad"))["connects"] - 1
        assert restarts <= boom["error"] < boom["fast_fail"], (restarts, boom)
        # Its sibling tool is caught in the crash loop too (its calls meet the restarts), yet it answers in time.
        assert set(load.kinds("bad__echo")) <= {"ok", "error", "fast_fail"}
        await wait_connected(session, "bad")
        with anyio.fail_after(15):
            while (answer := await timed_call(session, "bad__echo", {"message": "back"})).kind != "ok":
                await anyio.sleep(0.1)  # polling a downstream the proxy is restarting; bounded
        assert answer.text == "back"
        record(figures, "crash loop", load, "bad__boom", saved=boom["fast_fail"], restarts=restarts)


@pytest.mark.parametrize(
    "dead",
    [
        pytest.param(["-c", "import sys; sys.exit(3)"], id="exits at once"),
        pytest.param(["-c", "import time; time.sleep(600)"], id="never answers"),
    ],
)
async def test_one_of_three_downstreams_dead_at_start_costs_the_other_two_nothing(
    tmp_path: Path, figures: Callable[..., None], dead: list[str]
) -> None:
    config = {
        "mcpServers": {
            "a": chaos("echo=healthy", seed=4),
            "dead": {"command": sys.executable, "args": dead, "startup_timeout": STARTUP_TIMEOUT},
            "b": chaos("echo=healthy", seed=5),
        }
    }
    async with proxy_session(tmp_path, config) as session:
        began = time.perf_counter()
        with anyio.fail_after(15):
            listed = await session.list_tools()
        first_list = time.perf_counter() - began
        assert {"a__echo", "b__echo"} <= {t.name for t in listed.tools}
        load = await run_load(session, [("a__echo", 3), ("b__echo", 3)], seconds=2.0)
        for tool in ("a__echo", "b__echo"):
            assert set(load.kinds(tool)) == {"ok"}, load.kinds(tool)
        assert load.slowest() < STARTUP_TIMEOUT  # no healthy call waited for the dead server
        unknown = await timed_call(session, "dead__echo", {})
        # Not "unknown tool": the agent learns that the server is not up, and when to retry.
        assert unknown.kind == "fast_fail" and "server 'dead' is" in unknown.text and "Retry in" in unknown.text
        assert unknown.seconds < STARTUP_TIMEOUT
        row = await server_row(session, "dead")
        assert row["connection"] in ("starting", "restarting") and row["tools"] == 0
        pid = proxy_pid(tmp_path / "circuitbox.json")
        assert alive(pid)
        figures(f"dead at start: {' '.join(dead[1:])[:30]}", **load.figures(), first_list=first_list)


async def test_a_downstream_stuck_starting_delays_only_the_very_first_tool_list(tmp_path: Path) -> None:
    config = {
        "mcpServers": {
            "a": chaos("echo=healthy", seed=4),
            "stuck": {
                "command": sys.executable,
                "args": ["-c", "import time; time.sleep(600)"],
                "startup_timeout": STARTUP_TIMEOUT,
            },
        }
    }
    async with proxy_session(tmp_path, config) as session:
        with anyio.fail_after(15):
            await session.list_tools()  # the first list may wait for starting servers, within their startup_timeout
        with anyio.fail_after(15):
            again = time.perf_counter()
            await session.list_tools()
            again = time.perf_counter() - again
            call = await timed_call(session, "a__echo", {"message": "quick"})
        # Neither waits for the stuck server again (the first-list wait is its startup_timeout); no finer bound.
        assert again < 5.0 and call.kind == "ok" and call.seconds < 5.0, (again, call.seconds)
