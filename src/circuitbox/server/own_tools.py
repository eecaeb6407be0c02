"""circuitbox's own tools: circuit_status and circuit_metrics always; circuit_reset and circuit_force with admin.

Each answers with readable text and `structuredContent` matching its `outputSchema`. None of them ever shows a
downstream's env or headers: they only read breaker snapshots and connection states.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

import mcp_types as types
from mcp import MCPError

from circuitbox.breakers import BreakerRegistry, CircuitBreaker, CircuitState
from circuitbox.cluster import ClusterStore
from circuitbox.config.model import BREAKER_FIELDS, ConfigError


class ProxyView(Protocol):
    """What own tools read from and do to the proxy: the proxy satisfies it, own tools never import the proxy."""

    @property
    def downstreams(self) -> Mapping[str, object]: ...
    @property
    def registry(self) -> BreakerRegistry: ...
    def all_breakers(self) -> list[tuple[str, str, CircuitBreaker]]: ...
    def find_breaker(self, server: str, tool: str) -> CircuitBreaker | None: ...
    def breaker(self, server: str, tool: str) -> CircuitBreaker: ...
    def tools_of(self, server: str) -> list[str]: ...
    def tool_stats(self, server: str, tool: str) -> dict[str, Any]: ...
    def server_status(self, name: str) -> dict[str, Any]: ...
    def audit(self, action: str, server: str, tool: str, before: str, after: str) -> None: ...
    def configure(
        self, server: str, pattern: str, settings: Mapping[str, Any], tools: Iterable[str]
    ) -> list[tuple[str, dict[str, tuple[Any, Any, str]]]]: ...


Handler = Callable[[ProxyView, dict[str, Any]], Awaitable[types.CallToolResult]]

_FILTERS = {
    "server": {"type": "string", "description": "only this server (its config key)"},
    "tool": {"type": "string", "description": "only this tool, as the downstream names it"},
}
_SNAPSHOT = {
    "type": "object",
    "properties": {
        "server": {"type": "string"},
        "tool": {"type": "string"},
        "name": {"type": "string"},
        "state": {"type": "string"},
        "calls": {"type": "integer"},
        "failures": {"type": "integer"},
        "failure_rate": {"type": "number"},
        "retry_after": {"type": ["number", "null"]},
        "last_error": {"type": ["string", "null"]},
        "health_score": {"type": "number"},
        "policy": {"type": "object"},
    },
    "required": ["server", "tool", "state"],
}
_SERVER = {
    "type": "object",
    "properties": {
        "server": {"type": "string"},
        "connection": {"enum": ["connected", "starting", "restarting", "down", "crash_loop"]},
        "tools": {"type": "integer"},
        "last_error": {"type": ["string", "null"]},
        "restarts": {"type": "integer", "description": "connection attempts after the first"},
        "modern_child": {
            "type": "object",
            "description": "a stdio server's child serving 2026-era requests, once one was started",
            "properties": {
                "state": {"enum": ["starting", "running", "restarting", "crash_loop", "stopped"]},
                "restarts": {"type": "integer", "description": "children started after the first"},
                "last_error": {"type": ["string", "null"]},
            },
        },
        "stderr_tail": {
            "type": "array",
            "items": {"type": "string"},
            "description": "in a crash loop (its own or its 2026-era child's): the last lines of its stderr, secrets "
            "masked",
        },
    },
    "required": ["server", "connection", "tools"],
}
_SUMMARY = {"type": "object"}
_STATUS_OUTPUT = {
    "type": "object",
    "properties": {
        "breakers": {"type": "array", "items": _SNAPSHOT},
        "servers": {"type": "array", "items": _SERVER},
        "summary": _SUMMARY,
        "cluster": {"type": "object"},
    },
    "required": ["breakers", "servers", "summary"],
}
_METRICS_OUTPUT = {
    "type": "object",
    "properties": {
        "tools": {"type": "array", "items": {"type": "object"}},
        "servers": {"type": "array"},
        "health_score": {"type": "number"},
        "summary": _SUMMARY,
    },
    "required": ["tools", "servers", "health_score", "summary"],
}
_CHANGED_OUTPUT = {
    "type": "object",
    "properties": {"changed": {"type": "array", "items": _SNAPSHOT}},
    "required": ["changed"],
}


def _tool(
    name: str,
    description: str,
    properties: dict[str, Any],
    output: dict[str, Any],
    required: list[str] | None = None,
    read_only: bool = True,
) -> types.Tool:
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return types.Tool(
        name=name,
        description=description,
        input_schema=schema,
        output_schema=output,
        annotations=types.ToolAnnotations(read_only_hint=read_only, idempotent_hint=True, open_world_hint=False),
    )


STATUS = _tool(
    "circuit_status",
    "Circuit breaker state of every downstream tool circuitbox guards, and the connection state of every server. "
    "Filter by server, tool or state.",
    {**_FILTERS, "state": {"type": "string", "enum": [s.value for s in CircuitState]}},
    _STATUS_OUTPUT,
)
METRICS = _tool(
    "circuit_metrics",
    "Call counters, latency percentiles, fallback activations and health scores per tool and per server. "
    "Compact by default: a summary plus the breakers that are not healthy; all=true (or a tool) gives every one.",
    {**_FILTERS, "all": {"type": "boolean", "description": "every breaker, healthy ones too (default false)"}},
    _METRICS_OUTPUT,
)
RESET = _tool(
    "circuit_reset",
    "Close circuit breakers and clear their history (admin). Give a server, and optionally a tool.",
    dict(_FILTERS),
    _CHANGED_OUTPUT,
    required=["server"],
    read_only=False,
)
FORCE = _tool(
    "circuit_force",
    "Force circuit breakers into a state (admin): open or forced_open (reject every call), disabled (pass "
    "everything, record nothing), metrics_only (record, never reject) or auto (back to normal operation).",
    {**_FILTERS, "state": {"type": "string", "enum": ["open", "forced_open", "disabled", "metrics_only", "auto"]}},
    _CHANGED_OUTPUT,
    required=["server", "state"],
    read_only=False,
)


CONFIGURE = _tool(
    "circuit_configure",
    "Change circuit breaker thresholds at run time (admin): for one tool, a glob of tools, or a whole server. "
    "settings holds policy fields such as failure_threshold, timeout, failure_rate_threshold, call_timeout, "
    "max_concurrent, rate_limit ({calls, per, burst}) or queue_timeout. "
    "Window history is kept; breakers created later get the change too.",
    {
        "server": _FILTERS["server"],
        "tool": {"type": "string", "description": "a tool name or glob (default: every tool of the server)"},
        "settings": {"type": "object", "description": "breaker fields and their new values"},
    },
    {
        "type": "object",
        "properties": {"changed": {"type": "array", "items": {"type": "object"}}, "settings": {"type": "object"}},
        "required": ["changed", "settings"],
    },
    required=["server", "settings"],
    read_only=False,
)


_JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "object": dict,
    "boolean": bool,
    "integer": int,
    "number": (int, float),
}


def check_arguments(tool: types.Tool, args: dict[str, Any]) -> None:
    """Our own tools' arguments against their input schema (flat: types, enums, required, no extras).

    Raises:
        MCPError: -32602 naming the argument and the problem.
    """
    schema = tool.input_schema
    properties: dict[str, Any] = schema.get("properties", {})
    problems = [f"missing argument {name!r}" for name in schema.get("required", []) if name not in args]
    for name, value in args.items():
        spec = properties.get(name)
        if spec is None:
            problems.append(f"unknown argument {name!r}; known: {', '.join(properties)}")
        elif "type" in spec and not isinstance(value, _JSON_TYPES[spec["type"]]):
            problems.append(f"argument {name!r} must be a {spec['type']}, got {type(value).__name__}")
        elif "enum" in spec and value not in spec["enum"]:
            problems.append(f"argument {name!r} must be one of {', '.join(map(str, spec['enum']))}")
    if problems:
        raise MCPError(code=types.INVALID_PARAMS, message=f"{tool.name}: " + "; ".join(problems))


def _filtered(proxy: ProxyView, args: dict[str, Any]) -> list[tuple[str, str, Any]]:
    server, tool, state = args.get("server"), args.get("tool"), args.get("state")
    if server is not None and server not in proxy.downstreams:
        raise MCPError(
            code=types.INVALID_PARAMS,
            message=f"unknown server {server!r}; known: {', '.join(proxy.downstreams) or 'none'}",
        )
    rows = []
    for srv, name, breaker in proxy.all_breakers():
        if (server is None or srv == server) and (tool is None or name == tool):
            snap = breaker.snapshot()
            if state is None or snap.state == state:
                rows.append((srv, name, snap))
    return rows


# Every breaker field is shown beside its state, so an operator sees what applies after circuit_configure.
def _row(server: str, tool: str, snapshot: Any, proxy: ProxyView | None = None) -> dict[str, Any]:
    row = {"server": server, "tool": tool, **snapshot.to_dict()}
    breaker = proxy.find_breaker(server, tool) if proxy is not None else None
    if breaker is not None:
        row["policy"] = {field: getattr(breaker.config, field) for field in BREAKER_FIELDS}
    return row


def _answer(text: str, data: dict[str, Any]) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=data)


async def circuit_status(proxy: ProxyView, args: dict[str, Any]) -> types.CallToolResult:
    breakers = [_row(*row, proxy) for row in _filtered(proxy, args)]
    servers = [proxy.server_status(name) for name in proxy.downstreams if args.get("server") in (None, name)]
    data = {"breakers": breakers, "servers": servers, "summary": proxy.registry.summary()}
    cluster = _cluster(proxy)
    lines = []
    if cluster is not None:
        data["cluster"] = status = cluster.status()
        lines.append(
            f"cluster: group {status['group']!r}, "
            + (f"connected, {count(status['replicas'], 'replica')}" if status["connected"] else "Redis unreachable")
        )
    lines += [
        f"{s['server']}: {s['connection']}, {count(s['tools'], 'tool')}"
        + (f" (last error: {s['last_error']})" if s["last_error"] else "")
        + crash_loop_note(s)
        for s in servers
    ]
    lines += [
        f"{b['server']}/{b['tool']}: {b['state']}, {count(b['calls'], 'call')}, failure rate {b['failure_rate']:.0%}"
        + (f", retry in {b['retry_after']:.1f}s" if b.get("retry_after") else "")
        for b in breakers
    ]
    if not breakers:
        lines.append("No tool has been called yet, so no breaker exists yet (all circuits closed).")
    return _answer("\n".join(lines), data)


def crash_loop_note(server: Mapping[str, Any]) -> str:
    """What a crash-looping server's status line adds (or one whose 2026-era child crash-loops): its restarts and
    the last line of its stderr."""
    child = server.get("modern_child") or {}
    if server.get("connection") == "crash_loop":
        looping, restarts = "crash loop", server.get("restarts", 0)
    elif child.get("state") == "crash_loop":
        looping, restarts = "its 2026-era child in a crash loop", child.get("restarts", 0)
    else:
        return ""
    tail = server.get("stderr_tail") or []
    last = f"; its stderr ended with: {tail[-1]}" if tail else "; it wrote nothing to stderr"
    return f"; {looping}: restarted {count(restarts, 'time')}{last}"


def _healthy(row: dict[str, Any]) -> bool:
    return bool(row["state"] == CircuitState.CLOSED and row["health_score"] >= 1.0)


async def circuit_metrics(proxy: ProxyView, args: dict[str, Any]) -> types.CallToolResult:
    rows = _filtered(proxy, args)
    tools = [{**_row(srv, tool, snap, proxy), **proxy.tool_stats(srv, tool)} for srv, tool, snap in rows]
    per_server: dict[str, list[float]] = {}
    for entry in tools:
        per_server.setdefault(entry["server"], []).append(entry["health_score"])
    servers = [{"server": s, "health_score": sum(v) / len(v), "breakers": len(v)} for s, v in per_server.items()]
    overall = sum(t["health_score"] for t in tools) / len(tools) if tools else 1.0
    everything = args.get("all", False) or "tool" in args
    shown = tools if everything else [t for t in tools if not _healthy(t)]
    data = {"tools": shown, "servers": servers, "health_score": overall, "summary": proxy.registry.summary()}
    if everything:
        return _answer(json.dumps(data, indent=1, default=str), data)
    lines = [
        f"{count(len(tools), 'breaker')}: {len(tools) - len(shown)} healthy, {len(shown)} not; "
        f"overall health {overall:.0%}"
    ]
    lines += [
        f"{t['server']}/{t['tool']}: {t['state']}, health {t['health_score']:.0%}, {count(t['calls'], 'call')}, "
        f"failure rate {t['failure_rate']:.0%}" + (f", last error: {t['last_error']}" if t.get("last_error") else "")
        for t in shown
    ]
    if len(shown) < len(tools):
        lines.append("Call circuit_metrics with all=true for every breaker's counters and latencies.")
    return _answer("\n".join(lines), data)


async def circuit_reset(proxy: ProxyView, args: dict[str, Any]) -> types.CallToolResult:
    changed = []
    for server, tool, snap in _filtered(proxy, args):
        breaker = proxy.find_breaker(server, tool)
        if breaker is not None:
            breaker.reset()
            _announce(proxy, breaker, "reset by operator")
            proxy.audit("reset", server, tool, str(snap.state), "closed")
            changed.append(_row(server, tool, breaker.snapshot(), proxy))
    return _answer(f"Reset {count(len(changed), 'breaker')}{_fleet(proxy)}.", {"changed": changed})


_FORCE_STATES = {
    "open": CircuitState.FORCED_OPEN,
    "forced_open": CircuitState.FORCED_OPEN,
    "disabled": CircuitState.DISABLED,
    "metrics_only": CircuitState.METRICS_ONLY,
}


async def circuit_force(proxy: ProxyView, args: dict[str, Any]) -> types.CallToolResult:
    target = args.get("state")
    if target not in (*_FORCE_STATES, "auto"):
        raise MCPError(code=types.INVALID_PARAMS, message=f"state must be one of {', '.join(_FORCE_STATES)}, auto")
    server, tool = args["server"], args.get("tool")
    if server not in proxy.downstreams:
        raise MCPError(code=types.INVALID_PARAMS, message=f"unknown server {server!r}")
    known = proxy.tools_of(server)
    if tool is not None and tool not in known:
        raise MCPError(code=types.INVALID_PARAMS, message=f"server {server!r} has no tool {tool!r}")
    names = [tool] if tool else known
    changed = []
    for name in names:
        breaker = proxy.breaker(server, name)
        before = str(breaker.state)
        if target == "auto":
            breaker.reset()
            _announce(proxy, breaker, "reset by operator")
        else:
            breaker.force(_FORCE_STATES[target])
        proxy.audit("force", server, name, before, str(breaker.state))
        changed.append(_row(server, name, breaker.snapshot(), proxy))
    return _answer(f"{count(len(changed), 'breaker')} now {target}{_fleet(proxy)}.", {"changed": changed})


async def circuit_configure(proxy: ProxyView, args: dict[str, Any]) -> types.CallToolResult:
    server: str = args["server"]  # required: check_arguments saw it
    pattern, settings = args.get("tool") or "*", args.get("settings")
    if server not in proxy.downstreams:
        raise MCPError(code=types.INVALID_PARAMS, message=f"unknown server {server!r}")
    if not isinstance(settings, dict) or not settings:
        raise MCPError(code=types.INVALID_PARAMS, message="settings must be a non-empty object of breaker fields")
    changed = proxy.configure(server, pattern, settings, proxy.tools_of(server))
    proxy.audit("configure", server, pattern, "-", repr(settings))
    rows = []
    for tool, diff in changed:
        for field, (old, new, _) in diff.items():
            proxy.audit(f"configure {field}", server, tool, repr(old), repr(new))
        rows.append({"tool": tool, "changes": {k: {"old": o, "new": n, "source": w} for k, (o, n, w) in diff.items()}})
    text = (
        f"Applied {settings} to {count(len(rows), 'existing breaker')} of {server!r} matching {pattern!r}; "
        f"breakers created later get it too{_fleet(proxy)}."
    )
    cluster = _cluster(proxy)
    if cluster is not None:
        cluster.announce_configure(server, pattern, settings)
    return _answer(text, {"changed": rows, "settings": settings})


def _cluster(proxy: ProxyView) -> ClusterStore | None:
    store = proxy.registry.store
    return store if isinstance(store, ClusterStore) else None


def _announce(proxy: ProxyView, breaker: CircuitBreaker, reason: str) -> None:
    """An operator's reset reaches the fleet even where this replica's breaker was already closed."""
    cluster = _cluster(proxy)
    if cluster is not None:
        cluster.announce(breaker, reason)


def _fleet(proxy: ProxyView) -> str:
    cluster = _cluster(proxy)
    if cluster is None:
        return ""
    if cluster.connected:
        return f", fleet-wide (every replica of cluster group {cluster.group!r})"
    return (
        f", on this replica only for now: Redis is unreachable, the other replicas of cluster group "
        f"{cluster.group!r} get it when it is back"
    )


def count(n: int, noun: str) -> str:
    """ "1 tool", "2 tools"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _tool_errors(handler: Handler) -> Handler:
    """A config error (a setting circuit_configure refuses, a tool whose merged policy is contradictory) is the
    caller's answer, as an `isError` result naming the key: never an internal error."""

    async def answer(proxy: ProxyView, args: dict[str, Any]) -> types.CallToolResult:
        try:
            return await handler(proxy, args)
        except ConfigError as exc:
            return types.CallToolResult(content=[types.TextContent(text=f"config error: {exc}")], is_error=True)

    return answer


def own_tools(admin: bool) -> dict[str, tuple[types.Tool, Handler]]:
    tools: dict[str, tuple[types.Tool, Handler]] = {
        STATUS.name: (STATUS, circuit_status),
        METRICS.name: (METRICS, circuit_metrics),
    }
    if admin:
        tools[RESET.name] = (RESET, circuit_reset)
        tools[FORCE.name] = (FORCE, _tool_errors(circuit_force))
        tools[CONFIGURE.name] = (CONFIGURE, _tool_errors(circuit_configure))
    return tools
