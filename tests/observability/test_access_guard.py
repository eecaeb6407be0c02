"""The access guard's own logic, in memory: exact Host and Origin, the bearer token, and the status page's
sign-in (form and link) exchanged for a cookie that opens the status routes only."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from circuitbox.observability.access import (
    COOKIE,
    AccessGuard,
    Message,
    Receive,
    Scope,
    Send,
    is_loopback,
    listener_names,
    read_form,
    reply,
    session_value,
)

pytestmark = pytest.mark.anyio


async def _echo(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        return
    await reply(send, 200, f"{scope['method']} {scope['path']}".encode())


def _client(token: str | None = None, extra: tuple[str, ...] = ()) -> httpx2.AsyncClient:
    guard = AccessGuard(_echo, "127.0.0.1", 8765, token, extra)
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=guard), base_url="http://127.0.0.1:8765")


def test_the_listener_answers_to_its_own_names_with_its_own_port_only() -> None:
    hosts, origins = listener_names("::1", 9000, ["proxy.example", "other.example:8443"])
    assert {"[::1]:9000", "127.0.0.1:9000", "localhost:9000", "proxy.example", "proxy.example:9000"} <= hosts
    assert "other.example:8443" in hosts and "other.example" not in hosts
    assert {"http://127.0.0.1:9000", "https://proxy.example", "https://other.example:8443"} <= origins
    assert "https://127.0.0.1:9000" not in origins and "http://127.0.0.1:9001" not in origins
    assert listener_names("localhost", 1)[0] == {"localhost:1", "127.0.0.1:1", "[::1]:1"}
    assert is_loopback("localhost") and is_loopback("[::1]") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")


async def test_a_host_or_origin_that_only_starts_like_the_listener_is_refused() -> None:
    async with _client() as http:
        assert (await http.get("/metrics")).text == "GET /metrics"
        assert (await http.get("/metrics", headers={"Host": "127.0.0.1:8765.evil.example"})).status_code == 421
        assert (await http.get("/metrics", headers={"Host": "127.0.0.1:1"})).status_code == 421
        assert (await http.get("/healthz", headers={"Host": "evil.example"})).status_code == 421
        for origin in ("http://127.0.0.1:1.evil.example", "http://127.0.0.1:87650", "null", "https://127.0.0.1:8765"):
            assert (await http.get("/status", headers={"Origin": origin})).status_code == 403, origin
        assert (await http.post("/mcp", headers={"Origin": "http://localhost:8765"})).text == "POST /mcp"


async def test_an_extra_host_name_is_accepted_with_and_without_the_port_and_over_https() -> None:
    async with _client(extra=("proxy.example",)) as http:
        for host in ("proxy.example", "proxy.example:8765"):
            assert (await http.get("/status", headers={"Host": host})).status_code == 200
        ok = await http.get("/status", headers={"Host": "proxy.example", "Origin": "https://proxy.example"})
        assert ok.status_code == 200


async def test_with_a_token_every_route_but_healthz_needs_it() -> None:
    async with _client("s3cret") as http:
        assert (await http.get("/healthz")).status_code == 200
        for path in ("/mcp", "/metrics", "/status.json", "/status/events", "/readyz"):
            refused = await http.get(path)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer", path
            assert (await http.get(path, headers={"Authorization": "Bearer wrong"})).status_code == 401
            assert (await http.get(path, headers={"Authorization": "Bearer s3cret"})).status_code == 200


async def test_the_page_without_a_token_offers_a_sign_in_form_that_sets_a_cookie_never_holding_the_token() -> None:
    async with _client("s3cret") as http:
        page = await http.get("/status")
        assert page.status_code == 401 and '<form method="post" action="/status/login">' in page.text
        wrong = await http.post("/status/login", data={"token": "nope"})
        assert wrong.status_code == 401 and "not this instance" in wrong.text and COOKIE not in http.cookies
        assert (await http.get("/status/login")).status_code == 405
        signed_in = await http.post("/status/login", data={"token": "s3cret"})
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/status"
        cookie = signed_in.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "s3cret" not in cookie
        assert http.cookies[COOKIE] == session_value("s3cret")
        for path in ("/status", "/status.json", "/status/events"):
            assert (await http.get(path)).status_code == 200, path
        # The cookie opens the status routes only: a page cannot use it to drive /mcp or read /metrics.
        assert (await http.get("/metrics")).status_code == 401
        assert (await http.post("/mcp")).status_code == 401


async def test_a_link_with_the_token_is_exchanged_for_the_cookie_and_redirected_without_it() -> None:
    async with _client("s3cret") as http:
        link = await http.get("/status", params={"token": "s3cret", "state": "open"})
        assert link.status_code == 303 and link.headers["location"] == "/status?state=open"
        assert link.headers["referrer-policy"] == "same-origin" and COOKIE in http.cookies
        http.cookies.clear()
        bare = await http.get("/status", params={"token": "s3cret"})
        assert bare.headers["location"] == "/status"
        http.cookies.clear()
        bad = await http.get("/status", params={"token": "nope"})
        assert bad.status_code == 401 and COOKIE not in http.cookies


async def test_a_form_too_large_or_cut_short_is_no_form() -> None:
    async def messages(*items: Message) -> Any:
        queue = list(items)

        async def receive() -> Message:
            return queue.pop(0)

        return receive

    big = await messages({"type": "http.request", "body": b"a=" + b"x" * 5000})
    assert await read_form(big) is None
    gone = await messages({"type": "http.request", "body": b"a=1", "more_body": True}, {"type": "http.disconnect"})
    assert await read_form(gone) is None
    two = await messages(
        {"type": "http.request", "body": b"a=1&", "more_body": True}, {"type": "http.request", "body": b"a=2"}
    )
    assert await read_form(two) == {"a": "1"}


async def test_lifespan_messages_pass_through_the_guard() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def nothing() -> Message:
        return {}

    async def drop(message: Message) -> None:
        return None

    await AccessGuard(app, "127.0.0.1", 1)({"type": "lifespan"}, nothing, drop)
    assert seen == ["lifespan"]
