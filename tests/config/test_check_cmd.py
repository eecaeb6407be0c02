"""`circuitbox check`: the policy table and JSON, `--connect` against real downstreams, secrets never shown."""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest

from circuitbox.breakers.profiles import PRESETS
from circuitbox.commands import check as check_cmd
from circuitbox.config.load import parse_config
from circuitbox.config.model import SERVER_FIELDS
from circuitbox.config.policy import INPUT_VALIDATION, POLICY_FIELDS
from tests.config.support import check, time_server, write
from tests.net import free_port, wait_for_port

SECRET_ENV = "hunter2-env-value"
SECRET_HEADER = "hunter2-header-value"
SECRET_URL = "hunter2-url-password"
SECRET_ARG = "hunter2-arg-value"


def secret_config() -> dict[str, Any]:
    return {
        "environment": "staging",
        "mcpServers": {
            "time": {
                **time_server(),
                "env": {"API_TOKEN": SECRET_ENV},
                "tools": {"get_*": {"call_timeout": 5}, "convert_time": {"fallback": {"text": "clocks are down"}}},
            },
            "slack": {
                "url": f"http://bot:{SECRET_URL}@127.0.0.1:1/mcp?token={SECRET_URL}",
                "headers": {"Authorization": f"Bearer {SECRET_HEADER}"},
                "enabled": False,
            },
            "tools": {"command": "some-server", "args": [f"--token={SECRET_ARG}"], "preset": "none"},
        },
    }


def namespace(config: Path | None, **flags: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    check_cmd.add_arguments(parser)
    args = parser.parse_args([str(config)] if config else [])
    for key, value in flags.items():
        setattr(args, key, value)
    return args


def assert_no_secrets(text: str) -> None:
    for secret in (SECRET_ENV, SECRET_HEADER, SECRET_URL, SECRET_ARG):
        assert secret not in text


def test_the_table_shows_every_field_with_its_source_and_the_preset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check_cmd.run(namespace(write(tmp_path, secret_config()))) == 0
    out, err = capsys.readouterr()
    assert out.startswith("environment: staging (from config)    config: ")
    assert (
        "server slack  [http: http://127.0.0.1:1/mcp]  namespace: 'slack'  preset: slack (inferred)  [disabled]" in out
    )
    assert "server tools  [stdio: some-server]  namespace: 'tools'  preset: none" in out
    slack = out.split("server slack")[1].split("server tools")[0]
    assert slack.splitlines()[1] == f"  ({PRESETS['slack'].doc})"  # why the preset's values are what they are
    fields, rules = slack.split("an isError result counts as")
    shown = [line.split()[0] for line in fields.splitlines()[3:] if line.strip()]
    assert shown == [*POLICY_FIELDS, *SERVER_FIELDS]
    rows = {line.split()[0]: line.split()[1:] for line in fields.splitlines()[3:] if line.strip()}
    assert rows["call_timeout"] == ["15", "preset"]
    assert rows["timeout"] == ["90", "environment"]
    assert rows["ignore_errors"] == ["[]", "default"]
    assert rows["slow_call_duration"] == ["5", "preset"]
    assert rows["tool_errors"] == ["classified", "default"]
    # The classification, rule by rule: the built-in distress patterns, then the preset's, then the rest ignored.
    lines = [line.split(None, 2) for line in rules.splitlines()[1:] if line.strip()]
    assert {source for _, source, _ in lines} == {"default", "preset:slack"}
    assert [kind for kind, source, _ in lines if source == "preset:slack"] == ["failure"]
    assert lines[-1] == ["ignored", "default", "(any other text)"]
    assert_no_secrets(out + err)


def test_the_json_has_exactly_the_documented_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_cmd.run(namespace(write(tmp_path, secret_config()), json=True)) == 0
    out, _ = capsys.readouterr()
    report = json.loads(out)
    assert set(report) == {"environment", "servers"}
    assert report["environment"] == "staging"
    assert [s["server"] for s in report["servers"]] == ["time", "slack", "tools"]
    assert [s["preset"] for s in report["servers"]] == [None, "slack", None]
    for server in report["servers"]:
        assert set(server) == {"server", "preset", "session", "policy", "error_rules", "tools"}
        assert server["session"] == {"mode": "auto", "max_sessions": 64}
        assert all(set(rule) == {"pattern", "counts_as", "source"} for rule in server["error_rules"])
        assert list(server["policy"]) == [*POLICY_FIELDS, *SERVER_FIELDS]  # the server keys with their sources too
        assert all(set(item) == {"value", "source"} for item in server["policy"].values())
        assert server["tools"] == []  # only with --connect
    assert report["servers"][1]["policy"]["failure_threshold"] == {"value": 5, "source": "preset"}
    assert report["servers"][0]["policy"]["fallback"] == {"value": None, "source": "default"}
    assert_no_secrets(out)


def test_check_connect_lists_the_tools_of_a_real_stdio_downstream_with_their_policies(tmp_path: Path) -> None:
    config = secret_config()
    del config["mcpServers"]["tools"]  # not a real server
    done = check(str(write(tmp_path, config)), "--connect", "--json")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    report = json.loads(done.stdout)
    time_entry = report["servers"][0]
    tools = {t["tool"]: t["policy"] for t in time_entry["tools"]}
    assert set(tools) == {"get_current_time", "convert_time"}
    assert tools["get_current_time"]["call_timeout"] == {"value": 5.0, "source": "tool:get_*"}
    assert tools["convert_time"]["fallback"] == {"value": {"text": "clocks are down"}, "source": "tool:convert_time"}
    assert tools["convert_time"]["call_timeout"] == {"value": 30.0, "source": "default"}
    assert report["servers"][1]["tools"] == []  # disabled: not started
    assert_no_secrets(done.stdout + done.stderr)


def test_check_connect_as_a_table_shows_what_differs_per_tool(tmp_path: Path) -> None:
    config = {"environment": "testing", "mcpServers": {"time": {**time_server(), "tools": {"get_*": {"jitter": 0}}}}}
    done = check(str(write(tmp_path, config)), "--connect", "--environment", "production")
    assert done.returncode == 0, done.stderr
    assert "environment: testing (from config)" in done.stdout
    assert "  tool get_current_time: as the server, except\n    jitter" in done.stdout
    assert "  tool convert_time: as the server\n" in done.stdout


def test_the_environment_flag_applies_when_the_file_names_none(tmp_path: Path) -> None:
    done = check(str(write(tmp_path, {"mcpServers": {"a": {"command": "x"}}})), "--json", "--environment", "testing")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["environment"] == "testing"
    assert report["servers"][0]["policy"]["failure_threshold"] == {"value": 20, "source": "environment"}


SSE_SERVER = """
import sys, uvicorn
from mcp.server import MCPServer
app = MCPServer("sse-test")

@app.tool()
def ping() -> str:
    return "pong"

uvicorn.run(app.sse_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="error")
"""


def serve(args: list[str], port: int) -> Iterator[None]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with anyio.from_thread.start_blocking_portal() as portal:
            portal.call(wait_for_port, port)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def http_chaos() -> Iterator[str]:
    """The bundled chaos server over streamable HTTP; yields its /mcp URL."""
    port = free_port()
    chaos = [sys.executable, "-m", "circuitbox", "chaos", "--transport", "http", "--port", str(port)]
    yield from (f"http://127.0.0.1:{port}/mcp" for _ in serve([*chaos, "--tool", "echo=healthy"], port))


@pytest.fixture
def sse_server() -> Iterator[str]:
    """A one-tool SDK server over SSE; yields its /sse URL."""
    port = free_port()
    yield from (f"http://127.0.0.1:{port}/sse" for _ in serve([sys.executable, "-c", SSE_SERVER, str(port)], port))


FAILING = {
    "crashes": {"command": sys.executable, "args": ["-c", "import sys; sys.stderr.write('boom: no licence\\n')"]},
    "silent": {"command": sys.executable, "args": ["-c", "pass"]},
    "hangs": {"command": sys.executable, "args": ["-c", "import time; time.sleep(60)"], "startup_timeout": 0.5},
    "refused": {"url": f"http://127.0.0.1:{free_port()}/mcp", "headers": {"X-Key": SECRET_HEADER}},
    "refused_sse": {"type": "sse", "url": f"http://127.0.0.1:{free_port()}/sse"},
}


@pytest.mark.anyio
async def test_connect_reports_each_downstream_that_fails_and_lists_the_others(
    http_chaos: str, sse_server: str
) -> None:
    off = {"command": "never-started", "enabled": False}
    servers = {"web": {"url": http_chaos}, **FAILING, "off": off, "events": {"type": "sse", "url": sse_server}}
    config = parse_config({"mcpServers": servers}, env={})
    with anyio.fail_after(60):
        tools, errors = await check_cmd.connect_all(config)
    assert list(tools) == ["web", "events"]
    assert "echo" in tools["web"]
    assert tools["events"] == ["ping"]
    assert set(errors) == set(FAILING)
    assert errors["crashes"].endswith("its stderr ended with: boom: no licence")
    assert errors["hangs"] == "TimeoutError: no tool list within startup_timeout (0.5s)"
    assert errors["silent"].startswith("MCPError")
    assert "Connect" in errors["refused"] and "Connect" in errors["refused_sse"]
    assert SECRET_HEADER not in str(errors)


def test_the_table_lists_each_tool_with_only_what_differs_from_its_server(tmp_path: Path) -> None:
    config = parse_config({"mcpServers": {"s": {"command": "x", "tools": {"a*": {"jitter": 0}}}}}, env={})
    out = io.StringIO()
    check_cmd.print_table(config, check_cmd.build_report(config, {"s": ["abc", "xyz"]}), out)
    text = out.getvalue()
    assert re.search(r"  tool abc: as the server, except\n    jitter +0 +tool:a\*\n", text)
    assert text.endswith("  tool xyz: as the server\n")


def test_a_tool_whose_error_classification_differs_shows_its_own_rules(tmp_path: Path) -> None:
    tools = {"git_*": {"tool_errors": "failure", "ignore_errors": ["bad revision"]}}
    config = parse_config({"mcpServers": {"git": {"command": "x", "tools": tools}}}, env={})
    out = io.StringIO()
    check_cmd.print_table(config, check_cmd.build_report(config, {"git": ["git_show"]}), out)
    tool = out.getvalue().split("tool git_show: as the server, except")[1]
    rules = [line.split(None, 2) for line in tool.split("counts as the first")[1].splitlines()[1:]]
    assert rules == [
        ["ignored", "tool:git_*", "bad revision"],
        ["ignored", "default", INPUT_VALIDATION],
        ["failure", "tool:git_*", "(any other text)"],
    ]


def test_a_downstream_that_fails_under_connect_exits_1_with_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, {"mcpServers": {"silent": FAILING["silent"]}})
    assert check_cmd.run(namespace(path, connect=True)) == 1
    out, err = capsys.readouterr()
    assert out.startswith("environment: production")
    assert err.startswith("circuitbox: server 'silent' could not be listed: MCPError")


def test_a_config_error_under_connect_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_cmd.run(namespace(write(tmp_path, {"mcpServers": {}}), connect=True)) == 2
    assert capsys.readouterr().err == "circuitbox: config error: mcpServers: no servers configured\n"


class Pages:
    """A session stand-in that serves its tools two per page."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.cursors: list[str | None] = []

    async def send_request(self, request: types.ListToolsRequest, result_type: object) -> types.ListToolsResult:
        cursor = request.params.cursor if request.params else None
        self.cursors.append(cursor)
        start = int(cursor or 0)
        page = [types.Tool(name=n, input_schema={"type": "object"}) for n in self.names[start : start + 2]]
        more = start + 2 < len(self.names)
        return types.ListToolsResult(tools=page, next_cursor=str(start + 2) if more else None)


@pytest.mark.anyio
async def test_listing_follows_every_page() -> None:
    session = Pages(["a", "b", "c", "d", "e"])
    assert await check_cmd._all_tools(session) == ["a", "b", "c", "d", "e"]
    assert session.cursors == [None, "2", "4"]


def test_an_error_is_described_in_one_line_without_its_groups() -> None:
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [OSError("line one\nline two")])])
    assert check_cmd.describe(nested) == "OSError: line one"
    assert check_cmd.describe(ValueError()) == "ValueError"


def test_connect_warns_about_each_tool_override_that_matches_no_tool_of_a_real_downstream(tmp_path: Path) -> None:
    from tests.proxy.harness import chaos

    tools = {
        "echo": {"call_timeout": 5},  # matches
        "ec*": {"jitter": 0},  # matches
        "ehco": {"call_timeout": 5},  # a typo
        "c__boom": {"call_timeout": 5},  # the published name where the server's own belongs
        "remove_*": {"call_timeout": 5},  # a glob that matches nothing
    }
    config = {"mcpServers": {"c": chaos("echo=healthy", "boom=error") | {"tools": tools}}}
    done = check(str(write(tmp_path, config)), "--connect")
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("circuitbox: warning: ")]
    assert warnings == [
        "circuitbox: warning: mcpServers.c.tools.ehco: matches no tool of 'c' (did you mean 'echo'?); "
        "its tools: echo, boom, chaos_control",
        "circuitbox: warning: mcpServers.c.tools.c__boom: matches no tool of 'c' (keys are the server's own tool "
        "names: 'boom'); its tools: echo, boom, chaos_control",
        "circuitbox: warning: mcpServers.c.tools.remove_*: matches no tool of 'c'; "
        "its tools: echo, boom, chaos_control",
    ]
    assert "warning" not in check(str(write(tmp_path, config))).stderr  # without --connect no tool is known


def test_the_unmatched_warning_lists_at_most_ten_tools_and_says_so_for_a_server_without_any() -> None:
    config = parse_config(
        {"mcpServers": {"s": {"command": "x", "tools": {"zz": {}}}, "e": {"command": "y", "tools": {"a": {}}}}}, env={}
    )
    many = [f"t{i}" for i in range(12)]
    warnings = check_cmd.unmatched_overrides(config, {"s": many, "e": []})
    assert warnings[0].endswith("its tools: t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, ... (12 in all)")
    assert warnings[1].endswith("its tools: none")


def test_check_connect_says_where_retry_and_last_known_good_apply_and_refuses_them_on_a_writing_tool(
    tmp_path: Path,
) -> None:
    from tests.proxy.harness import chaos

    entry = {
        **chaos("get=healthy", "put=healthy", "upd=healthy", read_only=("get",), idempotent=("upd",)),
        "breaker": {"retry": {"attempts": 2}, "fallback": {"last_known_good": {"max_age": 60}}},
    }
    done = check(str(write(tmp_path, {"mcpServers": {"c": entry}})), "--connect", "--json")
    assert done.returncode == 0, done.stderr
    tools = {t["tool"]: t for t in json.loads(done.stdout)["servers"][0]["tools"]}
    assert (tools["get"]["retry"], tools["get"]["last_known_good"]) == (
        "applies (readOnlyHint)",
        "applies (readOnlyHint)",
    )
    assert tools["upd"]["retry"] == "applies (idempotentHint)"
    assert tools["upd"]["last_known_good"] == "does not apply (no readOnlyHint)"
    assert tools["put"]["retry"] == "does not apply (neither readOnlyHint nor idempotentHint)"
    assert policy_value(tools["get"], "retry") == {"attempts": 2, "backoff": 0.1, "max_backoff": 2.0, "budget": 0.2}

    entry["tools"] = {"put": {"idempotent": True, "fallback": {"last_known_good": {}}}}
    done = check(str(write(tmp_path, {"mcpServers": {"c": entry}})), "--connect")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "circuitbox: config error: mcpServers.c.tools.put.fallback: last_known_good is for read-only tools, and "
        "'put' of 'c' is not listed with readOnlyHint: its calls are never answered with a kept result"
    )
    entry["tools"] = {"put": {"idempotent": True}}
    table = check(str(write(tmp_path, {"mcpServers": {"c": entry}})), "--connect").stdout
    assert "  tool put: as the server, except\n    idempotent" in table
    assert "    retry: applies (idempotent: true)\n    last_known_good: does not apply (no readOnlyHint)" in table


def policy_value(tool: dict[str, Any], field: str) -> Any:
    return tool["policy"][field]["value"]
