"""The status page: `/status` (HTML, plain tables readable without JavaScript), `/status.json` (the
`circuit_status` document), `/status/events` (server-sent events feeding the page), `/status/admin` (the reset and
force buttons, with `admin.enabled`), `/healthz` (the process answers) and `/readyz` (every enabled server connected
or given up on after its startup timeout).

An ASGI app of its own, mounted beside `/mcp` on the HTTP listener and alone on stdio mode's metrics port, behind
`circuitbox.observability.access.AccessGuard` (Host, Origin, token). Nothing is loaded from anywhere else: the CSS
and the script are inline, allowed by a per-response nonce in a Content-Security-Policy that forbids every other
source, so the page cannot make a request to another host.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import anyio

from circuitbox.breakers import BreakerEvent, StateTransition
from circuitbox.observability.access import read_form, reply

if TYPE_CHECKING:
    from circuitbox.server.proxy import Proxy

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PATHS = ("/status", "/status.json", "/status/events", "/status/admin", "/status/login", "/healthz", "/readyz")
SNAPSHOT_INTERVAL = 1.0
STATES = ("closed", "open", "half_open", "forced_open", "disabled", "metrics_only")
FORCE_CHOICES = ("open", "disabled", "metrics_only", "auto")

_CSS = (
    "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}table{border-collapse:collapse;margin:1rem 0}"
    "th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}th{background:#f3f3f3}"
    "td.num{text-align:right}td.num,td.admin{white-space:nowrap}.state{font-weight:bold;border-radius:.3rem}"
    ".closed,.connected{color:#176b2c}.open,.forced_open,.down,.crash_loop{color:#fff;background:#b00020}"
    ".half_open,.starting,.restarting{color:#5c3b00;background:#ffd27a}.disabled,.metrics_only{color:#444;"
    "background:#ddd}form.inline{display:inline;margin:0 .2rem}#live{color:#666}details.stderr pre{margin:.3rem 0;"
    "max-width:60rem;overflow-x:auto;font-size:.85em}"
)


async def status_document(proxy: Proxy) -> dict[str, Any]:
    """The same document `circuit_status` returns as `structuredContent`."""
    from circuitbox.server.own_tools import circuit_status

    result = await circuit_status(proxy, {})
    return dict(result.structured_content or {})


async def page_document(proxy: Proxy) -> dict[str, Any]:
    """The status document plus what only the page shows: each breaker's recent p50/p99 in seconds, and the
    replica's link to its fleet as a line."""
    doc = await status_document(proxy)
    for row in doc.get("breakers", []):
        latency = proxy.tool_stats(row["server"], row["tool"]).get("latency_seconds", {})
        row["p50"], row["p99"] = latency.get("p50"), latency.get("p99")
    if doc.get("cluster") is not None:
        doc["cluster_line"] = cluster_line(doc["cluster"])
    return doc


def cluster_line(cluster: dict[str, Any]) -> str:
    """A replica's link to its fleet in a line (`circuitbox status` and the status page both show it)."""
    link = (
        f"connected to {cluster['redis_url']}, {cluster['replicas']} replicas"
        if cluster["connected"]
        else f"Redis {cluster['redis_url']} unreachable ({cluster.get('last_error')}): going on alone"
    )
    return f"group {cluster['group']!r}: {link}"


def readiness(proxy: Proxy) -> tuple[bool, list[str]]:
    """Ready once every enabled server's first connection attempt has ended (connected, or given up on)."""
    waiting = [name for name, d in proxy.downstreams.items() if not d.first_attempt_done.is_set()]
    return not waiting, waiting


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1000:.0f} ms"


def _select(name: str, options: list[str], chosen: str | None, label: str) -> str:
    esc = html.escape
    items = "".join(
        f'<option value="{esc(o)}"{" selected" if o == chosen else ""}>{esc(o or "all")}</option>'
        for o in ["", *options]
    )
    return f'<label>{label} <select name="{name}" id="filter-{name}">{items}</select></label> '


def _admin_forms(server: str, tool: str, csrf: str) -> str:
    esc = html.escape
    hidden = (
        f'<input type="hidden" name="server" value="{esc(server)}">'
        f'<input type="hidden" name="tool" value="{esc(tool)}">'
        f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
    )
    choices = "".join(f'<option value="{c}">{c}</option>' for c in FORCE_CHOICES)
    return (
        f'<form class="inline" method="post" action="/status/admin">{hidden}<input type="hidden" name="action" '
        f'value="reset"><button type="submit" class="reset">reset</button></form>'
        f'<form class="inline" method="post" action="/status/admin">{hidden}<input type="hidden" name="action" '
        f'value="force"><select name="state">{choices}</select>'
        '<button type="submit" class="force">force</button></form>'
    )


def render_html(
    doc: dict[str, Any],
    *,
    server: str | None = None,
    state: str | None = None,
    csrf: str | None = None,
    nonce: str = "",
) -> str:
    """The whole page. `server` / `state` filter the breakers (the no-JavaScript filter form); `csrf` adds the
    admin buttons."""
    esc = html.escape
    servers = "".join(
        f'<tr><td>{esc(s["server"])}</td><td class="state {esc(s["connection"])}">{esc(s["connection"])}</td>'
        f'<td class="num">{s["tools"]}</td><td class="num">{s.get("restarts", 0)}</td>'
        f"<td>{esc(s.get('last_error') or '')}{_stderr_tail(s)}</td></tr>"
        for s in doc.get("servers", [])
    )
    fleet = doc.get("cluster_line")
    rows = []
    for b in doc.get("breakers", []):
        hidden = (server and b["server"] != server) or (state and b["state"] != state)
        retry = b.get("retry_after")
        rows.append(
            f'<tr data-server="{esc(b["server"])}" data-state="{esc(b["state"])}"{" hidden" if hidden else ""}>'
            f"<td>{esc(b['server'])}</td><td>{esc(b['tool'])}</td>"
            f'<td class="state {esc(b["state"])}">{esc(b["state"])}</td><td class="num">{b["calls"]}</td>'
            f'<td class="num">{b["failure_rate"]:.0%}</td><td class="num">{_ms(b.get("p50"))}</td>'
            f'<td class="num">{_ms(b.get("p99"))}</td><td>{esc(b.get("last_error") or "")}</td>'
            f'<td class="num probe" data-retry="{retry or 0}">{"" if not retry else format(retry, ".1f") + " s"}</td>'
            + (f'<td class="admin">{_admin_forms(b["server"], b["tool"], csrf)}</td>' if csrf else "")
            + "</tr>"
        )
    names = sorted({s["server"] for s in doc.get("servers", [])} | {b["server"] for b in doc.get("breakers", [])})
    admin_head = "<th>admin</th>" if csrf else ""
    settings = {"csrf": csrf or ""}
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_title(doc)}</title>'
        f'<meta name="viewport" content="width=device-width"><style nonce="{nonce}">{_CSS}</style></head><body>'
        f'<h1>circuitbox status</h1><p id="summary">{_summary(doc)}</p>'
        f'<p id="cluster"{"" if fleet else " hidden"}>cluster {esc(fleet or "")}</p>'
        '<h2>Servers</h2><table id="servers"><thead><tr><th>server</th><th>connection</th>'
        f"<th>tools</th><th>restarts</th><th>last error</th></tr></thead><tbody>{servers}</tbody></table>"
        '<h2>Breakers</h2><form method="get" action="/status" id="filters">'
        + _select("server", names, server, "server")
        + _select("state", list(STATES), state, "state")
        + '<button type="submit">filter</button></form>'
        '<table id="breakers"><thead><tr><th>server</th><th>tool</th><th>state</th><th>calls</th><th>failure rate</th>'
        f"<th>p50</th><th>p99</th><th>last error</th><th>next probe in</th>{admin_head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        + ("" if rows else '<p id="empty">No tool has been called yet, so no breaker exists yet.</p>')
        + '<p id="live">not live (JavaScript off): reload for fresh numbers</p>'
        f'<script nonce="{nonce}" id="settings" type="application/json">{_json_html(settings)}</script>'
        f'<script nonce="{nonce}">{_JS}</script></body></html>'
    )


_OPEN_STATES = ("open", "forced_open")


def _stderr_tail(server: dict[str, Any]) -> str:
    """A crash-looping server's last stderr lines (masked before they got here), folded under its last error."""
    tail = server.get("stderr_tail")
    if not tail:
        return ""
    return f'<details class="stderr"><summary>stderr</summary><pre>{html.escape(chr(10).join(tail))}</pre></details>'


def _summary(doc: dict[str, Any]) -> str:
    """One line an operator reads first: how many circuits are open or probing, how many servers are not up."""
    breakers, servers = doc.get("breakers", []), doc.get("servers", [])
    opened = sum(1 for b in breakers if b["state"] in _OPEN_STATES)
    probing = sum(1 for b in breakers if b["state"] == "half_open")
    down = sum(1 for s in servers if s["connection"] != "connected")
    return (
        f"{_count(len(breakers), 'breaker')}: {opened} open, {probing} half-open; "
        f"{_count(len(servers), 'server')}: {len(servers) - down} connected" + (f", {down} not" if down else "")
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _title(doc: dict[str, Any]) -> str:
    opened = sum(1 for b in doc.get("breakers", []) if b["state"] in _OPEN_STATES)
    return f"circuitbox: {opened} open" if opened else "circuitbox: all closed"


def _json_html(value: Any) -> str:
    return json.dumps(value).replace("<", "\\u003c")


# Live updates: each event carries the whole document; the tables are rebuilt in place, the filters applied, and
# the countdowns run from the moment the document arrived. EventSource reconnects by itself after a restart.
_JS = r"""
(function(){
  var esc=function(v){var d=document.createElement('div');d.textContent=v==null?'':String(v);return d.innerHTML;};
  var ms=function(s){return s==null?'':Math.round(1000*s)+' ms';};
  var settings=JSON.parse(document.getElementById('settings').textContent);
  var live=document.getElementById('live'), fs=document.getElementById('filter-server'),
      fst=document.getElementById('filter-state'), received=Date.now();
  var admin=function(b){
    if(!settings.csrf)return '';
    var h='<input type="hidden" name="server" value="'+esc(b.server)+'"><input type="hidden" name="tool" value="'+
      esc(b.tool)+'"><input type="hidden" name="csrf" value="'+esc(settings.csrf)+'">';
    return '<td class="admin"><form class="inline" method="post" action="/status/admin">'+h+
      '<input type="hidden" name="action" value="reset"><button type="submit" class="reset">reset</button></form>'+
      '<form class="inline" method="post" action="/status/admin">'+h+
      '<input type="hidden" name="action" value="force"><select name="state">'+
      ['open','disabled','metrics_only','auto'].map(function(c){return '<option value="'+c+'">'+c+'</option>';})
      .join('')+'</select><button type="submit" class="force">force</button></form></td>';
  };
  var filter=function(){
    document.querySelectorAll('#breakers tbody tr').forEach(function(r){
      r.hidden=(fs.value&&r.dataset.server!==fs.value)||(fst.value&&r.dataset.state!==fst.value);});
  };
  var tick=function(){
    var gone=(Date.now()-received)/1000;
    document.querySelectorAll('#breakers td.probe').forEach(function(td){
      var left=parseFloat(td.dataset.retry)-gone;
      td.textContent=parseFloat(td.dataset.retry)>0?Math.max(0,left).toFixed(1)+' s':'';});
  };
  fs.addEventListener('change',filter); fst.addEventListener('change',filter);
  var src=new EventSource('/status/events');
  src.addEventListener('status',function(e){
    var doc=JSON.parse(e.data); received=Date.now(); if(doc.csrf)settings.csrf=doc.csrf;
    document.querySelector('#servers tbody').innerHTML=doc.servers.map(function(s){
      var tail=s.stderr_tail&&s.stderr_tail.length?'<details class="stderr"><summary>stderr</summary><pre>'+
        esc(s.stderr_tail.join('\n'))+'</pre></details>':'';
      return '<tr><td>'+esc(s.server)+'</td><td class="state '+esc(s.connection)+'">'+esc(s.connection)+
        '</td><td class="num">'+esc(s.tools)+'</td><td class="num">'+esc(s.restarts||0)+'</td><td>'+
        esc(s.last_error)+tail+'</td></tr>';}).join('');
    var fleet=document.getElementById('cluster');
    fleet.hidden=!doc.cluster_line; fleet.textContent=doc.cluster_line?'cluster '+doc.cluster_line:'';
    document.querySelector('#breakers tbody').innerHTML=doc.breakers.map(function(b){
      return '<tr data-server="'+esc(b.server)+'" data-state="'+esc(b.state)+'"><td>'+esc(b.server)+'</td><td>'+
        esc(b.tool)+'</td><td class="state '+esc(b.state)+'">'+esc(b.state)+'</td><td class="num">'+esc(b.calls)+
        '</td><td class="num">'+Math.round(100*b.failure_rate)+'%</td><td class="num">'+ms(b.p50)+
        '</td><td class="num">'+ms(b.p99)+'</td><td>'+esc(b.last_error)+'</td><td class="num probe" data-retry="'+
        esc(b.retry_after||0)+'"></td>'+admin(b)+'</tr>';}).join('');
    var empty=document.getElementById('empty'); if(empty)empty.hidden=doc.breakers.length>0;
    var known=Array.prototype.map.call(fs.options,function(o){return o.value;});
    doc.servers.forEach(function(s){if(known.indexOf(s.server)<0){
      var o=document.createElement('option');o.value=o.textContent=s.server;fs.appendChild(o);}});
    var open=doc.breakers.filter(function(b){return b.state==='open'||b.state==='forced_open';}).length,
        probing=doc.breakers.filter(function(b){return b.state==='half_open';}).length,
        down=doc.servers.filter(function(s){return s.connection!=='connected';}).length;
    var count=function(n,noun){return n+' '+noun+(n===1?'':'s');};
    document.getElementById('summary').textContent=count(doc.breakers.length,'breaker')+': '+open+' open, '+
      probing+' half-open; '+count(doc.servers.length,'server')+': '+(doc.servers.length-down)+' connected'+
      (down?', '+down+' not':'');
    document.title=open?'circuitbox: '+open+' open':'circuitbox: all closed';
    filter(); tick(); live.textContent='live';
  });
  src.onerror=function(){live.textContent='reconnecting';};
  setInterval(tick,250);
})();
"""


def _csp(nonce: str) -> bytes:
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ).encode()


class StatusApp:
    """Serves the status routes (`PATHS`) for one proxy (Starlette routes hand it nothing else)."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self._changed: anyio.Event | None = None
        self._listening = False
        self._csrf_key = secrets.token_bytes(32)  # per process: a restart invalidates the pages' forms

    @property
    def csrf(self) -> str:
        """The admin forms' hidden field: a page from this listener has it, a page elsewhere cannot read it."""
        return hmac.new(self._csrf_key, b"status admin", hashlib.sha256).hexdigest()

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
                page = await page_document(self.proxy)
                if self.proxy.config.admin_enabled:  # a page from before a restart gets this process's form token
                    page["csrf"] = self.csrf
                doc = json.dumps(page, default=str)
                await send(
                    {
                        "type": "http.response.body",
                        # retry: reconnect 1 s after a restart (browsers wait about 3 s by default)
                        "body": f"retry: 1000\nevent: status\ndata: {doc}\n\n".encode(),
                        "more_body": True,
                    }
                )
                with anyio.move_on_after(SNAPSHOT_INTERVAL):
                    await changed.wait()

    async def _admin(self, receive: Receive, send: Send) -> None:
        """A reset or force button: the admin tools' own code (checks, audit log line), then back to the page."""
        from mcp import MCPError

        from circuitbox.server.own_tools import circuit_force, circuit_reset

        if not self.proxy.config.admin_enabled:
            await reply(send, 403, b"403 Forbidden: admin is not enabled in this instance's config\n")
            return
        form = await read_form(receive)
        if form is None or not hmac.compare_digest(form.get("csrf", ""), self.csrf):
            await reply(send, 403, b"403 Forbidden: this form is not from this instance's status page; reload it\n")
            return
        args: dict[str, Any] = {"server": form.get("server", ""), "tool": form.get("tool") or None}
        try:
            if form.get("action") == "reset":
                await circuit_reset(self.proxy, args)
            elif form.get("action") == "force":
                await circuit_force(self.proxy, {**args, "state": form.get("state", "")})
            else:
                await reply(send, 400, b"400 Bad Request: action must be reset or force\n")
                return
        except MCPError as exc:
            await reply(send, 400, f"400 Bad Request: {exc.error.message}\n".encode())
            return
        await reply(send, 303, b"", headers=[(b"location", b"/status")])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if path == "/status/admin":
            if method != "POST":
                await reply(send, 405, b"method not allowed\n", headers=[(b"allow", b"POST")])
            else:
                await self._admin(receive, send)
            return
        if method not in ("GET", "HEAD") or path == "/status/login":  # the login form needs a token to sign in with
            await reply(send, 405 if path != "/status/login" else 404, b"not here\n")
            return
        if path == "/healthz":
            await reply(send, 200, b'{"status": "ok"}', "application/json")
        elif path == "/readyz":
            ready, waiting = readiness(self.proxy)
            body = {"ready": ready, "waiting_for": waiting}
            await reply(send, 200 if ready else 503, json.dumps(body).encode(), "application/json")
        elif path == "/status/events":
            await self._events(receive, send)
        elif path == "/status.json":
            doc = await status_document(self.proxy)
            await reply(send, 200, json.dumps(doc, default=str).encode(), "application/json")
        else:  # /status: mounted only on PATHS
            query = dict(parse_qsl(bytes(scope.get("query_string", b"")).decode("latin-1")))
            nonce = secrets.token_urlsafe(16)
            page = render_html(
                await page_document(self.proxy),
                server=query.get("server") or None,
                state=query.get("state") or None,
                csrf=self.csrf if self.proxy.config.admin_enabled else None,
                nonce=nonce,
            )
            # same-origin, not no-referrer: with no-referrer a browser sends `Origin: null` on the admin forms.
            headers = [(b"content-security-policy", _csp(nonce)), (b"referrer-policy", b"same-origin")]
            await reply(send, 200, page.encode(), "text/html; charset=utf-8", headers)
