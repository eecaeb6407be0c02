"""Who may use the HTTP routes: one ASGI middleware in front of every route (`/mcp`, `/metrics`, `/status*`,
`/healthz`, `/readyz`) of the HTTP listener and of stdio mode's metrics port.

- Host and Origin are compared exactly against the listener's own names (DNS-rebinding protection, loopback
  included): `Host: 127.0.0.1:8765` passes on port 8765, `127.0.0.1:1.evil.example` and any other port do not.
  A wrong Host gets 421, a wrong Origin 403. A request without Origin (curl, Prometheus, SDK clients) is fine:
  browsers always send one on the requests a rebinding page could make (fetch, forms, EventSource).
- With a token, every route but `/healthz` needs `Authorization: Bearer <token>` (401 otherwise). A browser cannot
  put that header on a page load or an EventSource, so the status routes also take a session cookie: the token is
  posted once through the page's login form (or `/status?token=...` for a bookmarked link, answered at once with a
  redirect to the URL without it), exchanged for an HttpOnly, SameSite=Strict cookie holding an HMAC of the token,
  never the token itself. The cookie opens `/status*` only, never `/mcp` or `/metrics`.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "circuitbox_session"
LOGIN_PATH = "/status/login"
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
_MAX_FORM = 4096


def _bracketed(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host.strip("[]")).version == 6 else host
    except ValueError:
        return host


def is_loopback(host: str) -> bool:
    """Whether a listen address is reachable from this machine only."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listener_names(host: str, port: int, extra_hosts: Iterable[str] = ()) -> tuple[frozenset[str], frozenset[str]]:
    """The Host values and Origins a listener on `host:port` answers to.

    Its own address and the loopback names with its port; each `--allowed-host` NAME (a name a reverse proxy or a
    DNS entry uses) with the port, and without one (a proxy in front on the default port); `NAME:PORT` as given.
    Origins are `http://` + each of those, and `https://` for the extra names (TLS ends in front of circuitbox).
    """
    own = {f"{name}:{port}" for name in {_bracketed(host), *_LOOPBACK_NAMES}}
    extra: set[str] = set()
    for name in extra_hosts:
        if name.rsplit(":", 1)[-1].isdigit() and not name.endswith("]"):
            extra.add(name)
        else:
            extra |= {name, f"{name}:{port}"}
    origins = {f"http://{h}" for h in own | extra} | {f"https://{h}" for h in extra}
    return frozenset(own | extra), frozenset(origins)


def session_value(token: str) -> str:
    """The cookie's value: a keyed digest of the token, so the cookie jar never holds the token itself."""
    return hmac.new(token.encode(), b"circuitbox status page session", hashlib.sha256).hexdigest()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _cookie(scope: Scope, name: str) -> str | None:
    for part in (_header(scope, b"cookie") or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


async def reply(
    send: Send, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8", headers: Iterable[Any] = ()
) -> None:
    """A whole response at once, never cached (status pages and refusals alike)."""
    head = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


_LOGIN = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>circuitbox status: sign in</title></head>'
    "<body><h1>circuitbox status</h1><p>{message}</p>"
    f'<form method="post" action="{LOGIN_PATH}"><label>Bearer token <input type="password" name="token" '
    'autocomplete="current-password" autofocus></label> <button type="submit">Open the status page</button></form>'
    "</body></html>"
)


class AccessGuard:
    """ASGI middleware: exact Host and Origin on every request, then the bearer token (or the status cookie)."""

    def __init__(
        self, app: ASGIApp, host: str, port: int, token: str | None = None, extra_hosts: Iterable[str] = ()
    ) -> None:
        self.app = app
        self.token = token
        self.hosts, self.origins = listener_names(host, port, extra_hosts)
        self._bearer = f"Bearer {token}".encode() if token else b""
        self._session = session_value(token) if token else ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: the app's own business
            await self.app(scope, receive, send)
            return
        if _header(scope, b"host") not in self.hosts:
            await reply(
                send,
                421,
                b"421 Misdirected Request: this Host is not a name of this listener (start circuitbox with "
                b"--allowed-host NAME for each name its clients use)\n",
            )
            return
        origin = _header(scope, b"origin")
        if origin is not None and origin not in self.origins:
            await reply(send, 403, b"403 Forbidden: requests from another origin are refused\n")
            return
        path = scope.get("path", "")
        if self.token is None or path == "/healthz":
            await self.app(scope, receive, send)
            return
        status_route = path in ("/status", "/status.json") or path.startswith("/status/")
        if status_route and path == LOGIN_PATH:
            await self._login(scope, receive, send)
            return
        if status_route and path == "/status" and "token" in dict(parse_qsl(_query(scope))):
            await self._exchange_link(scope, send)
            return
        if self._authorized(scope, cookie_ok=status_route):
            await self.app(scope, receive, send)
            return
        if status_route and path == "/status":
            page = _LOGIN.format(message="This instance needs its bearer token.").encode()
            await reply(send, 401, page, "text/html; charset=utf-8", [(b"www-authenticate", b"Bearer")])
            return
        await reply(
            send,
            401,
            b"401 Unauthorized: a valid bearer token is required\n",
            headers=[(b"www-authenticate", b"Bearer")],
        )

    def _authorized(self, scope: Scope, *, cookie_ok: bool) -> bool:
        given = (_header(scope, b"authorization") or "").encode("latin-1")
        if given and hmac.compare_digest(given, self._bearer):
            return True
        cookie = _cookie(scope, COOKIE) if cookie_ok else None
        return cookie is not None and hmac.compare_digest(cookie.encode("latin-1"), self._session.encode())

    def _right(self, token: str) -> bool:
        assert self.token is not None
        return hmac.compare_digest(token.strip().encode(), self.token.encode())

    def _signed_in(self, location: str) -> list[tuple[bytes, bytes]]:
        # Not Secure: the loopback page is plain http. Path=/ (a Path=/status cookie would miss /status.json); the
        # guard itself ignores it outside the status routes.
        cookie = f"{COOKIE}={self._session}; Path=/; HttpOnly; SameSite=Strict"
        return [
            (b"set-cookie", cookie.encode()),
            (b"location", location.encode()),
            (b"referrer-policy", b"same-origin"),
        ]

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") != "POST":
            await reply(send, 405, b"405 Method Not Allowed: post the token from the form on /status\n")
            return
        form = await read_form(receive)
        if form is not None and self._right(form.get("token", "")):
            await reply(send, 303, b"", headers=self._signed_in("/status"))
            return
        page = _LOGIN.format(message=html.escape("That token is not this instance's.")).encode()
        await reply(send, 401, page, "text/html; charset=utf-8", [(b"www-authenticate", b"Bearer")])

    async def _exchange_link(self, scope: Scope, send: Send) -> None:
        # The token leaves the address bar at once: a redirect to the same query without it.
        query = parse_qsl(_query(scope))
        rest = urlencode([(k, v) for k, v in query if k != "token"])
        if self._right(dict(query)["token"]):
            await reply(send, 303, b"", headers=self._signed_in("/status" + (f"?{rest}" if rest else "")))
            return
        page = _LOGIN.format(message="The token in that link is not this instance's.").encode()
        await reply(
            send,
            401,
            page,
            "text/html; charset=utf-8",
            [(b"www-authenticate", b"Bearer"), (b"referrer-policy", b"same-origin")],
        )


def _query(scope: Scope) -> str:
    return bytes(scope.get("query_string", b"")).decode("latin-1")


async def read_form(receive: Receive) -> dict[str, str] | None:
    """An urlencoded form body (the first value of each field), or None when it is larger than a form can be."""
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        body += message.get("body", b"")
        if len(body) > _MAX_FORM:
            return None
        if not message.get("more_body", False):
            break
    fields: dict[str, str] = {}
    for key, value in parse_qsl(body.decode("utf-8", "replace")):
        fields.setdefault(key, value)
    return fields
