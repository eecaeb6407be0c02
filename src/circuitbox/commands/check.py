"""`circuitbox check CONFIG [--connect] [--json] [--environment NAME]`: validate a config, show its policies.

Exit 0: the config is valid (and with `--connect` every enabled downstream listed its tools); 1: valid, but with
`--connect` a downstream could not be reached (reported on stderr); 2: invalid, with `circuitbox: config error:
<key>: <problem>` on stderr. Env and header values are never printed; neither are args (they may carry an expanded
secret) nor the credentials or query of a URL.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from contextlib import AbstractAsyncContextManager
from typing import Any, TextIO

from circuitbox.breakers.profiles import PRESETS
from circuitbox.config.load import (
    ConfigError,
    ProxyConfig,
    ServerConfig,
    discover_config_path,
    last_known_good_misuse,
    load_config,
)
from circuitbox.config.model import SERVER_FIELDS
from circuitbox.config.policy import POLICY_FIELDS, ToolPolicy, describe_policy, error_rules, is_glob


class Listed(list[str]):
    """A server's tool names as listed, with the names whose annotations say readOnlyHint / idempotentHint."""

    def __init__(self, names: list[str], read_only: set[str] | None = None, idempotent: set[str] | None = None):
        super().__init__(names)
        self.read_only = frozenset(read_only or ())
        self.idempotent = frozenset(idempotent or ())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", nargs="?", help="config file (default: $CIRCUITBOX_CONFIG, ./circuitbox.json, ./circuitbox.toml)"
    )
    parser.add_argument("--connect", action="store_true", help="start each downstream, list its tools, stop it")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--environment", help="environment profile when the file names none")


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(discover_config_path(args.config), environment=args.environment)
        tools: dict[str, list[str]] = {}
        errors: dict[str, str] = {}
        if args.connect:
            import anyio

            tools, errors = anyio.run(connect_all, config)
        report = build_report(config, tools if args.connect else None)
        misuse = [
            problem
            for server, listed in tools.items()
            for tool in listed
            if config.servers[server].publishes(tool)
            and (problem := last_known_good_misuse(config, server, tool, tool in _read_only(listed)))
        ]
        if misuse:
            raise ConfigError.of(misuse)
    except ConfigError as exc:
        for problem in exc.problems:  # one line each: every problem of the file at once
            print(f"circuitbox: config error: {problem}", file=sys.stderr)
        return 2
    try:
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print_table(config, report, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`circuitbox check ... | head`): stop quietly, as Python's docs advise.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    for server, error in errors.items():
        print(f"circuitbox: server {server!r} could not be listed: {error}", file=sys.stderr)
    for warning in unmatched_overrides(config, tools):
        print(f"circuitbox: warning: {warning}", file=sys.stderr)
    return 1 if errors else 0


def unmatched_overrides(config: ProxyConfig, tools: dict[str, list[str]]) -> list[str]:
    """A warning for each `tools` key of a listed server that matches none of its tools (a typo, a renamed tool, or
    the published `namespace__tool` name where the server's own name belongs): its policy silently never applies."""
    import difflib
    import fnmatch

    warnings = []
    for name, listed in tools.items():
        server = config.servers[name]
        for pattern, layer in server.tools:
            if any(fnmatch.fnmatchcase(t, pattern) if is_glob(pattern) else t == pattern for t in listed):
                continue
            hint = ""
            own = pattern.removeprefix(f"{server.namespace}__") if server.namespace else pattern
            if own != pattern and (own in listed or (is_glob(own) and fnmatch.filter(listed, own))):
                hint = f" (keys are the server's own tool names: {own!r})"
            elif close := difflib.get_close_matches(pattern, listed, n=1):
                hint = f" (did you mean {close[0]!r}?)"
            warnings.append(f"{layer.path}: matches no tool of {name!r}{hint}; its tools: {_listed(listed)}")
        control = [("include", g) for g in server.include or ()] + [("exclude", g) for g in server.exclude]
        for key, pattern in [*control, *(("rename", old) for old in server.rename)]:
            matches = fnmatch.fnmatchcase if key != "rename" else str.__eq__
            if not any(matches(t, pattern) for t in listed):
                warnings.append(f"server {name!r}: {key} {pattern!r} matches no tool; its tools: {_listed(listed)}")
    return warnings


def _listed(tools: list[str]) -> str:
    return (", ".join(tools[:10]) + (f", ... ({len(tools)} in all)" if len(tools) > 10 else "")) or "none"


def policy_json(policy: ToolPolicy) -> dict[str, dict[str, Any]]:
    return describe_policy(policy)  # the same code circuit_configure answers with


def build_report(config: ProxyConfig, tools: dict[str, list[str]] | None) -> dict[str, Any]:
    """The `--json` document; `tools` (server -> tool names) only after `--connect`.

    Raises:
        ConfigError: a tool's merged policy is contradictory.
    """
    servers = []
    for name, server in config.servers.items():
        policy = config.policy(name)
        entry: dict[str, Any] = {"server": name, "preset": server.preset, "policy": policy_json(policy)}
        entry["policy"].update(server_fields(server))
        entry["session"] = {"mode": server.session, "max_sessions": server.max_sessions}
        entry["error_rules"] = error_rules(policy)  # how an isError result counts, pattern by pattern
        listed = (tools or {}).get(name, [])
        entry["tools"] = [
            {
                "tool": tool,
                "published": published(server, tool),
                "policy": policy_json(p),
                "error_rules": error_rules(p),
                **surface(p, tool, listed),
            }
            for tool in listed
            for p in [config.policy(name, tool)]
        ]
        servers.append(entry)
    report: dict[str, Any] = {"environment": config.environment, "servers": servers}
    if config.cluster is not None:  # the URL with its credentials masked, like every URL check shows
        report["cluster"] = {"redis_url": config.cluster.shown_url, "group": config.cluster.group}
    return report


def server_fields(server: ServerConfig) -> dict[str, dict[str, Any]]:
    """The server keys that are not per tool (bulkhead, tool control, crash loops) as `{"value", "source"}`."""
    values: dict[str, Any] = {
        "server_max_concurrent": server.server_max_concurrent,
        "include": list(server.include) if server.include is not None else None,
        "exclude": list(server.exclude),
        "rename": dict(server.rename),
        "crash_loop_restarts": server.crash_loop_restarts,
        "crash_loop_window": server.crash_loop_window,
    }
    return {f: {"value": values[f], "source": "server" if f in server.keys_set else "default"} for f in SERVER_FIELDS}


def published(server: ServerConfig, tool: str) -> str | None:
    """The name the downstream's `tool` is published under, or None when `include` / `exclude` keep it out."""
    if not server.publishes(tool):
        return None
    own = server.public_name(tool)
    return f"{server.namespace}__{own}" if server.namespace else own


def _read_only(listed: list[str]) -> frozenset[str]:
    return listed.read_only if isinstance(listed, Listed) else frozenset()


def surface(policy: ToolPolicy, tool: str, listed: list[str]) -> dict[str, str]:
    """Whether `retry` and `fallback.last_known_good`, where set, apply to `tool`: both depend on its annotations."""
    read_only = tool in _read_only(listed)
    idempotent = isinstance(listed, Listed) and tool in listed.idempotent
    out = {}
    if policy.retry is not None:
        if policy.idempotent:
            out["retry"] = "applies (idempotent: true)"
        elif read_only or idempotent:
            out["retry"] = f"applies ({'readOnlyHint' if read_only else 'idempotentHint'})"
        else:
            out["retry"] = "does not apply (neither readOnlyHint nor idempotentHint)"
    if policy.last_known_good is not None:
        out["last_known_good"] = "applies (readOnlyHint)" if read_only else "does not apply (no readOnlyHint)"
    return out


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def print_table(config: ProxyConfig, report: dict[str, Any], out: TextIO) -> None:
    print(f"environment: {config.environment} (from {config.environment_source})    config: {config.source}", file=out)
    if config.cluster is not None:
        cluster = report["cluster"]
        print(f"cluster: group {cluster['group']!r} through Redis {cluster['redis_url']}", file=out)
    width = max(len(f) for f in (*POLICY_FIELDS, *SERVER_FIELDS))
    for entry in report["servers"]:
        server = config.servers[entry["server"]]
        preset = f"{server.preset} ({server.preset_source})" if server.preset else "none"
        state = "" if server.enabled else "  [disabled]"
        head = f"server {server.name}  [{server.target()}]  namespace: {server.namespace!r}  preset: {preset}{state}"
        head += f"  session: {server.session} (max_sessions {server.max_sessions})"
        print(f"\n{head}", file=out)
        if server.preset:
            print(f"  ({PRESETS[server.preset].doc})", file=out)
        rows = [(f, _show(i["value"]), i["source"]) for f, i in entry["policy"].items()]
        values = max(len(v) for _, v, _ in rows)
        print(f"  {'field':<{width}}  {'value':<{values}}  source", file=out)
        for field, value, source in rows:
            print(f"  {field:<{width}}  {value:<{values}}  {source}", file=out)
        print_rules(entry["error_rules"], "  ", out)
        for tool in entry["tools"]:
            differs = [
                (f, _show(i["value"]), i["source"]) for f, i in tool["policy"].items() if i != entry["policy"][f]
            ]
            if tool["published"] is None:
                print(
                    f"  tool {tool['tool']}: not published (include / exclude): neither listed nor callable", file=out
                )
                continue
            renamed = server.public_name(tool["tool"]) != tool["tool"]
            shown = f"{tool['tool']} (published as {tool['published']})" if renamed else tool["tool"]
            print(f"  tool {shown}: as the server{', except' if differs else ''}", file=out)
            for field, value, source in differs:
                print(f"    {field:<{width}}  {value:<{values}}  {source}", file=out)
            for field in ("retry", "last_known_good"):
                if field in tool:
                    print(f"    {field}: {tool[field]}", file=out)
            if tool["error_rules"] != entry["error_rules"]:
                print_rules(tool["error_rules"], "    ", out)


def print_rules(rules: list[dict[str, str]], indent: str, out: TextIO) -> None:
    """The isError classification, one rule a line, in the order they are tried."""
    print(f"{indent}an isError result counts as the first of these whose regex its text matches:", file=out)
    width = max(len(r["source"]) for r in rules)
    for rule in rules:
        print(f"{indent}  {rule['counts_as']:<7}  {rule['source']:<{width}}  {rule['pattern']}", file=out)


async def connect_all(config: ProxyConfig) -> tuple[dict[str, list[str]], dict[str, str]]:
    """List the tools of every enabled server at once; (tools per server, error per server that failed)."""
    import anyio

    tools: dict[str, list[str]] = {}
    errors: dict[str, str] = {}

    async def one(server: ServerConfig) -> None:
        try:
            tools[server.name] = await list_tools(server)
        except Exception as exc:  # any failure of one downstream is a report line, never a crash
            errors[server.name] = server.redact(describe(exc))  # a URL or an illegal header can carry a secret

    async with anyio.create_task_group() as tg:
        for server in config.servers.values():
            if server.enabled:
                tg.start_soon(one, server)
    order = list(config.servers)
    return dict(sorted(tools.items(), key=lambda i: order.index(i[0]))), errors


async def list_tools(server: ServerConfig) -> Listed:
    """Start `server`, list its tools (every page), stop it; all within its `startup_timeout`.

    Raises:
        TimeoutError: it took longer than `startup_timeout`.
        Exception: whatever the transport or the session raised.
    """
    import anyio
    from mcp import ClientSession

    with tempfile.TemporaryFile("w+") as errlog:
        try:
            with anyio.fail_after(server.startup_timeout):
                async with _transport(server, errlog) as (read, write), ClientSession(read, write) as session:
                    await session.initialize()
                    return await _all_tools(session)
        except TimeoutError:
            raise TimeoutError(f"no tool list within startup_timeout ({server.startup_timeout:g}s)") from None
        except Exception as exc:
            errlog.seek(0)
            lines = [line for line in errlog.read().splitlines() if line.strip()]
            if lines:  # the child's own last words say more than a closed pipe
                raise RuntimeError(f"{describe(exc)}; its stderr ended with: {lines[-1].strip()}") from exc
            raise


async def _all_tools(session: Any) -> Listed:
    import mcp_types as types

    from circuitbox.server.downstream import paginate

    tools = await paginate(session, types.ListToolsRequest, types.ListToolsResult, "tools")
    hints = [(t.name, t.annotations or types.ToolAnnotations()) for t in tools]
    return Listed(
        [t.name for t in tools],
        read_only={name for name, h in hints if h.read_only_hint},
        idempotent={name for name, h in hints if h.idempotent_hint},
    )


def _transport(server: ServerConfig, errlog: TextIO) -> AbstractAsyncContextManager[tuple[Any, Any]]:
    from circuitbox.server.transports import open_transport

    return open_transport(server, errlog)


def describe(exc: BaseException) -> str:
    """One line for an error (the proxy's own description)."""
    from circuitbox.server.downstream import describe_error

    return describe_error(exc)
