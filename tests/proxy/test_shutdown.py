"""SIGTERM / SIGINT with calls in flight, over stdio and HTTP: new calls are refused, calls in flight finish within
`shutdown_timeout`, the rest are answered with an error, and no downstream process is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.net import free_port, import_path_env, wait_for_port
from tests.proxy.harness import chaos, pid_of, proxy_session, write_config
from tests.proxy.test_breakers_through_the_proxy import chaos_stats, text

pytestmark = pytest.mark.anyio

SHUTDOWN_TIMEOUT = 2.0


def config() -> dict[str, Any]:
    wrapped = chaos("slow=latency:1.5", "stuck=hang", "echo=healthy")
    # An `sh` wrapper that leaves a child of its own beside the server: the kind of tree that used to be orphaned.
    script = 'sleep 600 & exec "$0" "$@"'
    wrapper = {**wrapped, "command": "sh", "args": ["-c", script, wrapped["command"], *wrapped["args"]]}
    breaker = {"call_timeout": 60}
    return {"shutdown_timeout": SHUTDOWN_TIMEOUT, "mcpServers": {"c": {**wrapper, "breaker": breaker}}}


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (zombies excluded)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def read(log: Path) -> str:
    return log.read_text()


async def wait_log(log: Path, needle: str) -> None:
    with anyio.fail_after(30):
        while needle not in read(log):
            await anyio.sleep(0.02)  # polling another process's log file; bounded


async def wait_tree(pid: int, size: int) -> set[int]:
    """Until the process tree below `pid` has `size` processes (proxy's downstream: the server and its sibling)."""
    with anyio.fail_after(30):
        while len(tree := descendants(pid)) < size:
            await anyio.sleep(0.02)  # polling /proc; bounded
    return tree


async def calls_during_shutdown(
    session: ClientSession, proxy_pid: int, log: Path, sig: signal.Signals
) -> tuple[dict[str, types.CallToolResult], set[int]]:
    """Two calls in flight (one finishes in time, one never would), the signal, then a call during the drain."""
    answers: dict[str, types.CallToolResult] = {}

    async def call(name: str) -> None:
        answers[name] = await session.call_tool(f"c__{name}", {})

    assert not (await session.call_tool("c__echo", {"message": "up"})).is_error
    tree = await wait_tree(proxy_pid, 2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "slow")
        tg.start_soon(call, "stuck")
        with anyio.fail_after(30):
            while not all(t["in_flight"] for n, t in (await chaos_stats(session, "c"))["tools"].items() if n != "echo"):
                await anyio.sleep(0.02)  # polling the downstream's counters; bounded
        os.kill(proxy_pid, sig)
        await wait_log(log, "shutting down")
        answers["late"] = await session.call_tool("c__echo", {"message": "too late"})
    return answers, tree


def check(answers: dict[str, types.CallToolResult], tree: set[int]) -> None:
    assert not answers["slow"].is_error  # finished within shutdown_timeout
    assert answers["stuck"].is_error and "shutting down" in text(answers["stuck"])
    assert answers["late"].is_error and "shutting down" in text(answers["late"])
    assert [pid for pid in tree if alive(pid)] == []


@asynccontextmanager
async def logged(tmp_path: Path) -> AsyncIterator[tuple[Path, Any]]:
    log = tmp_path / "proxy.log"
    with log.open("w") as errlog:
        yield log, errlog


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_over_stdio_answers_every_call_and_leaves_no_process_behind(
    tmp_path: Path, sig: signal.Signals
) -> None:
    async with logged(tmp_path) as (log, errlog):
        async with proxy_session(tmp_path, config(), errlog=errlog) as session:
            proxy = pid_of(tmp_path / "circuitbox.json")
            answers, tree = await calls_during_shutdown(session, proxy, log, sig)
        with anyio.fail_after(30):
            while alive(proxy):
                await anyio.sleep(0.02)  # polling for the proxy's exit; bounded
    check(answers, tree)


async def test_sigterm_over_http_answers_every_call_and_leaves_no_process_behind(tmp_path: Path) -> None:
    path = write_config(tmp_path, config())
    port = free_port()
    args = [sys.executable, "-m", "circuitbox", "serve", "--config", str(path), "--transport", "http"]
    env = {**os.environ, **import_path_env()}
    async with logged(tmp_path) as (log, errlog):
        process = await anyio.open_process([*args, "--port", str(port)], env=env, stdout=errlog, stderr=errlog)
        try:
            await wait_for_port(port)
            async with (
                streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                answers, tree = await calls_during_shutdown(session, process.pid, log, signal.SIGTERM)
            with anyio.fail_after(30):
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    check(answers, tree)


async def test_a_signal_while_the_downstreams_are_ended_ends_their_groups_at_once_instead_of_orphaning_them(
    tmp_path: Path,
) -> None:
    # A downstream that ignores its stdin closing: the graceful end gives it 2 s before SIGTERM. A stdio client that
    # leaves sends SIGTERM 2 s after closing our stdin; that signal used to find its default action (the proxy's
    # signal watcher was already gone) and killed the proxy, orphaning the downstream.
    deaf = {"command": sys.executable, "args": ["-c", "import time; time.sleep(600)"]}
    path = write_config(tmp_path, {"mcpServers": {"deaf": deaf}})
    args = [sys.executable, "-m", "circuitbox", "serve", "--config", str(path)]
    async with logged(tmp_path) as (log, errlog):
        process = await anyio.open_process(
            args, env={**os.environ, **import_path_env()}, stdin=subprocess.PIPE, stdout=errlog, stderr=errlog
        )
        try:
            (downstream,) = await wait_tree(process.pid, 1)
            assert process.stdin is not None
            await process.stdin.aclose()  # the client leaves
            await wait_log(log, "front end stopped: ending the downstreams")
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert "downstream process groups ended" in read(log)
    assert not alive(downstream)
