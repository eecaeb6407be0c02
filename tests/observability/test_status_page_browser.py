"""The status page in a real headless Chromium (Debian's chromium and chromium-driver, unpacked into .cache/chromium
by `.ci/install-chromium.sh`), driven by selenium, against a real `circuitbox serve --transport http` whose breakers
a real MCP client trips.

A screenshot of the page is saved as a test artifact in `test-artifacts/` (or $CIRCUITBOX_TEST_ARTIFACTS); with
CIRCUITBOX_UPDATE_DOCS=1 it also replaces the README's `docs/status-page.png`.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.net import free_port
from tests.proxy.harness import REPO, chaos, running_process, write_config

pytestmark = pytest.mark.anyio

T = TypeVar("T")


def _chromium_bin() -> Path:
    folder = Path(os.environ.get("CIRCUITBOX_CHROMIUM_DIR", REPO / ".cache/chromium")) / "bin"
    assert (folder / "chromium").exists() and (folder / "chromedriver").exists(), (
        "run `bash .ci/install-chromium.sh` to unpack chromium and chromium-driver into .cache/chromium"
    )
    return folder


@asynccontextmanager
async def browser() -> AsyncIterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    folder = _chromium_bin()
    options = webdriver.ChromeOptions()
    options.binary_location = str(folder / "chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(arg)
    options.add_argument("--no-first-run")
    options.add_argument("--disable-background-networking")  # the browser's own update/metrics pings
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    service = Service(executable_path=str(folder / "chromedriver"))
    driver = await anyio.to_thread.run_sync(lambda: webdriver.Chrome(options=options, service=service))
    try:
        yield driver
    finally:
        await anyio.to_thread.run_sync(driver.quit)


async def run(fn: Callable[[], T]) -> T:
    """selenium blocks: each call runs in a worker thread."""
    return await anyio.to_thread.run_sync(fn)


async def until(check: Callable[[], T], limit: float = 30) -> T:
    """Polls the page (another process) until `check` gives something truthy."""
    with anyio.fail_after(limit):
        while not (value := await run(check)):
            await anyio.sleep(0.05)
        return value


def _serve(config: Path, port: int, *extra: str) -> list[str]:
    serve = [sys.executable, "-m", "circuitbox", "serve", "--config", str(config), "--transport", "http"]
    return [*serve, "--port", str(port), *extra]


# The page rebuilds its rows on every event: each look at them is one script, so no row goes stale halfway.
_STATE_OF = """
for (const row of document.querySelectorAll('#breakers tbody tr')) {
  if (row.cells[1].textContent === arguments[0]) return row.cells[2].textContent;
}
return null;
"""
_VISIBLE_ROWS = (
    "return [...document.querySelectorAll('#breakers tbody tr')].filter(r => !r.hidden).map(r => r.innerText)"
)


def _state_of(driver: Any, tool: str) -> str | None:
    state = driver.execute_script(_STATE_OF, tool)
    return None if state is None else str(state)


def _artifact(driver: Any, name: str) -> Path:
    folder = Path(os.environ.get("CIRCUITBOX_TEST_ARTIFACTS", REPO / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    driver.save_screenshot(str(path))
    if os.environ.get("CIRCUITBOX_UPDATE_DOCS") == "1":
        shutil.copyfile(path, REPO / "docs" / name)
    return path


def _requested_urls(driver: Any) -> list[str]:
    import json

    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


async def test_the_page_follows_a_breaker_open_and_closed_live_and_its_reset_button_resets_it(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    flaky = {
        **chaos("search=healthy", "fetch=healthy", "flaky=error"),
        "breaker": {"failure_threshold": 1, "success_threshold": 1, "timeout": 1, "jitter": 0},
    }
    other = chaos("lookup=healthy", seed=2)
    config = write_config(tmp_path, {"admin": {"enabled": True}, "mcpServers": {"docs": flaky, "index": other}})
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with (
        running_process(_serve(config, port), port=port),
        streamable_http_client(f"{base}/mcp") as (read, write),
        ClientSession(read, write) as session,
        browser() as driver,
    ):
        await session.initialize()
        for name in ("docs__search", "docs__fetch", "index__lookup"):
            assert not (await session.call_tool(name, {})).is_error
        await run(lambda: driver.get(f"{base}/status"))
        await run(lambda: driver.execute_script("window.notReloaded = true"))
        await until(lambda: driver.find_element(By.ID, "live").text == "live")
        assert {await run(lambda t=t: _state_of(driver, t)) for t in ("search", "fetch", "lookup")} == {"closed"}

        # Tripped through the MCP client: the open state shows without a reload, at once.
        assert (await session.call_tool("docs__flaky", {})).is_error
        await until(lambda: _state_of(driver, "flaky") == "open", limit=2)
        assert await run(lambda: driver.execute_script("return window.notReloaded === true"))
        assert await run(lambda: driver.title) == "circuitbox: 1 open"
        summary = await run(lambda: driver.find_element(By.ID, "summary").text)
        assert summary == "4 breakers: 1 open, 0 half-open; 2 servers: 2 connected"
        colour = "return getComputedStyle(document.querySelector('tr[data-state=open] td.state')).backgroundColor"
        assert "(176, 0, 32" in await run(lambda: driver.execute_script(colour))  # red
        _artifact(driver, "status-page.png")

        # Recovery: the downstream heals, the open period ends, a probe closes the circuit; the page follows.
        control = {"action": "set", "tool": "flaky", "behaviour": "healthy"}
        assert not (await session.call_tool("docs__chaos_control", control)).is_error
        with anyio.fail_after(30):
            while (await session.call_tool("docs__flaky", {})).is_error:
                await anyio.sleep(0.1)  # the open period (1 s) runs on the proxy's clock: nothing to wait on here
        await until(lambda: _state_of(driver, "flaky") == "closed", limit=2)

        # Open again, then the reset button of its row closes it, through the admin code.
        await session.call_tool("docs__chaos_control", {**control, "behaviour": "error"})
        assert (await session.call_tool("docs__flaky", {})).is_error
        await until(lambda: _state_of(driver, "flaky") == "open")
        await run(lambda: driver.execute_script("document.querySelector('tr[data-state=open] button.reset').click()"))
        await until(lambda: _state_of(driver, "flaky") == "closed")

        # Filters: by server, in place.
        await run(lambda: driver.find_element(By.CSS_SELECTOR, '#filter-server option[value="index"]').click())
        visible = await run(lambda: driver.execute_script(_VISIBLE_ROWS))
        assert len(visible) == 1 and visible[0].split()[:3] == ["index", "lookup", "closed"], visible

        urls = await run(lambda: _requested_urls(driver))
        assert f"{base}/status/events" in urls
        assert urls and all(url.startswith(f"{base}/") for url in urls), urls


async def test_without_the_token_the_page_and_its_events_are_refused_until_signed_in(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    config = write_config(tmp_path, {"mcpServers": {"docs": chaos("search=healthy")}})
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with running_process(_serve(config, port, "--auth-token", "s3cret"), port=port), browser() as driver:
        await run(lambda: driver.get(f"{base}/status/events"))
        assert "401 Unauthorized" in await run(lambda: driver.find_element(By.TAG_NAME, "body").text)
        await run(lambda: driver.get(f"{base}/status"))
        assert await run(lambda: driver.find_elements(By.ID, "breakers")) == []
        field = await run(lambda: driver.find_element(By.NAME, "token"))
        await run(lambda: field.send_keys("wrong"))
        await run(field.submit)
        await until(lambda: "not this instance's" in driver.find_element(By.TAG_NAME, "body").text)
        field = await run(lambda: driver.find_element(By.NAME, "token"))
        await run(lambda: field.send_keys("s3cret"))
        await run(field.submit)
        await until(lambda: driver.find_elements(By.ID, "breakers"))
        assert await run(lambda: driver.current_url) == f"{base}/status"  # the token never was in a URL
        await until(lambda: driver.find_element(By.ID, "live").text == "live")  # the event stream, by the cookie
        cookies = await run(driver.get_cookies)
        assert [(c["name"], c["httpOnly"], c["sameSite"]) for c in cookies] == [("circuitbox_session", True, "Strict")]
        assert "s3cret" not in cookies[0]["value"]


async def test_the_page_reconnects_by_itself_after_circuitbox_restarts(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    config = write_config(tmp_path, {"mcpServers": {"docs": chaos("search=healthy")}})
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def live() -> str:
        return str(driver.find_element(By.ID, "live").text)

    async with browser() as driver:
        async with running_process(_serve(config, port), port=port):
            await run(lambda: driver.get(f"{base}/status"))
            await run(lambda: driver.execute_script("window.notReloaded = true"))
            await until(lambda: live() == "live")
        await until(lambda: live() == "reconnecting")
        async with running_process(_serve(config, port), port=port):
            async with streamable_http_client(f"{base}/mcp") as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                assert not (await session.call_tool("docs__search", {})).is_error
            # The new process's document arrives on the reconnected stream: its breaker, no reload.
            await until(lambda: _state_of(driver, "search") == "closed")
            assert await run(lambda: live()) == "live"
            assert await run(lambda: driver.execute_script("return window.notReloaded === true"))


_DIES = (
    "import os, sys; sys.stderr.write('using key ' + os.environ['BACKEND_KEY'] + '\\nfatal: no backend\\n'); "
    "sys.exit(3)"
)


async def test_the_page_shows_a_crash_loop_with_its_stderr_masked_and_the_cluster_link(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    secret = "k-7f3a9c-not-for-the-page"
    broken = {"command": sys.executable, "args": ["-c", _DIES], "env": {"BACKEND_KEY": secret}}
    broken["crash_loop_restarts"] = 2
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there: the replica goes on alone
    config = write_config(
        tmp_path,
        {"cluster": {"redis_url": nowhere, "group": "pagefleet"}, "mcpServers": {"broken": broken, **_docs()}},
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def server_row(name: str) -> list[str]:
        return list(driver.execute_script(_SERVER_ROW, name) or [])

    async with running_process(_serve(config, port), port=port), browser() as driver:
        await run(lambda: driver.get(f"{base}/status"))
        await until(lambda: driver.find_element(By.ID, "live").text == "live")
        # Another process dying and restarting: the page is polled until its document says crash loop.
        row = await until(lambda: (r := server_row("broken")) and r[1] == "crash_loop" and r, limit=120)
        assert int(row[3]) >= 1  # restarts
        tail = await run(lambda: driver.execute_script(_STDERR_OF, "broken"))
        assert "fatal: no backend" in tail and "using key ***" in tail
        assert secret not in await run(lambda: driver.page_source)
        fleet = await run(lambda: driver.find_element(By.ID, "cluster").text)
        assert fleet.startswith(f"cluster group 'pagefleet': Redis {nowhere} unreachable (")
        assert fleet.endswith("going on alone")
        _artifact(driver, "status-page-crash-loop.png")


def _docs() -> dict[str, Any]:
    return {"docs": chaos("search=healthy")}


_SERVER_ROW = """
for (const row of document.querySelectorAll('#servers tbody tr')) {
  if (row.cells[0].textContent === arguments[0]) return [...row.cells].map(c => c.textContent);
}
return null;
"""
_STDERR_OF = """
for (const row of document.querySelectorAll('#servers tbody tr')) {
  const pre = row.cells[0].textContent === arguments[0] && row.querySelector('details.stderr pre');
  if (pre) return pre.textContent;
}
return '';
"""
