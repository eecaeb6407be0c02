"""The status page: `/status` (HTML, a plain table readable without JavaScript), `/status.json` (the
`circuit_status` document), `/healthz` (the process answers) and `/readyz` (every enabled server connected or
given up on after its startup timeout).

An ASGI app of its own, mounted beside `/mcp` on the HTTP listener, so the router's app stays untouched.
"""

from __future__ import annotations

import html
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import anyio

from circuitbox.breakers import BreakerEvent, StateTransition

if TYPE_CHECKING:
    from circuitbox.server.proxy import Proxy

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PATHS = ("/status", "/status.json", "/status/events", "/healthz", "/readyz")
SNAPSHOT_INTERVAL = 1.0

_CSS = (
    "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}table{border-collapse:collapse;margin:1rem 0}"
    "th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}th{background:#f3f3f3}"
    ".closed{color:#176b2c}.open,.forced_open{color:#b00020;font-weight:bold}.half_open{color:#a65c00}"
)


async def status_document(proxy: Proxy) -> dict[str, Any]:
    """The same document `circuit_status` returns as `structuredContent`."""
    from circuitbox.server.own_tools import circuit_status

    result = await circuit_status(proxy, {})
    return dict(result.structured_content or {})


def readiness(proxy: Proxy) -> tuple[bool, list[str]]:
    """Ready once every enabled server's first connection attempt has ended (connected, or given up on)."""
    waiting = [name for name, d in proxy.downstreams.items() if not d.first_attempt_done.is_set()]
    return not waiting, waiting


def render_html(doc: dict[str, Any]) -> str:
    esc = html.escape
    servers = "".join(
        f'<tr><td>{esc(s["server"])}</td><td class="{esc(s["connection"])}">{esc(s["connection"])}</td>'
        f"<td>{s['tools']}</td><td>{esc(s.get('last_error') or '')}</td></tr>"
        for s in doc.get("servers", [])
    )
    breakers = "".join(
        f'<tr data-server="{esc(b["server"])}" data-state="{esc(b["state"])}"><td>{esc(b["server"])}</td>'
        f'<td>{esc(b["tool"])}</td><td class="state {esc(b["state"])}">{esc(b["state"])}</td><td>{b["calls"]}</td>'
        f"<td>{b['failure_rate']:.0%}</td><td>{esc(b.get('last_error') or '')}</td>"
        f"<td>{'' if not b.get('retry_after') else format(b['retry_after'], '.1f') + ' s'}</td></tr>"
        for b in doc.get("breakers", [])
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>circuitbox status</title>'
        f"<style>{_CSS}</style></head><body><h1>circuitbox status</h1>"
        '<h2>Servers</h2><table id="servers"><thead><tr><th>server</th><th>connection</th><th>tools</th>'
        f"<th>last error</th></tr></thead><tbody>{servers}</tbody></table>"
        '<h2>Breakers</h2><table id="breakers"><thead><tr><th>server</th><th>tool</th><th>state</th><th>calls</th>'
        "<th>failure rate</th><th>last error</th><th>next probe in</th></tr></thead>"
        f'<tbody>{breakers}</tbody></table><p id="live">not live (JavaScript off)</p>'
        f"<script>{_JS}</script></body></html>"
    )


# Live updates: each event carries the whole document; the tables are rebuilt in place. EventSource reconnects by
# itself after a restart of circuitbox.
_JS = r"""
(function(){
  var esc=function(v){var d=document.createElement('div');d.textContent=v==null?'':String(v);return d.innerHTML;};
  var live=document.getElementById('live');
  var src=new EventSource('status/events');
  src.addEventListener('status',function(e){
    var doc=JSON.parse(e.data);
    document.querySelector('#servers tbody').innerHTML=doc.servers.map(function(s){
      return '<tr><td>'+esc(s.server)+'</td><td class="'+esc(s.connection)+'">'+esc(s.connection)+'</td><td>'+
        esc(s.tools)+'</td><td>'+esc(s.last_error)+'</td></tr>';}).join('');
    document.querySelector('#breakers tbody').innerHTML=doc.breakers.map(function(b){
      return '<tr data-server="'+esc(b.server)+'" data-state="'+esc(b.state)+'"><td>'+esc(b.server)+'</td><td>'+
        esc(b.tool)+'</td><td class="state '+esc(b.state)+'">'+esc(b.state)+'</td><td>'+esc(b.calls)+'</td><td>'+
        Math.round(100*b.failure_rate)+'%</td><td>'+esc(b.last_error)+'</td><td>'+
        (b.retry_after?b.retry_after.toFixed(1)+' s':'')+'</td></tr>';}).join('');
    live.textContent='live';
  });
  src.onerror=function(){live.textContent='reconnecting';};
})();
"""


class StatusApp:
    """Serves the status routes (`PATHS`) for one proxy, over HTTP (Starlette routes hand it nothing else)."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self._changed: anyio.Event | None = None
        self._listening = False

    def _on_event(self, event: BreakerEvent) -> None:
        # Breakers fire on the event loop's thread: waking the streams is a plain Event.set().
        if isinstance(event, StateTransition) and self._changed is not None:
            changed, self._changed = self._changed, None
            changed.set()

    async def _events(self, receive: Receive, send: Send) -> None:
        """One snapshot at once, then one per transition and at least one every SNAPSHOT_INTERVAL."""
        if not self._listening:  # registered on first use only: no cost while nobody watches
            self.proxy.registry.add_listener(self._on_event)
            self._listening = True
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async with anyio.create_task_group() as tg:

            async def until_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(until_disconnect)
            while True:
                if self._changed is None:
                    self._changed = anyio.Event()
                changed = self._changed
                doc = json.dumps(await status_document(self.proxy), default=str)
                await send(
                    {
                        "type": "http.response.body",
                        "body": f"event: status\ndata: {doc}\n\n".encode(),
                        "more_body": True,
                    }
                )
                with anyio.move_on_after(SNAPSHOT_INTERVAL):
                    await changed.wait()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method", "GET") not in ("GET", "HEAD"):
            await _reply(send, 405, b"method not allowed\n", "text/plain; charset=utf-8")
            return
        path = scope.get("path", "")
        if path == "/healthz":
            await _reply(send, 200, b'{"status": "ok"}', "application/json")
        elif path == "/readyz":
            ready, waiting = readiness(self.proxy)
            body = {"ready": ready, "waiting_for": waiting}
            await _reply(send, 200 if ready else 503, json.dumps(body).encode(), "application/json")
        elif path == "/status/events":
            await self._events(receive, send)
        elif path == "/status.json":
            doc = await status_document(self.proxy)
            await _reply(send, 200, json.dumps(doc, default=str).encode(), "application/json")
        else:  # /status: mounted only on PATHS
            doc = await status_document(self.proxy)
            await _reply(send, 200, render_html(doc).encode(), "text/html; charset=utf-8")


async def _reply(send: Send, status: int, body: bytes, content_type: str) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
