"""A stdio downstream's child process: its environment, its whole process group ended, garbage and stderr logged
under its name and bounded."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import mcp_types as types
import pytest
from mcp.shared.message import SessionMessage

from circuitbox.server import stdio_child
from circuitbox.server.stdio_child import BurstLog, ChildInput, ChildOutput, child_environment, open_stdio_child
from tests.proxy.harness import chaos, proxy_session
from tests.proxy.test_breakers_through_the_proxy import text

pytestmark = pytest.mark.anyio


def group_members(pgid: int) -> list[int]:
    """PIDs of the live processes in process group `pgid` (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def test_a_child_gets_only_home_path_shell_and_term_plus_its_own_env() -> None:
    parent = {"HOME": "/h", "PATH": "/bin", "SHELL": "/bin/sh", "TERM": "xterm", "AWS_SECRET": "s", "USER": "u"}
    assert child_environment({"MINE": "1"}, parent) == {
        "HOME": "/h",
        "PATH": "/bin",
        "SHELL": "/bin/sh",
        "TERM": "xterm",
        "MINE": "1",
    }
    assert "PATH" not in child_environment({}, {"PATH": "() { evil; }"})  # a shell function is never passed on


async def test_a_real_child_sees_none_of_our_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRCUITBOX_TEST_SECRET", "hunter2")
    out = tmp_path / "env.json"
    script = f"import json, os; open({str(out)!r}, 'w').write(json.dumps(sorted(os.environ)))"
    with anyio.fail_after(30):
        async with open_stdio_child("envtest", sys.executable, ["-c", script], {"MINE": "1"}):
            while not out.exists():
                await anyio.sleep(0.02)  # polling another process's file; bounded
    names = set(json.loads(out.read_text())) - {"LC_CTYPE"}  # Python may set LC_CTYPE itself (PEP 538)
    assert "MINE" in names and "CIRCUITBOX_TEST_SECRET" not in names
    assert names <= {"HOME", "PATH", "SHELL", "TERM", "MINE"}


@pytest.mark.parametrize(
    "script",
    [
        pytest.param("sleep 600 & sleep 600 & wait", id="a leader that waits for its children"),
        pytest.param("sleep 600 & exec cat", id="a leader that exits when stdin closes, leaving a child"),
    ],
)
async def test_the_whole_process_group_is_ended_when_the_connection_ends(tmp_path: Path, script: str) -> None:
    with anyio.fail_after(30):
        async with open_stdio_child("tree", "sh", ["-c", script], {}):
            groups: set[int] = set()
            while not any(len(group_members(g)) >= 2 for g in groups):
                groups = groups_led_by_our_children()
                await anyio.sleep(0.02)  # polling /proc for the children the shell starts; bounded
    assert {g: group_members(g) for g in groups} == {g: [] for g in groups}


async def test_a_connection_cancelled_while_its_child_spawns_still_ends_and_reaps_it() -> None:
    """A cancel pending when the spawn starts waits until the child is the connection's own (spawned shielded), then
    strikes inside it: the child's group is ended and the child reaped. Unshielded, that cancel struck inside the
    loop's spawn, where a child already forked could be left to asyncio's cleanup, itself cancellable."""
    before = groups_led_by_our_children()
    spawned: set[int] = set()
    with anyio.fail_after(30):
        with anyio.CancelScope() as scope:
            scope.cancel()
            async with open_stdio_child("spawning", "sh", ["-c", "sleep 600 & exec cat"], {}):
                spawned = groups_led_by_our_children() - before
                await anyio.lowlevel.checkpoint()  # the pending cancel strikes here, inside the connection
        assert scope.cancelled_caught
    assert len(spawned) == 1
    assert {g: group_members(g) for g in spawned} == {g: [] for g in spawned}
    assert groups_led_by_our_children() - before == set()  # reaped, not a zombie left to the collector


def groups_led_by_our_children() -> set[int]:
    """Process groups led by our direct children (each stdio child leads its own)."""
    groups = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid() and int(fields[2]) == int(entry.name):
                groups.add(int(entry.name))
    return groups


def test_a_burst_log_admits_the_first_of_a_burst_then_one_per_interval_with_the_count_dropped() -> None:
    now = [0.0]
    log = BurstLog(10.0, clock=lambda: now[0])
    assert log.admit() == 0
    assert [log.admit() for _ in range(999)] == [None] * 999
    now[0] = 10.0
    assert log.admit() == 999
    assert log.admit() is None and log.dropped == 1


async def test_ten_thousand_garbage_lines_from_a_downstream_make_a_bounded_log(tmp_path: Path) -> None:
    config = {"mcpServers": {"c": chaos("junk=garbage:answer:10000", "echo=healthy")}}
    with (tmp_path / "proxy.log").open("w+") as errlog:
        async with proxy_session(tmp_path, config, errlog=errlog) as session:
            answer = await session.call_tool("c__junk", {"message": "after the garbage"})
            assert not answer.is_error and text(answer) == "after the garbage"
            assert not (await session.call_tool("c__echo", {"message": "still connected"})).is_error
        errlog.seek(0)
        log = errlog.read()
    warnings = [line for line in log.splitlines() if "not JSON-RPC" in line]
    assert 1 <= len(warnings) <= 3, warnings
    assert "server 'c'" in warnings[0]
    assert len(log) < 20_000, len(log)  # the garbage itself (~600 kB) is not in it


async def test_downstream_stderr_lines_in_the_log_carry_the_servers_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    script = "import sys; [print(f'line {i}', file=sys.stderr, flush=True) for i in range(150)]; sys.stdin.read()"
    caplog.set_level(logging.INFO, logger="circuitbox.downstream")
    with anyio.fail_after(30):
        async with open_stdio_child("noisy", sys.executable, ["-c", script], {}):
            while sum("[noisy] line" in r.getMessage() for r in caplog.records) < 100:
                await anyio.sleep(0.02)  # polling the log the child's stderr feeds; bounded
    logged = [r.getMessage() for r in caplog.records if r.name == "circuitbox.downstream.stderr"]
    assert logged[0] == "[noisy] line 0"
    assert sum(m.startswith("[noisy] line") for m in logged) == 100  # a burst is cut at 100 lines per 10 s


# -- the child's input written by the sending task, its output offered to a hook first (real pipes) -----------------


def answer(n: int, payload: str = "") -> SessionMessage:
    """A message `cat` sends back as it is: a response with id `n`."""
    return SessionMessage(types.JSONRPCResponse(jsonrpc="2.0", id=n, result={"payload": payload}))


async def answers_until(read: ChildOutput, last: int) -> dict[int, Any]:
    """The results of the responses read (by id) up to and including the one with id `last`."""
    seen: dict[int, Any] = {}
    with anyio.fail_after(30):
        while True:
            message = (await read.receive()).message
            assert isinstance(message, types.JSONRPCResponse) and isinstance(message.id, int)
            seen[message.id] = message.result
            if message.id == last:
                return seen


async def test_lines_sent_at_once_by_many_tasks_reach_the_child_whole_and_come_back_whole() -> None:
    """50 senders, each line 200 kB (over the pipe's and the loop's buffers, so most wait and go out in pieces);
    `cat` sends every line back: one that another sender's bytes cut into would not parse and be missing."""
    payloads = {n: f"{n:03d}" * 66_000 for n in range(50)}
    async with open_stdio_child("cat", "cat", [], {}) as (read, write), anyio.create_task_group() as tg:
        for n, payload in payloads.items():
            tg.start_soon(write.send, answer(n, payload))
        seen: dict[int, Any] = {}
        with anyio.fail_after(30):
            while len(seen) < 50:
                message = (await read.receive()).message
                assert isinstance(message, types.JSONRPCResponse) and isinstance(message.id, int)
                seen[message.id] = message.result
    assert seen == {n: {"payload": payload} for n, payload in payloads.items()}


HELD = """
import json, os, sys, time
while not os.path.exists(sys.argv[1]):  # not reading stdin until told to
    time.sleep(0.01)
for line in sys.stdin:
    print(json.dumps({"jsonrpc": "2.0", "id": json.loads(line)["id"], "result": {}}), flush=True)
"""


async def test_senders_to_a_child_that_does_not_read_wait_unwritten_and_a_cancelled_one_wrote_nothing(
    tmp_path: Path,
) -> None:
    """Backpressure before the write: while the child reads nothing, at most the lines that fit the pipe and the
    loop's buffer are written; every other sender waits with its line unwritten, so cancelling it sends nothing
    (no half line, no request the caller has given up on)."""
    go = tmp_path / "go"
    returned: list[int] = []

    async def sender(write: ChildInput, n: int) -> None:
        await write.send(answer(n, "x" * 50_000))
        returned.append(n)

    async with open_stdio_child("held", sys.executable, ["-c", HELD, str(go)], {}) as (read, write):
        with anyio.fail_after(30):
            with anyio.CancelScope() as senders:
                async with anyio.create_task_group() as tg:
                    for n in range(20):
                        tg.start_soon(sender, write, n)
                    await anyio.wait_all_tasks_blocked()
                    senders.cancel()
        assert 1 <= len(returned) <= 3, returned  # 64 kB in the pipe, up to 64 kB more in the loop's buffer
        go.touch()
        await write.send(answer(99))  # after every line written before it
        seen = await answers_until(read, 99)
    assert sorted(seen) == sorted([*returned, 99])


CLOSES_STDIN = """
import os, time
os.close(0)  # stops reading for good, its stdout still open
print('{"jsonrpc": "2.0", "id": 1, "result": {}}', flush=True)
time.sleep(600)
"""


async def test_a_child_that_closed_its_stdin_fails_the_next_send_and_ends_its_output_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stdio_child, "EXIT_GRACE", 0.1)  # it would never exit by itself
    async with open_stdio_child("deaf", sys.executable, ["-c", CLOSES_STDIN], {}) as (read, write):
        with anyio.fail_after(30):
            assert (await read.receive()).message.id == 1  # it has closed its stdin by now
            with pytest.raises(anyio.BrokenResourceError):
                await write.send(answer(2))
            with pytest.raises(anyio.EndOfStream):  # the session sees the connection end
                await read.receive()
            with pytest.raises(anyio.BrokenResourceError):
                await write.send(answer(3))


async def test_what_was_sent_reaches_the_child_when_the_connection_closes_at_once(tmp_path: Path) -> None:
    """The connection closed right after a 1 MB line went out (most of it still in the loop's buffer): the child
    still reads every line whole before its stdin ends."""
    counted = tmp_path / "count"
    script = (
        f"import sys; n = sum(line.endswith('\\n') for line in sys.stdin); open({str(counted)!r}, 'w').write(str(n))"
    )
    with anyio.fail_after(30):
        async with open_stdio_child("sink", sys.executable, ["-c", script], {}) as (_, write):
            for n in range(10):
                await write.send(answer(n, "x" * 1000))
            await write.send(answer(10, "x" * 1_000_000))
        assert counted.read_text() == "11"
        with pytest.raises(anyio.ClosedResourceError):
            await write.send(answer(11))


async def test_a_write_that_hits_a_broken_pipe_fails_its_send_and_reports_it_at_once() -> None:
    """The child's end closed and the loop not told yet: the write itself finds it, the line is lost, so that
    send fails (not the next one) and the output side is told. A bare pipe, to close its end at a chosen moment."""
    read_fd, write_fd = os.pipe()
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, os.fdopen(write_fd, "wb"))
    broken: list[bool] = []
    write = ChildInput(asyncio.StreamWriter(transport, protocol, None, loop), on_broken=lambda: broken.append(True))
    try:
        await write.send(answer(1))
        assert os.read(read_fd, 1 << 16).endswith(b"\n") and not broken
        os.close(read_fd)  # no checkpoint from here to the send: the loop has not seen it
        with pytest.raises(anyio.BrokenResourceError):
            await write.send(answer(2))
        assert broken
    finally:
        transport.close()


async def test_the_output_hook_takes_what_it_returns_true_for_and_a_failing_hook_costs_only_its_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    taken: list[Any] = []

    def hook(message: types.JSONRPCMessage) -> bool:
        if message.id == 2:
            raise RuntimeError("a bug in the hook")
        taken.append(message.id)
        return message.id == 1

    async with open_stdio_child("cat", "cat", [], {}) as (read, write):
        read.intercept = hook
        for n in (1, 2, 3):
            await write.send(answer(n))
        seen = await answers_until(read, 3)
        assert sorted(seen) == [2, 3]  # 1 taken by the hook, 2 passed on despite its failure
    assert taken == [1, 3]
    assert any("hook" in r.getMessage() and r.exc_info for r in caplog.records)


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_off_asyncio_a_stdio_child_is_refused_before_anything_is_spawned() -> None:
    """Its stdin is written through the asyncio loop's pipe transport: on trio it says so instead of leaving a
    child it cannot write to."""
    before = groups_led_by_our_children()
    with pytest.raises(RuntimeError, match="asyncio"):
        async with open_stdio_child("cat", "cat", [], {}):
            pass
    assert groups_led_by_our_children() == before
