"""`circuitbox init --from PATH`: an agent client's servers moved behind circuitbox, nothing lost on the way."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from circuitbox.commands.init import InitError, replace_value, runs_circuitbox, strip_jsonc, value_span
from tests.config.support import check
from tests.net import free_port, import_path_env
from tests.proxy.harness import chaos, everything_server, running_process, write_config
from tests.proxy.test_http_front_end import serve_args


def init(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m circuitbox init ...` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "circuitbox", "init", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        check=False,
    )


def stdio_entry(**extra: Any) -> dict[str, Any]:
    return chaos("echo=healthy") | extra


LOCAL = stdio_entry(
    cwd="${workspaceFolder}",
    env={"HOME_DIR": "${userHome}", "P": "${env:PATH}", "AGAIN": "${userHome}/x", "S": "a${/}b${input:a.b}"},
)
# One sample per client shape, each with what must survive: secret values written in clear, ${VAR} references,
# Cursor's ${env:VAR}, VS Code's inputs and comments, and keys of the client's that are no server at all.
SAMPLES: dict[str, tuple[str, str]] = {
    "claude-desktop": (
        "claude_desktop_config.json",
        json.dumps(
            {
                "globalShortcut": "Ctrl+Space",
                "mcpServers": {
                    "notes": stdio_entry(env={"NOTES_KEY": "sk-written-in-clear"}),
                    "time": chaos("now=healthy"),
                },
            },
            indent=2,
        ),
    ),
    "cursor": (
        ".cursor/mcp.json",
        json.dumps(
            {
                "mcpServers": {
                    "search": stdio_entry(env={"SEARCH_TOKEN": "${env:SEARCH_TOKEN}"}),
                    "docs": {"url": "http://127.0.0.1:9/mcp", "headers": {"Authorization": "Bearer ${env:DOCS_KEY}"}},
                }
            }
        ),
    ),
    "claude-code": (
        ".mcp.json",
        json.dumps(
            {
                "mcpServers": {
                    "repo": {"type": "stdio", **stdio_entry(env={"GH": "${GITHUB_TOKEN}", "R": "${REGION:-eu}"})},
                    "api": {"type": "sse", "url": "http://127.0.0.1:9/sse?key=${API_KEY}"},
                }
            },
            indent=2,
        ),
    ),
    "vscode": (
        ".vscode/mcp.json",
        "{\n  // servers for this workspace\n"
        '  "inputs": [{"type": "promptString", "id": "api-token", "description": "API token", "password": true}],\n'
        '  "servers": {\n    /* the remote one */\n'
        '    "remote": {"type": "http", "url": "http://127.0.0.1:9/mcp?a=${input:a-b}",\n'
        '               "headers": {"Authorization": "Bearer ${input:api-token}"}},\n'
        f'    "local": {json.dumps(LOCAL)},\n  }},\n}}\n',
    ),
}
# What each client would put in the environment of the processes it starts (its own, or what it resolved).
CLIENT_ENV = {"SEARCH_TOKEN": "s", "DOCS_KEY": "d", "GITHUB_TOKEN": "g", "API_KEY": "a"}


TOKEN_REF = "Bearer ${input:tok}"


def client_resolves(entry: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    """The circuitbox entry as the client starts it: its own `${...}` in `env` resolved from `values`."""
    env = {k: re.sub(r"\$\{([^}]*)\}", lambda m: values[m.group(1)], v) for k, v in entry.get("env", {}).items()}
    return entry | {"env": env}


@pytest.mark.parametrize("client", list(SAMPLES))
def test_each_clients_servers_move_to_a_config_that_passes_check_and_the_client_file_keeps_everything_else(
    tmp_path: Path, client: str
) -> None:
    name, text = SAMPLES[client]
    source = tmp_path / name
    source.parent.mkdir(exist_ok=True)
    source.write_text(text)
    original = json.loads(strip_jsonc(text)[0])
    table = "servers" if client == "vscode" else "mcpServers"

    done = init("--from", str(source), "--write", cwd=tmp_path)
    assert done.returncode == 0, done.stderr

    # The backup is the file as it was, byte for byte.
    assert source.with_name(source.name + ".bak").read_text() == text
    # The client file keeps every other key (and, for VS Code, its comments), its table now the block printed.
    new_text = source.read_text()
    new = json.loads(strip_jsonc(new_text)[0])
    block = json.loads(done.stdout)
    assert new == {**original, table: block[table]}
    assert list(new[table]) == ["circuitbox"]
    if client == "vscode":
        assert "// servers for this workspace" in new_text and new["inputs"] == original["inputs"]
    entry = new[table]["circuitbox"]
    written = tmp_path / "circuitbox.json"
    assert entry["args"][-3:] == ["serve", "--config", str(written)]
    assert written.stat().st_mode & 0o777 == 0o600  # it may hold the secrets the client file held in clear

    # Every server is there, as it was written, references and all; only a reference the client alone can
    # resolve is renamed, and the circuitbox entry passes the client's own reference under that name.
    config = json.loads(written.read_text())
    assert list(config) == ["mcpServers"]
    passed = {f"${{{k}}}": v for k, v in entry.get("env", {}).items()}
    restored = json.loads(
        re.sub(r"\$\{CIRCUITBOX_CLIENT_[A-Z_0-9]+\}", lambda m: passed[m.group(0)], json.dumps(config["mcpServers"]))
    )
    assert restored == original[table]
    if client == "vscode":
        assert entry["env"] == {
            "CIRCUITBOX_CLIENT_INPUT_A_B": "${input:a-b}",
            "CIRCUITBOX_CLIENT_INPUT_API_TOKEN": "${input:api-token}",
            "CIRCUITBOX_CLIENT_WORKSPACEFOLDER": "${workspaceFolder}",
            "CIRCUITBOX_CLIENT_USERHOME": "${userHome}",
            "CIRCUITBOX_CLIENT_VALUE": "${/}",
            "CIRCUITBOX_CLIENT_INPUT_A_B_2": "${input:a.b}",
        }
        assert config["mcpServers"]["local"]["env"]["P"] == "${env:PATH}"  # circuitbox resolves that one itself
    else:
        assert "env" not in entry and config["mcpServers"] == original[table]

    # The written config passes check, in the environment the client starts circuitbox with.
    values = {"input:api-token": "t", "workspaceFolder": str(tmp_path), "userHome": str(tmp_path)}
    values |= {"input:a-b": "1", "input:a.b": "2", "/": "/"}
    started_with = CLIENT_ENV | client_resolves(entry, values).get("env", {})
    checked = check(str(written), env=started_with)
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr.count("config error") == 0


def test_a_second_run_finds_the_client_already_on_circuitbox_and_changes_nothing(tmp_path: Path) -> None:
    source = tmp_path / ".mcp.json"
    source.write_text(json.dumps({"mcpServers": {"a": stdio_entry()}}))
    assert init("--from", str(source), "--write", cwd=tmp_path).returncode == 0
    after_first = (source.read_text(), (tmp_path / "circuitbox.json").read_text())

    again = init("--from", str(source), "--write", cwd=tmp_path)
    assert again.returncode == 0 and "already starts circuitbox" in again.stderr
    assert (source.read_text(), (tmp_path / "circuitbox.json").read_text()) == after_first
    assert not source.with_name(".mcp.json.bak.1").exists()


def test_two_clients_merge_into_one_config_and_a_preview_then_write_is_the_same_as_write(tmp_path: Path) -> None:
    desktop = tmp_path / "claude_desktop_config.json"
    desktop.write_text(json.dumps({"mcpServers": {"a": stdio_entry(), "shared": stdio_entry()}}))
    cursor = tmp_path / ".cursor" / "mcp.json"
    cursor.parent.mkdir()
    cursor.write_text(json.dumps({"mcpServers": {"b": stdio_entry(), "shared": stdio_entry()}}))

    preview = init("--from", str(desktop), cwd=tmp_path)
    assert preview.returncode == 0, preview.stderr
    assert json.loads(desktop.read_text())["mcpServers"].keys() == {"a", "shared"}  # no --write: untouched
    assert init("--from", str(desktop), "--write", cwd=tmp_path).returncode == 0
    assert init("--from", str(cursor), "--write", cwd=tmp_path).returncode == 0
    config = json.loads((tmp_path / "circuitbox.json").read_text())
    assert list(config["mcpServers"]) == ["a", "shared", "b"]
    assert check(str(tmp_path / "circuitbox.json")).returncode == 0


def test_nothing_is_written_when_the_servers_would_not_make_a_valid_config(tmp_path: Path) -> None:
    source = tmp_path / ".mcp.json"
    text = json.dumps({"mcpServers": {"a": stdio_entry(comand="typo"), "b__c": stdio_entry(), "d": {"args": []}}})
    source.write_text(text)
    done = init("--from", str(source), "--write", cwd=tmp_path)
    assert done.returncode == 2
    line = done.stderr.strip()
    assert line.startswith("circuitbox: init: ") and "\n" not in line and "Traceback" not in line
    assert "comand" in line
    assert source.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == [".mcp.json"]


def test_a_server_already_in_the_output_with_another_entry_is_refused(tmp_path: Path) -> None:
    output = tmp_path / "mine.json"
    output.write_text(json.dumps({"environment": "staging", "mcpServers": {"a": stdio_entry(namespace="x")}}))
    source = tmp_path / ".mcp.json"
    source.write_text(json.dumps({"mcpServers": {"a": stdio_entry()}}))
    done = init("--from", str(source), "--output", str(output), cwd=tmp_path)
    assert done.returncode == 2 and "already has a different server named 'a'" in done.stderr
    assert json.loads(output.read_text())["environment"] == "staging"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("{not json", "invalid JSON at line 1"),
        ("[1]", "expected a JSON object"),
        ('{"mcpServers": []}', "mcpServers: expected a JSON object"),
        ('{"other": 1}', "no servers table"),
        ('{"mcpServers": {}}', "no servers to move"),
    ],
)
def test_a_client_file_init_cannot_read_is_one_clear_line(tmp_path: Path, content: str, words: str) -> None:
    source = tmp_path / "mcp.json"
    source.write_text(content)
    done = init("--from", str(source), cwd=tmp_path)
    assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_missing_client_file_or_an_output_that_is_not_json_is_refused(tmp_path: Path) -> None:
    done = init("--from", str(tmp_path / "nope.json"), cwd=tmp_path)
    assert done.returncode == 2 and "cannot read" in done.stderr
    source = tmp_path / ".mcp.json"
    source.write_text(json.dumps({"mcpServers": {"a": stdio_entry()}}))
    done = init("--from", str(source), "--output", "c.toml", cwd=tmp_path)
    assert done.returncode == 2 and "writes JSON" in done.stderr
    (tmp_path / "broken.json").write_text("{")
    done = init("--from", str(source), "--output", "broken.json", cwd=tmp_path)
    assert done.returncode == 2 and "not JSON init can merge into" in done.stderr
    (tmp_path / "list.json").write_text("[]")
    done = init("--from", str(source), "--output", "list.json", cwd=tmp_path)
    assert done.returncode == 2 and "not a JSON object" in done.stderr


def test_an_entry_that_already_runs_circuitbox_is_left_out_and_an_existing_backup_is_kept(tmp_path: Path) -> None:
    source = tmp_path / ".mcp.json"
    source.write_text(json.dumps({"mcpServers": {"old": {"command": "circuitbox", "args": ["serve"]}, "a": {}}}))
    (tmp_path / ".mcp.json.bak").write_text("an older backup")
    source.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "old": {"command": sys.executable, "args": ["-m", "circuitbox", "serve"]},
                    "a": stdio_entry(),
                }
            }
        )
    )
    done = init("--from", str(source), "--write", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "old: already starts circuitbox, not moved" in done.stderr
    assert list(json.loads((tmp_path / "circuitbox.json").read_text())["mcpServers"]) == ["a"]
    assert (tmp_path / ".mcp.json.bak").read_text() == "an older backup"
    assert "old" in json.loads((tmp_path / ".mcp.json.bak.1").read_text())["mcpServers"]


def test_a_symlinked_client_file_is_updated_where_it_lives(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "claude_desktop_config.json"
    real.parent.mkdir()
    real.write_text(json.dumps({"mcpServers": {"a": stdio_entry()}}))
    link = tmp_path / "claude_desktop_config.json"
    link.symlink_to(real)
    assert init("--from", str(link), "--write", cwd=tmp_path).returncode == 0
    assert link.is_symlink()
    assert list(json.loads(real.read_text())["mcpServers"]) == ["circuitbox"]


def test_runs_circuitbox_tells_circuitbox_entries_from_others() -> None:
    assert runs_circuitbox({"command": "/usr/bin/circuitbox", "args": ["serve", "--config", "x"]})
    assert runs_circuitbox({"command": "python3", "args": ["-u", "-m", "circuitbox", "serve"]})
    assert not runs_circuitbox({"command": "circuitbox", "args": ["chaos"]})
    assert not runs_circuitbox({"command": "npx", "args": ["circuitbox"]})
    assert not runs_circuitbox({"url": "http://x"})
    assert not runs_circuitbox("a string")


def test_jsonc_comments_and_trailing_commas_go_but_strings_that_look_like_them_stay() -> None:
    text = '{"a": "http://x//y /* z */", /* c */ "b": [1, 2,], // end\n "c": "q\\"//",}'
    stripped, had = strip_jsonc(text)
    assert had and json.loads(stripped) == {"a": "http://x//y /* z */", "b": [1, 2], "c": 'q"//'}
    assert strip_jsonc('{"a": [1,]}') == ('{"a": [1]}', False)


def test_a_value_is_replaced_in_place_and_every_other_byte_kept() -> None:
    text = (
        '{\n  // keep me\n  "x": {"y": [1, {"z": "}"}], "n": -1.5e3, "t": true},\n  "s": {"old": 1} /* and me */\n}\n'
    )
    assert text[slice(*value_span(text, ("x", "n")))] == "-1.5e3"
    out = replace_value(text, ("s",), {"new": [1]})
    assert out == text.replace('{"old": 1}', '{\n    "new": [\n      1\n    ]\n  }')
    dup = '{"s": 1, "s": 2}'
    assert dup[slice(*value_span(dup, ("s",)))] == "2"  # the one json.loads keeps
    with pytest.raises(InitError, match=r"cannot find s\.t"):
        value_span(text, ("s", "t"))
    with pytest.raises(InitError):
        value_span('{"s": 1}', ("s", "t"))


@pytest.mark.anyio
async def test_a_cursor_env_reference_reaches_the_downstream_through_the_new_entry(tmp_path: Path) -> None:
    cursor = tmp_path / ".cursor" / "mcp.json"
    cursor.parent.mkdir()
    entry = everything_server() | {"env": {"EVERYTHING_SECRET": "${env:CB_INIT_SECRET}"}}
    cursor.write_text(json.dumps({"mcpServers": {"ev": entry}}))
    assert init("--from", str(cursor), "--write", cwd=tmp_path).returncode == 0
    new_entry = json.loads(cursor.read_text())["mcpServers"]["circuitbox"]
    text = await call_through(new_entry, {"CB_INIT_SECRET": "value-from-cursors-env"}, "ev__get-env", tmp_path)
    assert json.loads(text)["EVERYTHING_SECRET"] == "value-from-cursors-env"


@pytest.mark.anyio
async def test_a_vscode_input_in_a_header_still_reaches_the_downstream_through_the_new_entry(tmp_path: Path) -> None:
    # The downstream is circuitbox itself over HTTP, guarded by a token: only the right header gets a tool list.
    port = free_port()
    (tmp_path / "inner").mkdir()
    inner = write_config(tmp_path / "inner", {"mcpServers": {"c": chaos("echo=healthy")}})
    vscode = tmp_path / ".vscode" / "mcp.json"
    vscode.parent.mkdir()
    vscode.write_text(
        '{\n  "inputs": [{"type": "promptString", "id": "tok", "password": true}],\n  "servers": {"remote": '
        + json.dumps({"type": "http", "url": f"http://127.0.0.1:{port}/mcp", "headers": {"Authorization": TOKEN_REF}})
        + "}\n}\n"
    )
    assert init("--from", str(vscode), "--write", cwd=tmp_path).returncode == 0
    new_entry = json.loads(vscode.read_text())["servers"]["circuitbox"]
    # VS Code prompts for ${input:tok} and puts the answer in the entry's env, as it does for any server.
    started = client_resolves(new_entry, {"input:tok": "the-prompted-token"})
    async with running_process(
        serve_args(inner, port), port=port, env={"CIRCUITBOX_AUTH_TOKEN": "the-prompted-token", **import_path_env()}
    ):
        text = await call_through(started, {}, "remote__c__echo", tmp_path, {"said": "hi"})
    assert "hi" in text


async def call_through(
    entry: dict[str, Any], env: dict[str, str], tool: str, cwd: Path, arguments: dict[str, Any] | None = None
) -> str:
    """Start the client's new entry as the client would and call `tool` through it; the result's text."""
    params = StdioServerParameters(
        command=entry["command"],
        args=entry["args"],
        env={
            **import_path_env(),
            **{k: v for k, v in os.environ.items() if k.startswith("COVERAGE")},
            **env,
            **entry.get("env", {}),
        },
        cwd=str(cwd),
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        with anyio.fail_after(60):
            await session.initialize()
            result = await session.call_tool(tool, arguments or {})
    assert not result.is_error, result
    return "".join(getattr(c, "text", "") for c in result.content)


def test_vscode_settings_keep_every_other_setting_and_comment_and_only_mcp_servers_changes(tmp_path: Path) -> None:
    settings = tmp_path / "settings.json"
    text = (
        '{\n  // editor\n  "editor.fontSize": 14,\n  "mcp": {\n    "discovery": true,\n    "servers": '
        + json.dumps({"a": stdio_entry()})
        + "\n  },\n}\n"
    )
    settings.write_text(text)
    done = init("--from", str(settings), "--write", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    block = json.loads(done.stdout)
    assert list(block) == ["mcp"] and list(block["mcp"]["servers"]) == ["circuitbox"]
    after = settings.read_text()
    assert after.startswith('{\n  // editor\n  "editor.fontSize": 14,\n  "mcp": {\n    "discovery": true,\n')
    assert json.loads(strip_jsonc(after)[0])["mcp"] == {"discovery": True, "servers": block["mcp"]["servers"]}
    assert list(json.loads((tmp_path / "circuitbox.json").read_text())["mcpServers"]) == ["a"]
