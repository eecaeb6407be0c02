"""A stdio downstream's child process: its environment, its whole process group ended, garbage and stderr logged
under its name and bounded."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from circuitbox.server.stdio_child import BurstLog, child_environment, open_stdio_child
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
