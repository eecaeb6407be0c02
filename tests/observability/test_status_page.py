"""The status routes on a real HTTP proxy: the page as a plain table, the circuit_status document, health and
readiness, and the token on every route but /healthz."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from circuitbox.server.transports import http_client as create_mcp_http_client
from tests.net import free_port, wait_for_port
from tests.proxy.harness import chaos, proxy_session, running_process, write_config

pytestmark = pytest.mark.anyio


def _serve(config: Path, port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "circuitbox",
        "serve",
        "--config",
        str(config),
        "--transport",
        "http",
        "--port",
        str(port),
        *extra,
    ]


async def test_the_status_routes_show_every_breaker_and_need_the_token_but_healthz(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"mcpServers": {"c": chaos("echo=healthy")}})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": "Bearer s3cret"}
    async with running_process(_serve(config, port, "--auth-token", "s3cret"), port=port):
        async with (
            create_mcp_http_client(headers=auth) as http_client,
            streamable_http_client(f"{url}/mcp", http_client=http_client) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            assert not (await session.call_tool("c__echo", {"message": "hi"})).is_error
        async with httpx2.AsyncClient() as http:
            assert (await http.get(f"{url}/healthz")).status_code == 200
            for path in ("/status", "/status.json", "/readyz"):
                assert (await http.get(f"{url}{path}")).status_code == 401
            with anyio.fail_after(30):
                while (ready := await http.get(f"{url}/readyz", headers=auth)).status_code != 200:
                    assert ready.json()["ready"] is False
                    await anyio.sleep(0.05)
            doc = (await http.get(f"{url}/status.json", headers=auth)).json()
            assert [(b["server"], b["tool"], b["state"]) for b in doc["breakers"]] == [("c", "echo", "closed")]
            assert doc["servers"][0]["connection"] == "connected"
            page = await http.get(f"{url}/status", headers=auth)
            assert page.headers["content-type"].startswith("text/html")
            assert "<td>echo</td>" in page.text and 'class="state closed"' in page.text
            assert (await http.post(f"{url}/status", headers=auth)).status_code == 405


async def test_the_event_stream_sends_a_snapshot_at_once_and_the_transition_a_tripped_call_causes(
    tmp_path: Path,
) -> None:
    server = {**chaos("ok=healthy", "bad=error"), "breaker": {"failure_threshold": 1, "timeout": 600}}
    config = write_config(tmp_path, {"mcpServers": {"c": server}})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with (
        running_process(_serve(config, port), port=port),
        httpx2.AsyncClient(timeout=None) as http,
        http.stream("GET", f"{url}/status/events") as events,
    ):
        assert events.headers["content-type"].startswith("text/event-stream")
        lines = events.aiter_lines()

        async def next_document() -> dict[str, Any]:
            while not (line := await anext(lines)).startswith("data: "):
                pass
            return dict(json.loads(line.removeprefix("data: ")))

        with anyio.fail_after(30):
            first = await next_document()
            assert first["breakers"] == []
            async with (
                streamable_http_client(f"{url}/mcp") as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                assert (await session.call_tool("c__bad", {})).is_error
            while not any(b["tool"] == "bad" and b["state"] == "open" for b in (await next_document())["breakers"]):
                pass


async def test_every_route_of_the_http_listener_checks_host_and_origin_exactly(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"mcpServers": {"c": chaos("echo=healthy")}})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    mcp_headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    async with running_process(_serve(config, port), port=port), httpx2.AsyncClient() as http:
        for path in ("/metrics", "/status", "/status.json", "/healthz", "/readyz"):
            assert (await http.get(f"{url}{path}", headers={"Origin": url})).status_code in (200, 503), path
            evil = await http.get(f"{url}{path}", headers={"Origin": f"http://127.0.0.1:{port}.evil.example"})
            assert evil.status_code == 403, path
            assert (
                await http.get(f"{url}{path}", headers={"Host": f"127.0.0.1:{port}.evil.example"})
            ).status_code == 421
            assert (await http.get(f"{url}{path}", headers={"Host": "localhost:1"})).status_code == 421
        # The SDK alone would accept this one: it matches the Origin's port by prefix.
        prefixed = await http.post(
            f"{url}/mcp", json=ping, headers={**mcp_headers, "Origin": "http://127.0.0.1:1.evil.example"}
        )
        assert prefixed.status_code == 403
        rebound = await http.post(f"{url}/mcp", json=ping, headers={**mcp_headers, "Host": "evil.example"})
        assert rebound.status_code == 421
        fine = await http.post(f"{url}/mcp", json=ping, headers={**mcp_headers, "Origin": f"http://localhost:{port}"})
        assert fine.status_code != 403 and fine.status_code != 421


async def test_the_page_shows_latency_filters_without_javascript_and_allows_no_other_source(tmp_path: Path) -> None:
    server = {**chaos("ok=healthy", "bad=error"), "breaker": {"failure_threshold": 1, "timeout": 600}}
    broken = {"command": sys.executable, "args": ["-c", "raise SystemExit(3)"]}
    config = write_config(tmp_path, {"mcpServers": {"c": server, "broken": broken}})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with running_process(_serve(config, port), port=port):
        async with streamable_http_client(f"{url}/mcp") as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            assert not (await session.call_tool("c__ok", {})).is_error
            assert (await session.call_tool("c__bad", {})).is_error
        async with httpx2.AsyncClient() as http:
            page = await http.get(f"{url}/status")
            csp = page.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
            assert " ms</td>" in page.text  # p50 / p99 of the calls made
            assert 'class="state open">open</td>' in page.text and "<th>admin</th>" not in page.text
            only_open = await http.get(f"{url}/status", params={"state": "open"})
            assert '<tr data-server="c" data-state="closed" hidden>' in only_open.text
            assert '<tr data-server="c" data-state="open">' in only_open.text
            assert '<option value="open" selected>' in only_open.text
            assert "<title>circuitbox: 1 open</title>" in page.text
            assert '<p id="summary">2 breakers: 1 open, 0 half-open; 2 servers: 1 connected, 1 not</p>' in page.text
            refused = await http.post(f"{url}/status/admin", data={"action": "reset"})
            assert refused.status_code == 403 and "admin is not enabled" in refused.text
            assert (await http.get(f"{url}/status/admin")).status_code == 405
            assert (await http.post(f"{url}/status.json")).status_code == 405
            assert (await http.get(f"{url}/status/login")).status_code == 404  # no token: nothing to sign in with


async def test_the_admin_buttons_reset_and_force_through_the_audited_admin_code(tmp_path: Path) -> None:
    server = {**chaos("ok=healthy", "bad=error"), "breaker": {"failure_threshold": 1, "timeout": 600}}
    config = write_config(tmp_path, {"admin": {"enabled": True}, "mcpServers": {"c": server}})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with log.open("w") as errlog:
        process = await anyio.open_process(_serve(config, port), stderr=errlog)
    async with process:
        try:
            await wait_for_port(port)
            async with streamable_http_client(f"{url}/mcp") as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                assert (await session.call_tool("c__bad", {})).is_error
            async with httpx2.AsyncClient(base_url=url) as http:
                page = (await http.get("/status")).text
                csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
                button = {"server": "c", "tool": "bad", "csrf": csrf}
                assert (await http.post("/status/admin", data={**button, "csrf": "forged"})).status_code == 403
                assert (await http.post("/status/admin", data={**button, "action": "explode"})).status_code == 400
                bad_state = await http.post("/status/admin", data={**button, "action": "force", "state": "purple"})
                assert bad_state.status_code == 400 and "state must be one of" in bad_state.text
                reset = await http.post("/status/admin", data={**button, "action": "reset"})
                assert reset.status_code == 303 and reset.headers["location"] == "/status"
                states = {b["tool"]: b["state"] for b in (await http.get("/status.json")).json()["breakers"]}
                assert states["bad"] == "closed"
                forced = await http.post("/status/admin", data={**button, "action": "force", "state": "open"})
                assert forced.status_code == 303
                states = {b["tool"]: b["state"] for b in (await http.get("/status.json")).json()["breakers"]}
                assert states["bad"] == "forced_open"
                foreign = await http.post(
                    "/status/admin", data={**button, "action": "reset"}, headers={"Origin": "http://evil.example"}
                )
                assert foreign.status_code == 403
        finally:
            process.terminate()
            with anyio.fail_after(30):
                await process.wait()
    audit = log.read_text()
    assert "admin reset: c/bad open -> closed" in audit and "admin force: c/bad closed -> forced_open" in audit


async def test_in_stdio_mode_the_metrics_port_serves_the_status_routes_and_prints_their_url(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "proxy.log"
    url = f"http://127.0.0.1:{port}"
    config = {"mcpServers": {"c": chaos("echo=healthy")}}
    with log.open("w") as errlog:
        args = ["--metrics-port", str(port), "--auth-token", "s3cret"]
        async with proxy_session(tmp_path, config, extra_args=args, errlog=errlog) as session:
            with anyio.fail_after(30):
                while f"circuitbox status page: {url}/status" not in log.read_text():
                    await anyio.sleep(0.05)  # the child's stderr file: nothing to wait on instead
            assert not (await session.call_tool("c__echo", {"message": "hi"})).is_error
            auth = {"Authorization": "Bearer s3cret"}
            async with httpx2.AsyncClient(base_url=url) as http:
                assert (await http.get("/healthz")).status_code == 200
                assert (await http.get("/readyz")).status_code == 401
                ready = await http.get("/readyz", headers=auth)
                assert ready.status_code == 200 and ready.json() == {"ready": True, "waiting_for": []}
                assert (
                    'circuit_breaker_state{server="c",tool="echo"} 0.0'
                    in (await http.get("/metrics", headers=auth)).text
                )
                assert (await http.get("/status")).status_code == 401
                assert "<td>echo</td>" in (await http.get("/status", headers=auth)).text
                assert (await http.get("/status", headers={**auth, "Host": "evil.example"})).status_code == 421
                assert (await http.get("/nowhere", headers=auth)).status_code == 404
            done = await anyio.run_process(
                [sys.executable, "-m", "circuitbox", "status", "--url", url, "--auth-token", "s3cret"], check=False
            )
            assert done.returncode == 0, done.stderr.decode()
            assert "connected" in done.stdout.decode() and "echo" in done.stdout.decode()


async def test_a_metrics_port_off_loopback_without_a_token_stays_closed(tmp_path: Path) -> None:
    log = tmp_path / "proxy.log"
    config = {"metrics": {"port": free_port(), "host": "0.0.0.0"}, "mcpServers": {"c": chaos("echo=healthy")}}
    with log.open("w") as errlog:
        async with proxy_session(tmp_path, config, errlog=errlog) as session:
            with anyio.fail_after(30):
                while "metrics endpoint disabled: it would listen on 0.0.0.0 without a token" not in log.read_text():
                    await anyio.sleep(0.05)
            assert not (await session.call_tool("c__echo", {"message": "hi"})).is_error


def test_without_javascript_the_page_shows_a_crash_loops_stderr_escaped_and_the_cluster_link() -> None:
    from circuitbox.observability.status_page import cluster_line, render_html

    cluster = {"group": "g", "redis_url": "redis://127.0.0.1:1/0", "connected": True, "replicas": 3}
    crashing = {"server": "b", "connection": "crash_loop", "tools": 0, "restarts": 4, "last_error": "exited 3"}
    doc = {
        "servers": [{**crashing, "stderr_tail": ["<script>x</script>", "fatal: key ***"]}],
        "breakers": [],
        "cluster_line": cluster_line(cluster),
    }
    page = render_html(doc)
    assert '<td class="num">4</td><td>exited 3<details class="stderr">' in page
    assert "<pre>&lt;script&gt;x&lt;/script&gt;\nfatal: key ***</pre>" in page
    assert '<p id="cluster">cluster group &#x27;g&#x27;: connected to redis://127.0.0.1:1/0, 3 replicas</p>' in page
    alone = render_html({"servers": [{**crashing, "last_error": None}], "breakers": []})
    assert '<p id="cluster" hidden>' in alone and "<details" not in alone.split("<script")[0]
