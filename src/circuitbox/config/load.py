"""Loading the config file: discovery, JSON/TOML, validation, `${VAR}` expansion, and the policies it implies.

`load_config` / `parse_config` return a frozen `ProxyConfig`; every problem is a `ConfigError` whose text names the
key path and the problem (`mcpServers.docker.breaker.failure_treshold: unknown key (did you mean
failure_threshold?)`). A reload builds a new `ProxyConfig`, and its policies are resolved afresh.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from circuitbox.breakers.profiles import check_environment, check_preset, environment_from, infer_preset
from circuitbox.config.cluster import ClusterConfig, cluster_config
from circuitbox.config.expand import expand
from circuitbox.config.model import (
    CLASSIFICATION_FIELDS,
    MAX_MESSAGE_BYTES,
    SERVER_FIELDS,
    ConfigError,
    Overrides,
    ServerEntry,
    key_path,
    strip_client_keys,
    validate_parts,
)
from circuitbox.config.policy import (
    LastKnownGood,
    Layer,
    ToolPolicy,
    base_layers,
    is_glob,
    make_layer,
    resolve,
    tool_layers,
)
from circuitbox.config.secrets import mask, secrets_of

logger = logging.getLogger("circuitbox.config")

_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]*")
_TRANSPORTS: Mapping[str, Literal["stdio", "http", "sse"]] = {
    "stdio": "stdio",
    "http": "http",
    "streamable-http": "http",
    "sse": "sse",
}


def _masked(values: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{k!r}: '***'" for k in values) + "}"


MEMO_CAP = 4096
"""Policies memoized per config; resolving again is cheap, so a full memo is simply emptied."""


@dataclass(frozen=True, repr=False)
class ServerConfig:
    """One downstream, validated and expanded. Its repr never shows env or header values."""

    name: str
    transport: Literal["stdio", "http", "sse"]
    command: str | None
    args: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str | None
    url: str | None
    headers: Mapping[str, str]
    namespace: str
    preset: str | None
    preset_source: Literal["explicit", "inferred", "none"]
    startup_timeout: float = 30.0
    enabled: bool = True
    secrets: frozenset[str] = frozenset()
    """Values never to show (config/secrets.py): env and header values, what `${VAR}` brought in, URL credentials."""
    session: Literal["auto", "shared", "per_client"] = "auto"
    """How HTTP upstream clients reach it (see `ServerEntry.session`)."""
    max_sessions: int = 64
    """Per-client connections open at once (`session` per_client or auto)."""
    layers: tuple[Layer, ...] = ()
    """The server's own policy layers (`breaker`, then the server-level classification keys)."""
    tools: tuple[tuple[str, Layer], ...] = ()
    """(exact name or glob, layer) in file order."""
    server_max_concurrent: int | None = None
    """Calls of all its tools in flight at once; None: no cap."""
    include: tuple[str, ...] | None = None
    """Globs: only the downstream's tools matching one are published; None: all."""
    exclude: tuple[str, ...] = ()
    """Globs: the downstream's tools matching one are neither listed nor callable."""
    rename: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Downstream tool name -> the name it is published under (before the namespace)."""
    crash_loop_restarts: int = 5
    crash_loop_window: float = 60.0
    keys_set: frozenset[str] = frozenset()
    """Which server keys of `SERVER_FIELDS` the file sets (the others are defaults), for `check`."""

    def publishes(self, tool: str) -> bool:
        """Whether the downstream's tool `tool` is published (listed and callable) under `include` / `exclude`."""
        if self.include is not None and not any(fnmatch.fnmatchcase(tool, g) for g in self.include):
            return False
        return not any(fnmatch.fnmatchcase(tool, g) for g in self.exclude)

    def public_name(self, tool: str) -> str:
        """The name the downstream's tool `tool` is published under, before the namespace (`rename`)."""
        return self.rename.get(tool, tool)

    def target(self) -> str:
        """Where the server is, safe to show: the command without its args (an expanded secret may hide there),
        or the URL without credentials, query or fragment."""
        if self.transport == "stdio":
            return self.redact(f"stdio: {self.command}")  # a ${VAR} in the command is masked too
        parts = urlsplit(self.url or "")
        port = f":{parts.port}" if parts.port else ""
        return self.redact(f"{self.transport}: {parts.scheme}://{parts.hostname or ''}{port}{parts.path}")

    def redact(self, text: str) -> str:
        """`text` (an error message, a downstream's stderr line) with this server's secrets masked."""
        return mask(text, self.secrets)

    def __repr__(self) -> str:
        return (
            f"ServerConfig(name={self.name!r}, target={self.target()!r}, args=<{len(self.args)}>, "
            f"env={_masked(self.env)}, headers={_masked(self.headers)}, namespace={self.namespace!r}, "
            f"preset={self.preset!r}, enabled={self.enabled!r})"
        )


@dataclass(frozen=True)
class ProxyConfig:
    """The whole config. `policy()` resolves and memoizes the effective policy of a server or one of its tools."""

    environment: str
    environment_source: str
    servers: Mapping[str, ServerConfig]
    admin_enabled: bool = False
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    http_max_sessions: int = 1000
    http_session_idle_timeout: float = 600.0
    shutdown_timeout: float = 10.0
    max_message_bytes: int = MAX_MESSAGE_BYTES
    list_changed_interval: float = 2.0
    cluster: ClusterConfig | None = None
    source: str = "<config>"
    defaults: Layer | None = field(default=None, repr=False)
    warnings: tuple[str, ...] = ()
    _memo: dict[tuple[str, str | None], ToolPolicy] = field(default_factory=dict, repr=False, compare=False)

    def policy(self, server: str, tool: str | None = None) -> ToolPolicy:
        """The effective policy of `tool` of `server` (of the server as a whole when `tool` is None).

        Raises:
            KeyError: no such server.
            ConfigError: the merged values contradict each other.
        """
        key = (server, tool)
        found = self._memo.get(key)
        if found is None:
            if len(self._memo) >= MEMO_CAP:  # tool names come from downstreams: never an unbounded map
                self._memo.clear()
            found = self._memo[key] = self._resolve(self.servers[server], tool)
        return found

    def _resolve(self, srv: ServerConfig, tool: str | None, only: Layer | None = None) -> ToolPolicy:
        layers = base_layers(self.environment, srv.preset)
        layers += [self.defaults] if self.defaults else []
        layers += srv.layers
        if only is not None:
            layers.append(only)
        elif tool is not None:
            layers += tool_layers(srv.tools, tool)
        return resolve(f"{srv.name}__{tool}" if tool is not None else srv.name, layers)


def last_known_good_misuse(config: ProxyConfig, server: str, tool: str, read_only: bool) -> str | None:
    """The config error of a `tools` entry naming `tool` exactly that sets `fallback.last_known_good` when the tool
    is not read-only (known only once the server lists it), or None. Set for a server, in `defaults` or by a glob,
    last_known_good simply applies to the read-only tools only."""
    if read_only or server not in config.servers:
        return None
    for pattern, layer in config.servers[server].tools:
        if pattern == tool and isinstance(layer.values.get("fallback"), LastKnownGood):
            return (
                f"{layer.path}.fallback: last_known_good is for read-only tools, and {tool!r} of {server!r} is not "
                "listed with readOnlyHint: its calls are never answered with a kept result"
            )
    return None


def discover_config_path(explicit: str | None, env: Mapping[str, str] | None = None) -> Path:
    """`--config`, else `$CIRCUITBOX_CONFIG`, else ./circuitbox.json, else ./circuitbox.toml.

    Raises:
        ConfigError: none of them is given or exists.
    """
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit)
    if env.get("CIRCUITBOX_CONFIG"):
        return Path(env["CIRCUITBOX_CONFIG"])
    for candidate in (Path("circuitbox.json"), Path("circuitbox.toml")):
        if candidate.is_file():
            return candidate
    raise ConfigError("no config file: pass --config PATH, set $CIRCUITBOX_CONFIG, or create ./circuitbox.json")


def load_config(path: Path, *, environment: str | None = None, env: Mapping[str, str] | None = None) -> ProxyConfig:
    """Read, parse and validate a JSON (`.json`, or anything not `.toml`) or TOML (`.toml`) file.

    Raises:
        ConfigError: the file cannot be read, is malformed (line and column named) or is invalid.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    data: Any
    if Path(path).suffix.lower() == ".toml":
        import tomllib  # here, not at the top: most configs are JSON, and serve's start waits for every import

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    return parse_config(data, source=str(path), environment=environment, env=env)


def parse_config(
    data: Mapping[str, Any],
    *,
    source: str = "<config>",
    environment: str | None = None,
    env: Mapping[str, str] | None = None,
) -> ProxyConfig:
    """Validate an in-memory config (the demo's, a test's) exactly as `load_config` does a file.

    Raises:
        ConfigError: naming the key path and the problem, for every problem found (not only the first), in
            `problems` and joined by "; ".
    """
    env = os.environ if env is None else env
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a table (JSON object) at the top level, got {type(data).__name__}")
    cleaned, warnings = strip_client_keys(data)
    for warning in warnings:
        logger.warning("%s: %s", source, warning)
    found: list[str] = []  # every problem, so that a user fixes a file in one pass, not one error per run
    file, found = validate_parts(cleaned)
    if file is None:
        raise ConfigError.of(found)
    left_out = bool(found)  # some entries had a problem and are not in `file`
    if file.mcpServers is not None and file.servers is not None:
        found.append("servers: set either mcpServers or servers, not both")
    table = "servers" if file.servers is not None else "mcpServers"
    entries = file.servers if file.servers is not None else file.mcpServers
    if not entries and not left_out:
        found.append(f"{table}: no servers configured")
    try:
        env_name, env_source = _environment(file.environment, environment, env)
    except ConfigError as exc:
        found.extend(exc.problems)
        env_name, env_source = "production", "default"  # to go on checking the rest
    defaults: Layer | None = None
    if file.defaults:
        try:
            defaults = make_layer(file.defaults, "defaults", ("defaults",))
        except ConfigError as exc:
            found.extend(exc.problems)
    cluster = cluster_config(file.cluster, env, found)
    servers: dict[str, ServerConfig] = {}
    for name, entry in (entries or {}).items():
        server = _server(name, entry, (table, name), env, found)
        if server is not None:
            servers[name] = server
    config = ProxyConfig(
        environment=env_name,
        environment_source=env_source,
        servers=MappingProxyType(servers),
        admin_enabled=file.admin.enabled,
        metrics_port=file.metrics.port,
        metrics_host=file.metrics.host,
        http_max_sessions=file.http.max_sessions,
        http_session_idle_timeout=file.http.session_idle_timeout,
        shutdown_timeout=file.shutdown_timeout,
        max_message_bytes=file.max_message_bytes,
        list_changed_interval=file.list_changed_interval,
        cluster=cluster,
        source=source,
        defaults=defaults,
        warnings=tuple(warnings),
    )
    if not (file.defaults and defaults is None):  # a broken `defaults` would only repeat itself in every policy
        for srv in config.servers.values():  # resolve what the file states now, so its errors surface at load
            resolutions: list[tuple[str | None, Layer | None]] = [(None, None)]
            resolutions += [(p, layer if is_glob(p) else None) for p, layer in srv.tools]
            for tool, only in resolutions:
                try:
                    if only is not None:
                        config._resolve(srv, tool, only=only)
                    else:
                        config.policy(srv.name, tool)
                except ConfigError as exc:
                    found.extend(exc.problems)
    if found:
        raise ConfigError.of(found)
    return config


def _environment(in_file: str | None, flag: str | None, env: Mapping[str, str]) -> tuple[str, str]:
    for value, where, source in ((in_file, "environment", "config"), (flag, "--environment", "--environment")):
        if value is not None:
            try:
                return check_environment(value), source
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
    try:
        return environment_from(env)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _server(
    name: str, entry: ServerEntry, path: tuple[str, str], env: Mapping[str, str], found: list[str]
) -> ServerConfig | None:
    """The server, or None with its problems added to `found` (all of them, as far as they can be told apart)."""
    where = key_path(path)
    before = len(found)
    if entry.enabled is not None and entry.disabled is not None and entry.enabled == entry.disabled:
        found.append(f"{where}: enabled and disabled contradict each other")
    enabled = entry.enabled if entry.enabled is not None else not entry.disabled
    if entry.command is not None and entry.url is not None:
        found.append(f"{where}: set either command (stdio) or url (http, sse), not both")
    kind = entry.type or ("stdio" if entry.command is not None or entry.url is None else "http")
    transport = _TRANSPORTS[kind]
    if transport == "stdio" and entry.command is None:
        found.append(f"{where}.command: required (a stdio server needs a command, a remote one a url)")
    if transport != "stdio" and entry.url is None:
        found.append(f"{where}.url: required for type {kind}")

    expanded: list[str] = []

    def x(value: str | None, key: str) -> str | None:
        # Disabled servers are not started, so their variables need not be set.
        if value is None or not enabled:
            return value
        try:
            return expand(value, env, f"{where}.{key}", expanded)
        except ConfigError as exc:
            found.extend(exc.problems)
            return value

    command, url, cwd = x(entry.command, "command"), x(entry.url, "url"), x(entry.cwd, "cwd")
    args = tuple(str(x(a, f"args[{i}]")) for i, a in enumerate(entry.args))
    child_env = {k: str(x(v, f"env.{k}")) for k, v in entry.env.items()}
    headers = {k: str(x(v, f"headers.{k}")) for k, v in entry.headers.items()}
    # Names are joined as server__tool (breakers) and namespace__tool (published): a '__' inside or a '_' at the
    # end would let server a__b's tool c and server a's tool b__c share one name, breaker and all.
    for value, key in ((name, where), (entry.namespace, f"{where}.namespace")):
        if value and ("__" in value or value.endswith("_")):
            found.append(f"{key}: {value!r} may not contain '__' or end with '_' ('__' comes before tool names)")
    namespace = name if entry.namespace is None else entry.namespace
    if not _NAMESPACE.fullmatch(namespace):
        hint = "" if entry.namespace is not None else " (the server's name is used by default; set a namespace)"
        found.append(f"{where}.namespace: {namespace!r} may only hold letters, digits, '_', '-' and '.'{hint}")
    preset: str | None = None
    preset_source: Literal["explicit", "inferred", "none"] = "none"
    try:
        preset, preset_source = _preset(entry, name, command, args, url, where)
    except ConfigError as exc:
        found.extend(exc.problems)
    both = sorted(
        f
        for f in CLASSIFICATION_FIELDS
        if f in entry.model_fields_set and entry.breaker and f in entry.breaker.model_fields_set
    )
    if both:
        found.append(f"{where}.{both[0]}: set both here and in {where}.breaker.{both[0]}; keep one")
    classification = Overrides(**{f: getattr(entry, f) for f in CLASSIFICATION_FIELDS if f in entry.model_fields_set})
    layers: list[Layer] = []
    for overrides, source, layer_path in (
        (entry.breaker, "server", (*path, "breaker")),
        (classification, "server", path),
        *((o, f"tool:{p}", (*path, "tools", p)) for p, o in entry.tools.items()),
    ):
        try:
            layers.append(make_layer(overrides, source, layer_path))
        except ConfigError as exc:
            found.extend(exc.problems)
    _check_rename(entry.rename, where, found)
    if len(found) > before:
        return None
    return ServerConfig(
        name=name,
        transport=transport,
        command=command,
        args=args,
        env=MappingProxyType(child_env),
        cwd=cwd,
        url=url,
        headers=MappingProxyType(headers),
        namespace=namespace,
        preset=preset,
        preset_source=preset_source,
        startup_timeout=entry.startup_timeout,
        enabled=enabled,
        secrets=secrets_of(child_env, headers, url, expanded),
        session=entry.session,
        max_sessions=entry.max_sessions,
        layers=tuple(layers[:2]),
        tools=tuple(zip(entry.tools, layers[2:], strict=True)),
        server_max_concurrent=entry.server_max_concurrent,
        include=tuple(entry.include) if entry.include is not None else None,
        exclude=tuple(entry.exclude),
        rename=MappingProxyType(dict(entry.rename)),
        crash_loop_restarts=entry.crash_loop_restarts,
        crash_loop_window=entry.crash_loop_window,
        keys_set=frozenset(SERVER_FIELDS) & entry.model_fields_set,
    )


_TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def _check_rename(rename: Mapping[str, str], where: str, found: list[str]) -> None:
    """New names must be valid tool names, and two tools may not be renamed to one name."""
    taken: dict[str, str] = {}
    for old, new in rename.items():
        if not _TOOL_NAME.fullmatch(new):
            found.append(
                f"{where}.rename.{old}: {new!r} is not a tool name (1 to 128 letters, digits, '_', '-' or '.')"
            )
        elif new in taken:
            found.append(f"{where}.rename.{old}: {new!r} is also the new name of {taken[new]!r}")
        taken.setdefault(new, old)


def _preset(
    entry: ServerEntry, name: str, command: str | None, args: tuple[str, ...], url: str | None, where: str
) -> tuple[str | None, Literal["explicit", "inferred", "none"]]:
    if entry.preset is None:
        inferred = infer_preset(name, command, args, url)
        return inferred, "inferred" if inferred else "none"
    if entry.preset.strip().lower() == "none":
        return None, "none"
    try:
        return check_preset(entry.preset).name, "explicit"
    except ValueError as exc:
        raise ConfigError(f"{where}.preset: {exc}") from None


__all__ = ["ConfigError", "ProxyConfig", "ServerConfig", "discover_config_path", "load_config", "parse_config"]
