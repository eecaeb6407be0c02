"""The default error classification end to end: PyPI's `mcp-server-fetch` behind a real `circuitbox serve`, fetching
from a local HTTP server, and PyPI's `mcp-server-git` on a local repository. Pages and refs that do not exist are the
caller's answer; a server that cannot be reached is distress."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.net import free_port
from tests.proxy.harness import proxy_session
from tests.proxy.test_breakers_through_the_proxy import status, text

pytestmark = pytest.mark.anyio

BREAKER = {"failure_threshold": 5, "minimum_calls": 100, "timeout": 600, "jitter": 0}


class _Pages(BaseHTTPRequestHandler):
    """/ok is a page; anything else is a 404."""

    def do_GET(self) -> None:
        found = self.path == "/ok"
        body = b"<html><body><p>the good page</p></body></html>" if found else b"not here"
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "text/html" if found else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def site() -> Iterator[str]:
    """A local web site on 127.0.0.1; yields its base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def fetch_server() -> dict[str, Any]:
    exe = shutil.which("mcp-server-fetch")
    command, args = (exe, []) if exe else (sys.executable, ["-m", "mcp_server_fetch"])
    return {"command": command, "args": [*args, "--ignore-robots-txt", "--allow-private-ips"], "breaker": BREAKER}


async def breaker_of(session: Any) -> dict[str, Any]:
    rows = (await status(session, server="fetch", tool="fetch"))["breakers"]
    assert len(rows) == 1
    return dict(rows[0])


async def test_five_missing_pages_leave_the_fetch_breaker_closed_and_the_next_good_fetch_succeeds(
    tmp_path: Path, site: str
) -> None:
    async with proxy_session(tmp_path, {"mcpServers": {"fetch": fetch_server()}}) as session:
        for i in range(5):
            missing = await session.call_tool("fetch__fetch", {"url": f"{site}/missing-{i}"})
            assert missing.is_error and "status code 404" in text(missing), text(missing)
        row = await breaker_of(session)
        assert (row["state"], row["failures"], row["consecutive_failures"]) == ("closed", 0, 0)
        good = await session.call_tool("fetch__fetch", {"url": f"{site}/ok"})
        assert not good.is_error and "the good page" in text(good)
        assert (await breaker_of(session))["successes"] == 1


async def test_five_refused_connections_open_the_fetch_breaker(tmp_path: Path, site: str) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/"  # nothing listens there: connection refused
    async with proxy_session(tmp_path, {"mcpServers": {"fetch": fetch_server()}}) as session:
        for _ in range(5):
            refused = await session.call_tool("fetch__fetch", {"url": nobody})
            assert refused.is_error and "circuitbox/breaker" not in (refused.meta or {}), text(refused)
        row = await breaker_of(session)
        assert (row["state"], row["failures"]) == ("open", 5)
        assert "All connection attempts failed" in row["last_error"]
        # Open means open: even a good page now fails fast, without reaching the server.
        fast = await session.call_tool("fetch__fetch", {"url": f"{site}/ok"})
        assert fast.is_error and (fast.meta or {})["circuitbox/breaker"]["state"] == "open"


async def test_strict_mode_keeps_counting_every_is_error_result(tmp_path: Path, site: str) -> None:
    server = {**fetch_server(), "tool_errors": "failure"}
    async with proxy_session(tmp_path, {"mcpServers": {"fetch": server}}) as session:
        for i in range(5):
            await session.call_tool("fetch__fetch", {"url": f"{site}/missing-{i}"})
        assert (await breaker_of(session))["state"] == "open"


def git_repo(repo: Path) -> Path:
    """A repository with one commit."""
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "the first commit"], check=True)
    return repo


async def test_git_show_on_a_bad_ref_leaves_its_breaker_closed_and_git_show_head_answers(tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "repo")
    exe = shutil.which("mcp-server-git")
    command, args = (exe, []) if exe else (sys.executable, ["-m", "mcp_server_git"])
    server = {"command": command, "args": [*args, "--repository", str(repo)], "breaker": BREAKER}
    async with proxy_session(tmp_path, {"mcpServers": {"git": server}}) as session:
        for _ in range(5):
            bad = await session.call_tool("git__git_show", {"repo_path": str(repo), "revision": "nope"})
            assert bad.is_error and "did not resolve" in text(bad), text(bad)
        rows = (await status(session, server="git", tool="git_show"))["breakers"]
        assert (rows[0]["state"], rows[0]["failures"]) == ("closed", 0)
        head = await session.call_tool("git__git_show", {"repo_path": str(repo), "revision": "HEAD"})
        assert not head.is_error and "the first commit" in text(head)
