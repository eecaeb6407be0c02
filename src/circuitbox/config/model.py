"""The config file's shape as pydantic models, and pydantic's errors turned into `ConfigError`s naming key paths.

Models are strict (a string is not a number, `true` is not 1) and forbid unknown keys; keys the agent clients
use that circuitbox has no use for are taken out before validation (`strip_client_keys`), with a warning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

BREAKER_FIELDS: tuple[str, ...] = (
    "failure_threshold",
    "success_threshold",
    "timeout",
    "half_open_max_calls",
    "failure_rate_threshold",
    "minimum_calls",
    "sliding_window_size",
    "sliding_window_type",
    "window_bucket_seconds",
    "slow_call_duration",
    "slow_call_rate_threshold",
    "timeout_multiplier",
    "max_timeout",
    "jitter",
    "half_open_timeout",
    "call_timeout",
)
"""The `CircuitBreakerConfig` fields a config file may set (not `name`, `fallback`, `excluded_exceptions`)."""

LIMIT_FIELDS: tuple[str, ...] = ("max_concurrent", "rate_limit", "queue_timeout")
"""Bulkhead and rate-limit fields: what a call waits for before it reaches the breaker."""

PROXY_FIELDS: tuple[str, ...] = (
    "max_call_timeout",
    "fallback",
    "tool_list",
    "retry",
    "idempotent",
    "tool_errors",
    "ignore_errors",
    "failure_errors",
    *LIMIT_FIELDS,
)
"""Policy fields the proxy adds on top of the breaker's."""

SERVER_FIELDS: tuple[str, ...] = (
    "server_max_concurrent",
    "include",
    "exclude",
    "rename",
    "crash_loop_restarts",
    "crash_loop_window",
)
"""Server keys (not per tool) that `check` shows beside the policy, with their source."""

CLASSIFICATION_FIELDS: tuple[str, ...] = ("tool_errors", "ignore_errors", "failure_errors")

# Keys agent clients put in their server entries (VS Code, Cline, Roo, Windsurf, ...) that mean nothing here.
CLIENT_SERVER_KEYS = frozenset(
    {"envFile", "dev", "description", "autoApprove", "alwaysAllow", "timeout", "transportType", "disabledTools"}
)
CLIENT_TOP_KEYS = frozenset({"inputs", "$schema", "globalShortcut"})


class ConfigError(Exception):
    """A config file is invalid; str(err) names the key path and the problem (every problem found, joined by "; ",
    each also in `problems`)."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems: tuple[str, ...] = tuple(problems) or (message,)

    @classmethod
    def of(cls, problems: Sequence[str]) -> ConfigError:
        """One error for several problems (duplicates dropped, order kept)."""
        unique = list(dict.fromkeys(problems))
        return cls("; ".join(unique), unique)


MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Default of `max_message_bytes`."""


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Retry(_Strict):
    """`retry`: how a read-only or idempotent tool's call is tried again after a timeout or a transport error."""

    attempts: int = Field(3, ge=1, le=10, description="Attempts in all, the first included (1: no retry).")
    backoff: float = Field(
        0.1,
        ge=0,
        le=60,
        description="Base of the exponential backoff: attempt n waits a "
        "random time up to backoff x 2^(n-2) (full jitter).",
    )
    max_backoff: float = Field(2.0, ge=0, le=600, description="Cap of one wait between attempts.")
    budget: float = Field(
        0.2,
        ge=0,
        le=10,
        description="Retries allowed, as a fraction of the tool's calls in "
        "the last 10 s (plus 3 per 10 s whatever the traffic).",
    )


class RateLimit(_Strict):
    """A token bucket: `calls` per `per` seconds, up to `burst` at once."""

    calls: int = Field(ge=1, description="Tokens added per `per` seconds.")
    per: float = Field(1.0, gt=0, le=86400, description="Seconds in which `calls` tokens are added (default 1).")
    burst: int | None = Field(
        None,
        ge=1,
        description="Most tokens the bucket holds, i.e. calls allowed at once after a quiet spell (default: `calls`).",
    )


class Overrides(_Strict):
    """Policy values one layer sets (`defaults`, a server's `breaker`, a `tools` entry); ranges are checked by
    `CircuitBreakerConfig`, so only the types are declared here."""

    failure_threshold: int | None = Field(None, description="Consecutive failures that open the circuit.")
    success_threshold: int | None = Field(None, description="Successful probes in half-open that close it.")
    timeout: float | None = Field(None, description="Seconds the circuit stays open before probes.")
    half_open_max_calls: int | None = Field(None, description="Probes in flight at once in half-open.")
    failure_rate_threshold: float | None = Field(None, description="Failure fraction that opens the circuit.")
    minimum_calls: int | None = Field(None, description="Calls in the window before rates count.")
    sliding_window_size: int | None = Field(None, description="Calls or seconds in the window.")
    sliding_window_type: Literal["count", "time"] | None = Field(None, description="`count` or `time`.")
    window_bucket_seconds: float | None = Field(None, description="Bucket width of a time window.")
    slow_call_duration: float | None = Field(
        None,
        description="A call at least this long is slow; null: no call is slow.",
    )
    slow_call_rate_threshold: float | None = Field(None, description="Slow fraction that opens the circuit.")
    timeout_multiplier: float | None = Field(None, description="Growth of the open period after a failed probe.")
    max_timeout: float | None = Field(None, description="Cap of the open period.")
    jitter: float | None = Field(None, description="Jitter fraction of the open period.")
    half_open_timeout: float | None = Field(None, description="Deadline of a probe; null: `call_timeout`.")
    call_timeout: float | None = Field(
        None,
        description="Per-call deadline in the proxy, counted from the call's start or its last progress notification.",
    )
    max_call_timeout: float | None = Field(
        None,
        description="However often a call reports progress, it is cancelled "
        "this long after its start; null: 10 x call_timeout.",
    )
    fallback: dict[str, Any] | None = Field(
        None,
        description='`{"text": ...}` or `{"tool": "namespace__tool"}`: '
        "the answer while the circuit rejects calls; or\n"
        '`{"last_known_good": {"max_age": s}}` (read-only tools), '
        "optionally with a text or tool for when none is kept.",
    )
    tool_list: Literal["annotate", "hide", "static"] | None = Field(
        None,
        description="How the tool list shows an open circuit: `annotate` "
        "(default) marks the tool, `hide` removes it until its\n"
        "open period ends, `static` never changes the list.",
    )
    retry: Retry | None = Field(
        None,
        description="Retries of a read-only or idempotent tool on timeouts and transport errors; null: none (default).",
    )
    idempotent: bool | None = Field(
        None,
        description="True: the tool may be retried although its annotations do not say readOnlyHint or idempotentHint.",
    )
    tool_errors: Literal["classified", "failure", "ignore"] | None = Field(
        None,
        description="Which `isError` results count as failures: `classified` "
        "(default) those reporting the server's distress,\n"
        "`failure` all of them, `ignore` none.",
    )
    ignore_errors: list[str] | None = Field(
        None,
        description='Regexes: an `isError` text matching one is ignored (even under `tool_errors = "failure"`).',
    )
    failure_errors: list[str] | None = Field(
        None,
        description='Regexes: an `isError` text matching one is a failure (even under `tool_errors = "ignore"`).',
    )
    max_concurrent: int | None = Field(None, ge=1, description="Calls of one tool in flight at once; null: no cap.")
    rate_limit: RateLimit | None = Field(
        None,
        description='`{"calls": N, "per": s, "burst": M}`: a token bucket per tool; null: no limit.',
    )
    queue_timeout: float | None = Field(
        None,
        ge=0,
        le=3600,
        description="Seconds a call waits for a concurrency slot or a token before it is answered busy / rate limited.",
    )


class ServerEntry(_Strict):
    """One downstream, in the agent clients' shape plus circuitbox's own keys."""

    command: str | None = Field(None, description="Executable of a stdio server.")
    args: list[str] = Field([], description="Its arguments.")
    env: dict[str, str] = Field({}, description="Extra environment of the child process (never shown anywhere).")
    cwd: str | None = Field(None, description="Working directory of the child process.")
    type: Literal["stdio", "http", "streamable-http", "sse"] | None = Field(
        None,
        description="Transport; default stdio with a command, http with a url.",
    )
    url: str | None = Field(None, description="Endpoint of an HTTP or SSE server.")
    headers: dict[str, str] = Field({}, description="HTTP headers (never shown anywhere).")
    enabled: bool | None = Field(None, description="False keeps the entry but does not start it (default true).")
    disabled: bool | None = Field(None, description="Cline's spelling of `enabled: false`.")
    namespace: str | None = Field(
        None,
        description='Prefix of the published tool names (default: the server\'s key; "" publishes names as they are).',
    )
    preset: str | None = Field(
        None,
        description='A service preset, or "none"; inferred from the name, command, args and url when absent.',
    )
    breaker: Overrides | None = Field(None, description="Overrides for every tool of this server.")
    tools: dict[str, Overrides] = Field({}, description="Overrides per exact tool name or glob.")
    startup_timeout: float = Field(30.0, gt=0, description="Seconds the server gets to connect and list its tools.")
    session: Literal["auto", "shared", "per_client"] = Field(
        "auto",
        description="How the HTTP upstream's clients reach it: one connection "
        "for all (`shared`), one of its own for each upstream\n"
        "session (`per_client`), or `auto`: per client for a stdio "
        "server when the client declares sampling, elicitation\n"
        "or roots, else shared.",
    )
    max_sessions: int = Field(
        64,
        ge=1,
        description="Per-client connections open at once to this server; "
        "past it a new client's requests get a clear error.",
    )
    tool_errors: Literal["classified", "failure", "ignore"] | None = Field(
        None,
        description="Server-wide `tool_errors` (same as in `breaker`).",
    )
    ignore_errors: list[str] | None = Field(None, description="Server-wide `ignore_errors`.")
    failure_errors: list[str] | None = Field(None, description="Server-wide `failure_errors`.")
    server_max_concurrent: int | None = Field(
        None,
        ge=1,
        description="Calls of all this server's tools in flight at once; null: no cap.",
    )
    include: list[str] | None = Field(
        None,
        description="Globs over the downstream's tool names: only the tools matching one are published (default: all).",
    )
    exclude: list[str] = Field(
        [],
        description="Globs over the downstream's tool names: tools matching one are neither listed nor callable.",
    )
    rename: dict[str, str] = Field(
        {},
        description='`{"downstream_name": "new_name"}`: publish a tool as `namespace__new_name`.',
    )
    crash_loop_restarts: int = Field(
        5,
        ge=1,
        le=10_000,
        description="A stdio server that dies this many times within `crash_loop_window` is reported as a crash loop.",
    )
    crash_loop_window: float = Field(
        60.0,
        gt=0,
        le=86400,
        description="Seconds over which deaths are counted for `crash_loop_restarts`.",
    )


class Admin(_Strict):
    enabled: bool = Field(False, description="Publish `circuit_reset`, `circuit_force` and `circuit_configure`.")


class Metrics(_Strict):
    port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port of `/metrics` in stdio mode; none: no port is opened.",
    )
    host: str = Field("127.0.0.1", description="Address the metrics port binds to.")


class Http(_Strict):
    max_sessions: int = Field(
        1000,
        ge=1,
        description="Upstream HTTP sessions open at once; past it the "
        "longest-idle session is closed to admit a new client (503\n"
        "only while every session has a request or stream open).",
    )
    session_idle_timeout: float = Field(
        600,
        gt=0,
        description="Seconds without a request after which an upstream HTTP session is closed.",
    )


class Cluster(_Strict):
    redis_url: str = Field(
        description="The Redis every replica of the group shares its breakers through (`${VAR}` expands; needs\n"
        "`circuitbox[redis]`).",
    )
    group: str = Field(
        "default",
        description="Replicas with the same group share each (server, "
        "tool) breaker; other groups on the same Redis do not.",
    )


class ConfigFile(_Strict):
    """The whole file."""

    environment: str | None = Field(None, description="development, staging, production or testing.")
    defaults: Overrides | None = Field(None, description="Overrides for every server.")
    admin: Admin = Field(Admin(), description="Operator tools.")
    metrics: Metrics = Field(Metrics(), description="Prometheus endpoint.")
    http: Http = Field(Http(), description="The HTTP upstream's sessions.")
    cluster: Cluster | None = Field(
        None,
        description="Scale-out: breaker state shared with the other replicas of a group through Redis.",
    )
    shutdown_timeout: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="Seconds that calls in flight get to finish on SIGTERM "
        "/ SIGINT before they are answered with an error.",
    )
    max_message_bytes: int = Field(
        MAX_MESSAGE_BYTES,
        ge=64 * 1024,
        le=1 << 30,
        description="The largest message any hop takes (an upstream line "
        "or HTTP body, a downstream line, response or SSE\n"
        "event); a larger one is refused with a logged error, never buffered and parsed.",
    )
    list_changed_interval: float = Field(
        2.0,
        ge=0,
        le=3600,
        description="Seconds between two tools/list_changed notifications "
        "that breaker state causes (the last of a burst is\n"
        "always sent).",
    )
    mcpServers: dict[str, ServerEntry] | None = Field(
        None,
        description="Downstreams (Claude Desktop, Cursor, Claude Code shape).",
    )
    servers: dict[str, ServerEntry] | None = Field(None, description="Downstreams (VS Code shape).")


def strip_client_keys(data: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`data` without the agent clients' keys circuitbox does not use, and a warning for each one taken out."""
    warnings = []
    out = dict(data)
    for key in sorted(CLIENT_TOP_KEYS & out.keys()):
        del out[key]
        warnings.append(f"{key}: ignored (an agent client's key circuitbox does not use)")
    for table in ("mcpServers", "servers"):
        servers = out.get(table)
        if not isinstance(servers, Mapping):
            continue
        cleaned: dict[str, Any] = {}
        for name, entry in servers.items():
            if isinstance(entry, Mapping):
                entry = dict(entry)
                if "serverUrl" in entry and "url" not in entry:  # Windsurf's name for url
                    entry["url"] = entry.pop("serverUrl")
                disabled = entry.get("disabledTools")
                if isinstance(disabled, list) and all(isinstance(t, str) for t in disabled):
                    # Cline's list of tools the agent may not use means what `exclude` does here.
                    del entry["disabledTools"]
                    kept = entry.get("exclude", [])
                    entry["exclude"] = [*kept, *disabled] if isinstance(kept, list) else kept
                    warnings.append(f"{table}.{name}.disabledTools: read as exclude (neither listed nor callable)")
                for key in sorted(CLIENT_SERVER_KEYS & entry.keys()):
                    del entry[key]
                    warnings.append(f"{table}.{name}.{key}: ignored (an agent client's key circuitbox does not use)")
            cleaned[name] = entry
        out[table] = cleaned
    return out, warnings


def validate_parts(data: Mapping[str, Any]) -> tuple[ConfigFile | None, list[str]]:
    """The file's model and the problems found; when some parts are invalid, the model of the rest (the keys and
    server entries with a problem left out), so that what they do not hide can be checked too. None: not even the
    rest validates.
    """
    try:
        return ConfigFile.model_validate(data), []
    except ValidationError as exc:
        errors = exc.errors()
    rest = dict(data)
    for loc in (e["loc"] for e in errors if e["loc"]):
        table = rest.get(str(loc[0]))
        if loc[0] in ("mcpServers", "servers") and len(loc) > 1 and isinstance(table, Mapping):
            rest[str(loc[0])] = {k: v for k, v in table.items() if k != loc[1]}
        else:
            rest.pop(str(loc[0]), None)
    try:
        return ConfigFile.model_validate(rest), problems(errors)
    except ValidationError:  # a problem of the whole that no one part holds
        return None, problems(errors)


def key_path(parts: Sequence[str | int]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_JSON_TYPES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    dict: "a table",
    list: "a list",
}
_EXPECTED = {
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "dict_type": "expected a table (JSON object)",
    "model_type": "expected a table (JSON object)",
    "model_attributes_type": "expected a table (JSON object)",
    "list_type": "expected a list",
}


def _got(value: Any) -> str:
    if value is None:
        return "null"
    return _JSON_TYPES.get(type(value), type(value).__name__)


def problem(error: Mapping[str, Any], known: Sequence[str] = ()) -> str:
    """One pydantic error as a short phrase ("unknown key", "expected an integer, got a string", ...)."""
    kind = error["type"]
    if kind == "extra_forbidden":
        import difflib  # only a bad config needs it: not imported on every start of serve

        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        return "unknown key" + (f" (did you mean {close[0]}?)" if close else "")
    if kind in _EXPECTED:
        return f"{_EXPECTED[kind]}, got {_got(error.get('input'))}"
    message = str(error["msg"])
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind == "literal_error":
        return "expected " + message.removeprefix("Input should be ")
    return message


def _known_keys(loc: Sequence[str | int]) -> Sequence[str]:
    """Keys valid at the place an unknown key was found, for a "did you mean" hint."""
    parent = tuple(loc[:-1])
    if not parent:
        return list(ConfigFile.model_fields)
    if len(parent) == 2 and parent[0] in ("mcpServers", "servers"):
        return list(ServerEntry.model_fields)
    if parent[-1] in ("defaults", "breaker", "settings") or (len(parent) >= 2 and parent[-2] == "tools"):
        return list(Overrides.model_fields)
    if parent[-1] == "retry":
        return list(Retry.model_fields)
    if parent[-1] == "rate_limit":
        return list(RateLimit.model_fields)
    return []


def describe(errors: Sequence[Mapping[str, Any]], prefix: Sequence[str | int] = ()) -> str:
    """pydantic errors as "key.path: problem" phrases joined by "; "."""
    return "; ".join(problems(errors, prefix))


def problems(errors: Sequence[Mapping[str, Any]], prefix: Sequence[str | int] = ()) -> list[str]:
    """pydantic errors as "key.path: problem" phrases, duplicates dropped."""
    parts = []
    for error in errors:
        loc = (*prefix, *(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-"))))
        path = key_path(loc)
        text = problem(error, _known_keys(loc))
        parts.append(f"{path}: {text}" if path else text)
    return list(dict.fromkeys(parts))
