"""Per-server `include` / `exclude` / `rename` with real downstreams: what is listed is what is callable, and
`check --connect` shows what is published."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import MCPError

from circuitbox.config.load import ConfigError, parse_config
from circuitbox.server.proxy import Proxy
from tests.config.support import check, write
from tests.proxy.harness import chaos, proxy_session

pytestmark = pytest.mark.anyio

TOOLS = ("echo=healthy", "add=add", "git_reset=error:would have reset", "git_log=healthy")


def _stats(result: types.CallToolResult) -> dict[str, Any]:
    assert result.structured_content is not None
    return dict(result.structured_content)


async def test_excluded_tools_are_neither_listed_nor_callable_and_a_renamed_tool_answers_under_its_new_name(
    tmp_path: Path,
) -> None:
    config = {
        "mcpServers": {
            "c": {**chaos(*TOOLS), "include": ["git_*", "echo", "chaos_control"], "exclude": ["*reset"]},
            "r": {**chaos("echo=healthy", seed=2), "rename": {"echo": "say"}, "exclude": ["chaos_*"]},
        }
    }
    async with proxy_session(tmp_path, config) as session:
        with anyio.fail_after(60):
            listed = {tool.name for tool in (await session.list_tools()).tools}
            for hidden in ("c__git_reset", "c__add", "r__echo"):
                with pytest.raises(MCPError, match="Unknown tool"):
                    await session.call_tool(hidden, {})
            said = await session.call_tool("r__say", {"text": "hi"})
            logged = await session.call_tool("c__git_log", {})
            stats = _stats(await session.call_tool("c__chaos_control", {"action": "stats"}))
            status = _stats(await session.call_tool("circuit_status", {"server": "r"}))
    assert {n for n in listed if n.startswith(("c__", "r__"))} == {
        "c__git_log",
        "c__echo",
        "c__chaos_control",
        "r__say",
    }
    assert not said.is_error and not logged.is_error
    assert stats["tools"]["git_reset"]["calls"] == 0 and stats["tools"]["add"]["calls"] == 0
    assert [b["tool"] for b in status["breakers"]] == ["echo"]  # the breaker keeps the downstream's name


async def test_a_server_published_without_namespace_does_not_forward_an_excluded_or_renamed_away_name(
    tmp_path: Path,
) -> None:
    entry = {**chaos(*TOOLS), "namespace": "", "exclude": ["git_reset"], "rename": {"add": "plus"}}
    async with proxy_session(tmp_path, {"mcpServers": {"c": entry}}) as session:
        with anyio.fail_after(60):
            for hidden in ("git_reset", "add"):
                with pytest.raises(MCPError, match="circuitbox publishes"):  # circuitbox's answer: not forwarded
                    await session.call_tool(hidden, {"a": 1, "b": 2})
            plus = await session.call_tool("plus", {"a": 1, "b": 2})
            with pytest.raises(MCPError) as unlisted:  # a name in no listing still gets the server's own answer
                await session.call_tool("not_listed_anywhere", {})
            stats = _stats(await session.call_tool("chaos_control", {"action": "stats"}))
    assert not plus.is_error and plus.structured_content is not None
    assert unlisted.value.error.message == "Unknown tool: not_listed_anywhere"
    assert stats["tools"]["git_reset"]["calls"] == 0 and stats["tools"]["add"]["calls"] == 1


def test_check_connect_shows_what_is_published_and_warns_about_control_keys_that_match_nothing(
    tmp_path: Path,
) -> None:
    entry = {
        **chaos(*TOOLS),
        "include": ["git_*", "echo", "nothing_*"],
        "exclude": ["*reset"],
        "rename": {"echo": "say", "gone": "x"},
        "server_max_concurrent": 4,
    }
    path = write(tmp_path, {"environment": "testing", "mcpServers": {"c": entry}})
    done = check(str(path), "--connect", "--json")
    assert done.returncode == 0, done.stderr
    (server,) = json.loads(done.stdout)["servers"]
    published = {t["tool"]: t["published"] for t in server["tools"]}
    assert published == {
        "echo": "c__say",
        "add": None,
        "git_reset": None,
        "git_log": "c__git_log",
        "chaos_control": None,
    }
    policy = server["policy"]
    assert policy["server_max_concurrent"] == {"value": 4, "source": "server"}
    assert policy["exclude"] == {"value": ["*reset"], "source": "server"}
    assert policy["rename"] == {"value": {"echo": "say", "gone": "x"}, "source": "server"}
    assert policy["crash_loop_restarts"] == {"value": 5, "source": "default"}
    assert policy["crash_loop_window"] == {"value": 60.0, "source": "default"}
    assert "server 'c': include 'nothing_*' matches no tool" in done.stderr
    assert "server 'c': rename 'gone' matches no tool" in done.stderr
    assert "exclude" not in done.stderr

    table = check(str(path), "--connect")
    assert table.returncode == 0, table.stderr
    assert "  tool echo (published as c__say): as the server\n" in table.stdout
    assert "  tool git_reset: not published (include / exclude): neither listed nor callable\n" in table.stdout
    assert "  tool git_log: as the server\n" in table.stdout
    assert "server_max_concurrent" in table.stdout and "crash_loop_window" in table.stdout


def test_renaming_two_tools_to_one_name_or_to_a_name_no_client_accepts_is_a_config_error() -> None:
    with pytest.raises(Exception) as err:
        parse_config(
            {"mcpServers": {"c": {"command": "x", "rename": {"a": "same", "b": "same", "c": "no spaces"}}}}, env={}
        )
    assert err.value.args[0] == (
        "mcpServers.c.rename.b: 'same' is also the new name of 'a'; mcpServers.c.rename.c: 'no spaces' is not a "
        "tool name (1 to 128 letters, digits, '_', '-' or '.')"
    )


async def test_a_reload_that_changes_include_exclude_or_rename_republishes_without_reconnecting() -> None:
    first = parse_config({"environment": "testing", "mcpServers": {"c": chaos(*TOOLS)}}, env={})
    proxy = Proxy(first)
    async with anyio.create_task_group() as tg:
        await proxy.start(tg)
        with anyio.fail_after(60):
            await proxy.wait_first_attempts()
            before = set(proxy.catalog.tools)
            downstream = proxy.downstreams["c"]
            assert not (await proxy.call("c__add", {"a": 1, "b": 2})).is_error
            entry = {**chaos(*TOOLS), "exclude": ["add", "git_*"], "rename": {"echo": "say"}}
            second = parse_config({"environment": "testing", "mcpServers": {"c": entry}}, env={})
            report = await proxy.reload(second)
            after = set(proxy.catalog.tools)
            with pytest.raises(MCPError, match="Unknown tool"):
                await proxy.call("c__add", {"a": 1, "b": 2})
            said = await proxy.call("c__say", {"text": "hi"})
        tg.cancel_scope.cancel()
    assert report["restarted"] == [] and proxy.downstreams["c"] is downstream  # same connection
    assert before >= {"c__add", "c__echo", "c__git_log", "c__git_reset"}
    assert after == {"c__say", "c__chaos_control"}
    assert not said.is_error
    assert proxy.find_breaker("c", "add") is None  # its breaker went with it


def test_clines_disabled_tools_are_read_as_exclude() -> None:
    config = parse_config(
        {
            "mcpServers": {
                "a": {"command": "x", "disabledTools": ["git_reset"], "exclude": ["write_*"]},
                "b": {"command": "y", "disabledTools": "not a list"},
            }
        },
        env={},
    )
    assert config.servers["a"].exclude == ("write_*", "git_reset") and not config.servers["a"].publishes("git_reset")
    assert config.servers["b"].exclude == ()
    assert config.warnings == (
        "mcpServers.a.disabledTools: read as exclude (neither listed nor callable)",
        "mcpServers.b.disabledTools: ignored (an agent client's key circuitbox does not use)",
    )
    with pytest.raises(ConfigError, match=r"mcpServers.c.exclude: expected a list"):
        parse_config({"mcpServers": {"c": {"command": "x", "disabledTools": ["a"], "exclude": "b"}}}, env={})
