"""`circuitbox init --from PATH [--write] [--output circuitbox.json]`: put circuitbox in front of a client's servers.

Reads an agent client's config (Claude Desktop `claude_desktop_config.json`, Cursor `.cursor/mcp.json`, Claude
Code `.mcp.json` or `~/.claude.json`, VS Code `mcp.json` or `settings.json`), writes the servers it names into
circuitbox's config and prints the client's new servers table: one `circuitbox` entry. With `--write` that table
replaces the client's own, every other key of the file kept and the original saved beside it (`PATH.bak`, or
`PATH.bak.1`, ... when that exists).

Nothing is lost on the way: each server entry is carried as it is written, `env` and `headers` values and `${VAR}`
references included (circuitbox expands `${VAR}`, `${VAR:-default}` and `${env:VAR}` itself, from the environment
the client starts it with). A reference only the client can resolve (VS Code's `${input:id}`, `${workspaceFolder}`,
`${userHome}`, ...) becomes `${CIRCUITBOX_CLIENT_...}` in circuitbox's config, and the client's new entry passes the
original reference in its `env` under that name, so the client still resolves (and prompts for) it. Nothing is
written when the servers would not make a valid circuitbox config; an existing output file is merged into (a
server of the same name must be the same entry), never overwritten.

Exit 0: done (or the client already runs circuitbox); 2: nothing written, with `circuitbox: init: <why>` on stderr.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from circuitbox.config.load import ConfigError, parse_config

Client = Literal["claude-desktop", "cursor", "claude-code", "vscode", "mcpServers file"]

ENTRY_NAME = "circuitbox"
PASS_PREFIX = "CIRCUITBOX_CLIENT_"
# The entry fields circuitbox expands `${...}` in (config/expand.py); references anywhere else are not ours to move.
_EXPANDED_FIELDS = ("command", "cwd", "url")
_EXPANDED_LISTS = ("args",)
_EXPANDED_TABLES = ("env", "headers")
# VS Code and Cursor resolve `${env:VAR}` from their own environment, which circuitbox inherits: circuitbox resolves it
# the same. Every other `${...}` of theirs (${input:id}, ${workspaceFolder}, ${userHome}, ${/}, ...) is theirs alone.
_REFERENCE = re.compile(r"\$\{([^}]*)\}")
_ENV_REFERENCE = re.compile(r"env:[A-Za-z_][A-Za-z0-9_]*")


class InitError(Exception):
    """init cannot go on; nothing was written."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="PATH",
        help="the agent client's config: claude_desktop_config.json, .cursor/mcp.json, .mcp.json, .vscode/mcp.json",
    )
    parser.add_argument(
        "--write", action="store_true", help="replace the client's servers with the circuitbox entry (PATH.bak kept)"
    )
    parser.add_argument(
        "--output",
        default="circuitbox.json",
        metavar="PATH",
        help="circuitbox's config to write or merge into (default ./circuitbox.json)",
    )


@dataclass
class ClientFile:
    """An agent client's config as read: its data, where its servers table is, and what it needs kept."""

    path: Path
    client: Client
    data: dict[str, Any]
    table: tuple[str, ...]
    """Key path of the servers table: ("mcpServers",), ("servers",) or ("mcp", "servers")."""
    text: str = ""
    """The file as read, so that `--write` changes the servers table alone."""

    @property
    def servers(self) -> dict[str, Any]:
        found: Any = self.data
        for key in self.table:
            found = found[key]
        return dict(found)


@dataclass
class Plan:
    """What init writes: circuitbox's config and the client's new servers table."""

    config: dict[str, Any]
    moved: list[str]
    block: dict[str, Any]
    passed: dict[str, str] = field(default_factory=dict)
    """CIRCUITBOX_CLIENT_* name -> the client's own reference it stands for."""
    skipped: list[str] = field(default_factory=list)
    """Entries of the client that already run circuitbox (not moved: circuitbox in front of itself)."""


def read_client(path: Path) -> ClientFile:
    """Raises:
    InitError: the file cannot be read or parsed, or holds no servers table.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InitError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        # VS Code's files (and some Cursor ones) are JSON with comments and trailing commas.
        try:
            data = json.loads(strip_jsonc(text)[0])
        except json.JSONDecodeError as exc:
            raise InitError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise InitError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    table: tuple[str, ...] | None = None
    for candidate in (("mcpServers",), ("servers",), ("mcp", "servers")):
        found: Any = data
        for key in candidate:
            found = found.get(key) if isinstance(found, dict) else None
        if found is not None:
            if not isinstance(found, dict):
                raise InitError(f"{path}: {'.'.join(candidate)}: expected a JSON object, got {type(found).__name__}")
            table = candidate
            break
    if table is None:
        raise InitError(f"{path}: no servers table (mcpServers, servers or mcp.servers) to move")
    return ClientFile(path, _client_of(path, table), data, table, text)


def _client_of(path: Path, table: tuple[str, ...]) -> Client:
    if path.name == "claude_desktop_config.json":
        return "claude-desktop"
    if path.name in (".mcp.json", ".claude.json"):
        return "claude-code"
    if path.parent.name == ".cursor":
        return "cursor"
    if table != ("mcpServers",) or path.parent.name == ".vscode":
        return "vscode"
    return "mcpServers file"


def _skip(text: str, i: int) -> int:
    """The index of the next character at or after `i` that is neither whitespace nor in a comment."""
    n = len(text)
    while i < n:
        if text[i].isspace():
            i += 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            break
    return i


def _string_end(text: str, i: int) -> int:
    """The index after the string literal that starts at `i`."""
    j = i + 1
    while j < len(text) and text[j] != '"':
        j += 2 if text[j] == "\\" else 1
    return j + 1


def strip_jsonc(text: str) -> tuple[str, bool]:
    """`text` without `//` and `/* */` comments and trailing commas (outside strings); and whether it had comments."""
    out: list[str] = []
    had_comments = False
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            end = _string_end(text, i)
            out.append(text[i:end])
            i = end
        elif text.startswith(("//", "/*"), i):
            i = _skip(text, i)
            had_comments = True
        elif ch == "," and (ahead := _skip(text, i + 1)) < n and text[ahead] in "}]":
            i += 1  # a trailing comma: JSON has none
        else:
            out.append(ch)
            i += 1
    return "".join(out), had_comments


def value_span(text: str, path: tuple[str, ...]) -> tuple[int, int]:
    """Where, in JSON-with-comments `text` (already known to parse), the value at key `path` starts and ends.

    Raises:
        InitError: there is no such value (a duplicate key or an odd layout the scan does not follow).
    """

    def value_end(i: int) -> int:
        if text[i] == '"':
            return _string_end(text, i)
        if text[i] in "{[":
            close = "}" if text[i] == "{" else "]"
            i = _skip(text, i + 1)
            while text[i] != close:
                if close == "}":
                    i = _skip(text, _string_end(text, i))
                    i = _skip(text, i + 1)  # past the ':'
                i = _skip(text, value_end(i))
                if text[i] == ",":
                    i = _skip(text, i + 1)
            return i + 1
        j = i
        while j < len(text) and (text[j].isalnum() or text[j] in "+-."):
            j += 1  # a number, true, false or null
        return j

    def find(i: int, rest: tuple[str, ...]) -> tuple[int, int] | None:
        if not rest:
            return i, value_end(i)
        if text[i] != "{":
            return None
        i = _skip(text, i + 1)
        found = None
        while text[i] != "}":
            key_end = _string_end(text, i)
            key = json.loads(text[i:key_end])
            i = _skip(text, key_end)
            i = _skip(text, i + 1)
            if key == rest[0]:
                found = find(i, rest[1:])  # the last of duplicate keys, as json.loads keeps
            i = _skip(text, value_end(i))
            if text[i] == ",":
                i = _skip(text, i + 1)
        return found

    found = find(_skip(text, 0), path)
    if found is None:
        raise InitError(f"cannot find {'.'.join(path)} in the file to replace it")
    return found


def replace_value(text: str, path: tuple[str, ...], value: Any) -> str:
    """`text` with the value at `path` replaced by `value`, every other byte (comments, layout) as it was."""
    start, end = value_span(text, path)
    line_start = text.rfind("\n", 0, start) + 1
    indent = re.match(r"[ \t]*", text[line_start:start])
    pad = indent.group(0) if indent else ""
    body = json.dumps(value, indent=2, ensure_ascii=False).replace("\n", "\n" + pad)
    return text[:start] + body + text[end:]


def runs_circuitbox(entry: Any) -> bool:
    """Whether a client's server entry starts circuitbox itself (moving it would put circuitbox in front of itself)."""
    if not isinstance(entry, Mapping) or not isinstance(entry.get("command"), str):
        return False
    args = [a for a in entry.get("args") or [] if isinstance(a, str)]
    if Path(entry["command"]).name == "circuitbox":
        return "serve" in args
    return any(args[i : i + 3] == ["-m", "circuitbox", "serve"] for i in range(len(args)))


def plan(client: ClientFile, output: Path, existing: dict[str, Any] | None, command: list[str]) -> Plan:
    """What to write, checked: circuitbox's config (the client's servers merged into `existing`) and the new block.

    Raises:
        InitError: no server to move, a name already in `existing` with another entry, or the config invalid.
    """
    servers = client.servers
    skipped = [name for name, entry in servers.items() if runs_circuitbox(entry)]
    moved = {name: copy.deepcopy(entry) for name, entry in servers.items() if name not in skipped}
    passed: dict[str, str] = {}
    if client.client in ("vscode", "cursor"):
        for entry in moved.values():
            _pass_client_references(entry, passed)
    config = copy.deepcopy(existing) if existing is not None else {}
    table_name = "servers" if "servers" in config and "mcpServers" not in config else "mcpServers"
    table = config.setdefault(table_name, {})
    if not isinstance(table, dict):
        raise InitError(f"{output}: {table_name}: expected a JSON object, got {type(table).__name__}")
    clashes = [name for name, entry in moved.items() if name in table and table[name] != entry]
    if clashes:
        raise InitError(
            f"{output} already has a different server named {', '.join(map(repr, clashes))}: "
            "rename one of them, or pass another --output"
        )
    table.update(moved)
    if not table:
        raise InitError(f"{client.path}: no servers to move")
    try:
        # Every variable set to a stand-in: this checks the shape; the values come from the client at run time.
        parse_config(config, source=str(output), environment="production", env=_EveryVariable())
    except ConfigError as exc:
        raise InitError(f"these servers would not make a valid circuitbox config: {exc}") from None
    ours: dict[str, Any] = {"command": command[0], "args": [*command[1:], "serve", "--config", str(output)]}
    if client.client in ("vscode", "claude-code"):
        ours = {"type": "stdio", **ours}
    if passed:
        ours["env"] = {name: f"${{{reference}}}" for name, reference in passed.items()}
    block: dict[str, Any] = {ENTRY_NAME: ours}
    for key in reversed(client.table):
        block = {key: block}
    return Plan(config, list(moved), block, passed, skipped)


def _pass_client_references(entry: dict[str, Any], passed: dict[str, str]) -> None:
    """Replace each client-only `${...}` in the fields circuitbox expands by `${CIRCUITBOX_CLIENT_...}`."""
    by_reference = {reference: name for name, reference in passed.items()}

    def replace(match: re.Match[str]) -> str:
        reference = match.group(1)
        if _ENV_REFERENCE.fullmatch(reference):
            return match.group(0)
        name = by_reference.get(reference)
        if name is None:
            base = PASS_PREFIX + (re.sub(r"[^A-Za-z0-9]+", "_", reference).strip("_").upper() or "VALUE")
            name, n = base, 1
            while name in passed:
                n += 1
                name = f"{base}_{n}"
            passed[name], by_reference[reference] = reference, name
        return f"${{{name}}}"

    for key in _EXPANDED_FIELDS:
        if isinstance(entry.get(key), str):
            entry[key] = _REFERENCE.sub(replace, entry[key])
    for key in _EXPANDED_LISTS:
        if isinstance(entry.get(key), list):
            entry[key] = [_REFERENCE.sub(replace, a) if isinstance(a, str) else a for a in entry[key]]
    for key in _EXPANDED_TABLES:
        if isinstance(entry.get(key), dict):
            entry[key] = {k: _REFERENCE.sub(replace, v) if isinstance(v, str) else v for k, v in entry[key].items()}


class _EveryVariable(Mapping[str, str]):
    """An environment in which every variable is set (to a stand-in), to validate a config's shape alone."""

    def __getitem__(self, key: str) -> str:
        return "set"

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def circuitbox_command() -> list[str]:
    """How the client should start this circuitbox: the console script that is running, else this Python's `-m`."""
    script = Path(sys.argv[0])
    if script.name == "circuitbox" and script.is_file():
        return [str(script.resolve())]
    return [sys.executable, "-m", "circuitbox"]


def read_existing(output: Path) -> dict[str, Any] | None:
    """Raises:
    InitError: the output file exists but is not a JSON object.
    """
    if not output.exists():
        return None
    try:
        data = json.loads(output.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InitError(f"{output} exists and is not JSON init can merge into ({exc}): pass another --output") from None
    if not isinstance(data, dict):
        raise InitError(f"{output} exists and is not a JSON object: pass another --output")
    return data


def dump(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_atomically(path: Path, text: str, mode: int) -> None:
    """Replace `path` with `text` at once (a crash leaves the old file or the new one, never half of one)."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def backup(path: Path) -> Path:
    """Copy `path` byte for byte (mode and times too) to the first free `PATH.bak`, `PATH.bak.1`, ..."""
    n = 0
    while True:
        target = path.with_name(path.name + (".bak" if n == 0 else f".bak.{n}"))
        try:
            with target.open("xb") as out, path.open("rb") as src:
                shutil.copyfileobj(src, out)
        except FileExistsError:
            n += 1
            continue
        shutil.copystat(path, target)
        return target


def apply_block(client: ClientFile, block: dict[str, Any]) -> str:
    """The client's file with its servers table replaced by the block's; every other byte (other keys, comments,
    layout) as it was.

    Raises:
        InitError: the result would not read back as the client's data with the new table (never written then).
    """
    inner: Any = block
    expected = copy.deepcopy(client.data)
    parent: dict[str, Any] = expected
    for key in client.table[:-1]:
        parent, inner = parent[key], inner[key]
    parent[client.table[-1]] = inner = inner[client.table[-1]]
    text = replace_value(client.text, client.table, inner)
    if json.loads(strip_jsonc(text)[0]) != expected:
        raise InitError(f"{client.path}: its layout defeats a safe edit: replace its servers by hand with the block")
    return text


def run(args: argparse.Namespace) -> int:
    try:
        return _run(Path(args.source), Path(args.output), args.write)
    except InitError as exc:
        print(f"circuitbox: init: {exc}", file=sys.stderr)
        return 2


def _run(source: Path, output: Path, write: bool) -> int:
    client = read_client(source)
    if output.suffix.lower() != ".json":
        raise InitError(f"--output {output}: init writes JSON; name the file *.json")
    output = output.absolute()
    servers = client.servers
    if servers and all(runs_circuitbox(entry) for entry in servers.values()):
        print(f"circuitbox: init: {source} already starts circuitbox; nothing to move", file=sys.stderr)
        return 0
    the_plan = plan(client, output, read_existing(output), circuitbox_command())
    target = source.resolve()  # a symlinked client file (a dotfiles checkout) is updated where it lives
    text = dump(the_plan.config)
    if not output.exists() or output.read_text(encoding="utf-8") != text:
        # 0600: the client's env and header values (possibly secrets written in clear) are carried as they are.
        write_atomically(output, text, 0o600)
    names = ", ".join(the_plan.moved)
    print(
        f"circuitbox: init: {output}: {_count(len(the_plan.moved), 'server')} from {source} ({names})", file=sys.stderr
    )
    for name in the_plan.skipped:
        print(f"circuitbox: init: {name}: already starts circuitbox, not moved", file=sys.stderr)
    for name, reference in the_plan.passed.items():
        print(
            f"circuitbox: init: ${{{reference}}} is the client's to resolve: the circuitbox entry passes it as ${name}",
            file=sys.stderr,
        )
    print(dump(the_plan.block), end="")
    if write:
        new_text = apply_block(client, the_plan.block)
        saved = backup(target)
        write_atomically(target, new_text, target.stat().st_mode & 0o7777)
        print(f"circuitbox: init: {source}: now starts circuitbox alone (the old file: {saved})", file=sys.stderr)
    else:
        print(
            f"circuitbox: init: put this block in {source} in place of its {'.'.join(client.table)} "
            "(or run again with --write)",
            file=sys.stderr,
        )
    print(f"circuitbox: init: check it with: circuitbox check --connect {output}", file=sys.stderr)
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
