"""Invalid configs: every error names the key path and the problem; `circuitbox check` exits 2 without a traceback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from circuitbox.config.load import ConfigError, load_config, parse_config
from tests.config.support import check, write


def servers(**entries: Any) -> dict[str, Any]:
    return {"mcpServers": entries}


INVALID: list[tuple[dict[str, Any], str]] = [
    (
        servers(docker={"command": "d", "breaker": {"failure_treshold": 3}}),
        "mcpServers.docker.breaker.failure_treshold: unknown key (did you mean failure_threshold?)",
    ),
    (servers(d={"command": "d", "comand": "x"}), "mcpServers.d.comand: unknown key (did you mean command?)"),
    (
        servers(d={"command": "d", "tools": {"t*": {"calltimeout": 1}}}),
        "mcpServers.d.tools.t*.calltimeout: unknown key",
    ),
    ({"enviroment": "x", **servers(d={"command": "d"})}, "enviroment: unknown key (did you mean environment?)"),
    ({"defaults": {"zzz": 1}, **servers(d={"command": "d"})}, "defaults.zzz: unknown key"),
    ({"admin": {"enable": True}, **servers(d={"command": "d"})}, "admin.enable: unknown key"),
    (servers(d={"command": 5}), "mcpServers.d.command: expected a string, got an integer"),
    (servers(d={"command": "d", "args": "-v"}), "mcpServers.d.args: expected a list, got a string"),
    (servers(d={"command": "d", "args": ["a", 2]}), "mcpServers.d.args[1]: expected a string, got an integer"),
    (servers(d={"command": "d", "env": {"PORT": 80}}), "mcpServers.d.env.PORT: expected a string, got an integer"),
    (servers(d={"command": "d", "enabled": "yes"}), "mcpServers.d.enabled: expected true or false, got a string"),
    (servers(d={"command": "d", "breaker": []}), "mcpServers.d.breaker: expected a table (JSON object), got a list"),
    (servers(d="docker"), "mcpServers.d: expected a table (JSON object), got a string"),
    (servers(d={"command": "d", "breaker": {"timeout": "60"}}), "mcpServers.d.breaker.timeout: expected a number"),
    (servers(d={"command": "d", "breaker": {"failure_threshold": True}}), "failure_threshold: expected an integer"),
    (servers(d={"command": "d", "breaker": {"failure_threshold": 2.5}}), "failure_threshold: expected an integer"),
    (servers(d={"command": "d", "breaker": {"failure_threshold": None}}), "failure_threshold: expected an integer"),
    (
        servers(d={"command": "d", "breaker": {"failure_rate_threshold": 1.5}}),
        "mcpServers.d.breaker.failure_rate_threshold: failure_rate_threshold must be in (0, 1], got 1.5",
    ),
    (
        servers(d={"command": "d", "tools": {"rm": {"call_timeout": 0}}}),
        "mcpServers.d.tools.rm.call_timeout: call_timeout must be in (0, 604800]",
    ),
    ({"defaults": {"jitter": 1}, **servers(d={"command": "d"})}, "defaults.jitter: jitter must be in [0, 1)"),
    (
        servers(d={"command": "d", "breaker": {"sliding_window_type": "sessions"}}),
        "mcpServers.d.breaker.sliding_window_type: expected 'count' or 'time'",
    ),
    (
        servers(d={"command": "d", "type": "websocket"}),
        "mcpServers.d.type: expected 'stdio', 'http', 'streamable-http'",
    ),
    (servers(d={"command": "d", "startup_timeout": 0}), "mcpServers.d.startup_timeout: Input should be greater than 0"),
    (
        servers(d={"command": "d", "breaker": {"call_timeout": 30, "max_call_timeout": 10}}),
        "mcpServers.d.breaker.max_call_timeout: must be between call_timeout (30) and a week (604800), got 10",
    ),
    (
        {"shutdown_timeout": -1, **servers(d={"command": "d"})},
        "shutdown_timeout: Input should be greater than or equal",
    ),
    ({"metrics": {"port": 70000}, **servers(d={"command": "d"})}, "metrics.port: Input should be less than or equal"),
    (servers(d={"command": "${DOCKER_BIN}"}), "mcpServers.d.command: environment variable DOCKER_BIN is not set"),
    (servers(d={"command": "d", "args": ["${A:-1}", "${B}"]}), "mcpServers.d.args[1]: environment variable B is not"),
    (servers(d={"command": "d", "env": {"K": "${TOKEN}"}}), "mcpServers.d.env.K: environment variable TOKEN"),
    (servers(d={"url": "http://${HOST}/mcp"}), "mcpServers.d.url: environment variable HOST is not set"),
    (servers(d={"url": "http://h", "headers": {"Auth": "${T}"}}), "mcpServers.d.headers.Auth: environment variable T"),
    (
        {"servers": {"gh": {"command": "gh-mcp", "env": {"GITHUB_TOKEN": "${input:token}"}}}},
        "servers.gh.env.GITHUB_TOKEN: ${input:token} asks VS Code to prompt for a value, which circuitbox cannot do",
    ),
    (servers(), "mcpServers: no servers configured"),
    ({"servers": {}}, "servers: no servers configured"),
    ({"environment": "production"}, "mcpServers: no servers configured"),
    ({**servers(a={"command": "a"}), "servers": {"b": {"command": "b"}}}, "servers: set either mcpServers or servers"),
    (servers(d={}), "mcpServers.d.command: required"),
    (servers(d={"type": "sse"}), "mcpServers.d.url: required for type sse"),
    (servers(d={"type": "stdio", "url": "http://h"}), "mcpServers.d.command: required"),
    (servers(d={"command": "d", "url": "http://h"}), "mcpServers.d: set either command (stdio) or url"),
    (servers(d={"url": "http://a", "serverUrl": "http://b"}), "mcpServers.d.serverUrl: unknown key"),
    (servers(d={"command": "d", "enabled": True, "disabled": True}), "mcpServers.d: enabled and disabled contradict"),
    (servers(d={"command": "d", "preset": "mongo"}), "mcpServers.d.preset: unknown preset 'mongo'; valid: claude"),
    ({"environment": "prod", **servers(d={"command": "d"})}, "environment: unknown environment 'prod'; valid: dev"),
    (servers(**{"my server": {"command": "d"}}), "mcpServers.my server.namespace: 'my server' may only hold letters"),
    (servers(d={"command": "d", "namespace": "a/b"}), "mcpServers.d.namespace: 'a/b' may only hold letters"),
    (
        servers(d={"command": "d", "breaker": {"fallback": {"text": "a", "tool": "b"}}}),
        'mcpServers.d.breaker.fallback: expected {"text": ...}, {"tool": "namespace__tool"} or {"last_known_good"',
    ),
    (servers(d={"command": "d", "failure_errors": ["ok", "("]}), "mcpServers.d.failure_errors[1]: invalid regular"),
    (
        servers(d={"command": "d", "tool_errors": "ignore", "breaker": {"tool_errors": "failure"}}),
        "mcpServers.d.tool_errors: set both here and in mcpServers.d.breaker.tool_errors",
    ),
    (
        servers(d={"command": "d", "tools": {"t": {"tool_errors": "sometimes"}}}),
        "tools.t.tool_errors: expected 'classified', 'failure' or 'ignore'",
    ),
    (servers(d={"command": "d", "breaker": {"retry": {"attempts": 0}}}), "mcpServers.d.breaker.retry.attempts: "),
    (
        servers(d={"command": "d", "breaker": {"retry": {"attempt": 2}}}),
        "mcpServers.d.breaker.retry.attempt: unknown key (did you mean attempts?)",
    ),
    (servers(d={"command": "d", "tools": {"t": {"retry": 3}}}), "tools.t.retry: expected a table"),
    (servers(d={"command": "d", "tools": {"t": {"tool_list": "gone"}}}), "tools.t.tool_list: expected 'annotate'"),
    (
        servers(d={"command": "d", "breaker": {"fallback": {"last_known_good": {"max_age": 0}}}}),
        "mcpServers.d.breaker.fallback.last_known_good.max_age: expected a number of seconds above 0",
    ),
    (
        servers(d={"command": "d", "breaker": {"fallback": {"last_known_good": 300}}}),
        'mcpServers.d.breaker.fallback.last_known_good: expected {"max_age": seconds}',
    ),
    (
        servers(d={"command": "d", "breaker": {"fallback": {"last_known_good": {}, "text": 5}}}),
        "mcpServers.d.breaker.fallback.text: expected a string, got int",
    ),
    (servers(d={"command": "d"}) | {"list_changed_interval": -1}, "list_changed_interval: Input should be greater"),
]


@pytest.mark.parametrize(("data", "message"), INVALID, ids=[m.split(":")[0] + "|" + m[-20:] for _, m in INVALID])
def test_an_invalid_config_names_the_key_path_and_the_problem(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, env={})
    assert message in str(caught.value)


def test_every_problem_of_a_file_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(servers(a={"command": 1}, b={"command": "b", "x": 1}), env={})
    assert str(caught.value) == "mcpServers.a.command: expected a string, got an integer; mcpServers.b.x: unknown key"


def test_a_bad_environment_variable_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^\$CIRCUITBOX_ENV: unknown environment 'qa'"):
        parse_config(servers(d={"command": "d"}), env={"CIRCUITBOX_ENV": "qa"})
    with pytest.raises(ConfigError, match=r"^--environment: unknown environment 'qa'"):
        parse_config(servers(d={"command": "d"}), environment="qa", env={})


def test_a_top_level_that_is_not_a_table_is_an_error() -> None:
    with pytest.raises(ConfigError, match="expected a table"):
        parse_config([1, 2], source="x.json")  # type: ignore[arg-type]


def test_malformed_json_and_toml_name_the_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"bad\.json: invalid JSON at line 3, column 1: "):
        load_config(write(tmp_path, '{"mcpServers": {\n  "a": {"command": "x"},\n}}', "bad.json"))
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML: .*line 2, column"):
        load_config(write(tmp_path, "[mcpServers.a]\ncommand = \n", "bad.toml"))


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.json: cannot read: No such file"):
        load_config(tmp_path / "missing.json")
    (tmp_path / "latin.json").write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ConfigError, match=r"latin\.json: cannot read: .*utf-8"):
        load_config(tmp_path / "latin.json")


BAD_FILES: list[tuple[str, str, str]] = [
    ("unknown.json", '{"mcpServers": {"docker": {"command": "d", "breaker": {"failure_treshold": 3}}}}',
     "circuitbox: config error: mcpServers.docker.breaker.failure_treshold: unknown key"),
    ("type.json", '{"mcpServers": {"docker": {"command": "d", "startup_timeout": "soon"}}}',
     "circuitbox: config error: mcpServers.docker.startup_timeout: expected a number, got a string"),
    ("unset.json", '{"mcpServers": {"k8s": {"url": "http://h", "headers": {"Authorization": "Bearer ${K8S_TOKEN}"}}}}',
     "circuitbox: config error: mcpServers.k8s.headers.Authorization: environment variable K8S_TOKEN is not set"),
    ("malformed.json", '{"mcpServers": {"a": {"command": "x",}}}',
     "invalid JSON at line 1, column 38"),
    ("malformed.toml", '[mcpServers.a]\ncommand = "x\n',
     "invalid TOML"),
    ("none.json", '{"environment": "production", "mcpServers": {}}',
     "circuitbox: config error: mcpServers: no servers configured"),
    ("none.toml", 'environment = "production"\n',
     "circuitbox: config error: mcpServers: no servers configured"),
    ("env.json", '{"environment": "live", "mcpServers": {"a": {"command": "x"}}}',
     "circuitbox: config error: environment: unknown environment 'live'; valid: development, production"),
    ("range.toml", '[mcpServers.a]\ncommand = "x"\n[mcpServers.a.tools."rm_*"]\nfailure_threshold = 0\n',
     "circuitbox: config error: mcpServers.a.tools.rm_*.failure_threshold: failure_threshold must be in [1, 100000]"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "text", "message"), BAD_FILES, ids=[n for n, _, _ in BAD_FILES])
def test_check_exits_2_naming_the_key_and_never_prints_a_traceback(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    done = check(str(write(tmp_path, text, name)))
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stdout == ""


def test_check_without_a_file_to_find_exits_2(tmp_path: Path) -> None:
    done = check(cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("circuitbox: config error: no config file")


@pytest.mark.parametrize(
    ("name", "entry", "key"),
    [
        ("a__b", {"command": "d"}, "mcpServers.a__b"),
        ("a_", {"command": "d"}, "mcpServers.a_"),
        ("a", {"command": "d", "namespace": "x__y"}, "mcpServers.a.namespace"),
        ("ok", {"command": "d", "namespace": "x_"}, "mcpServers.ok.namespace"),
    ],
)
def test_a_server_name_or_namespace_that_could_collide_around_the_separator_is_refused(
    name: str, entry: dict[str, Any], key: str
) -> None:
    # Server a__b's tool c and server a's tool b__c would both be a__b__c (breaker and published name).
    with pytest.raises(ConfigError, match=re.escape(key) + r": .*'__'"):
        parse_config(servers(**{name: entry, "a": {"command": "d"}} if name != "a" else {name: entry}))


def test_servers_whose_names_only_share_a_prefix_keep_apart_breaker_names() -> None:
    config = parse_config(servers(a={"command": "d"}, a_b={"command": "d"}))
    names = {config.policy("a", "b__c").breaker.name, config.policy("a_b", "c").breaker.name}
    assert names == {"a__b__c", "a_b__c"}


# One file with a problem of every kind the loader finds, each in a different place: all must be named at once.
EVERY_KIND = {
    "environment": "qa",
    "defaults": {"jitter": 2},
    "mcpServers": {
        "typo": {"command": "a", "comand": "b"},
        "unset": {"command": "a", "env": {"K": "${CB_UNSET_ONE}"}, "args": ["${CB_UNSET_TWO}"]},
        "remote": {"type": "sse", "headers": {"Authorization": "Bearer ${CB_UNSET_THREE}"}},
        "bad__name": {"command": "a", "preset": "nosuch"},
        "ranges": {"command": "a", "breaker": {"failure_rate_threshold": 3}, "tools": {"t": {"call_timeout": -1}}},
        "both": {"command": "a", "url": "http://127.0.0.1:1/mcp", "namespace": "has space"},
        "regex": {"command": "a", "failure_errors": ["("]},
    },
}
EVERY_PROBLEM = [
    "environment: unknown environment 'qa'",
    "defaults.jitter: jitter must be in [0, 1)",
    "mcpServers.typo.comand: unknown key",
    "mcpServers.unset.env.K: environment variable CB_UNSET_ONE is not set",
    "mcpServers.unset.args[0]: environment variable CB_UNSET_TWO is not set",
    "mcpServers.remote.url: required for type sse",
    "mcpServers.remote.headers.Authorization: environment variable CB_UNSET_THREE is not set",
    "mcpServers.bad__name: 'bad__name' may not contain '__'",
    "mcpServers.bad__name.preset: unknown preset 'nosuch'",
    "mcpServers.ranges.breaker.failure_rate_threshold: failure_rate_threshold must be in (0, 1]",
    "mcpServers.ranges.tools.t.call_timeout: call_timeout must be in (0, 604800]",
    "mcpServers.both: set either command (stdio) or url (http, sse), not both",
    "mcpServers.both.namespace: 'has space' may only hold letters",
    "mcpServers.regex.failure_errors[0]: invalid regular expression",
]


def test_every_problem_of_every_kind_is_named_at_once_not_only_the_first() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(EVERY_KIND, env={})
    problems = caught.value.problems
    for expected in EVERY_PROBLEM:
        assert sum(expected in p for p in problems) == 1, (expected, problems)
    assert len(problems) == len(EVERY_PROBLEM), problems
    assert str(caught.value) == "; ".join(problems)


def test_check_and_serve_print_every_problem_on_its_own_line(tmp_path: Path) -> None:
    path = write(tmp_path, EVERY_KIND)
    done = check(str(path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert all(line.startswith("circuitbox: config error: ") for line in lines), lines
    assert len(lines) == len(EVERY_PROBLEM) and all(any(e in line for line in lines) for e in EVERY_PROBLEM)
    served = subprocess.run(
        [sys.executable, "-m", "circuitbox", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert served.returncode == 2 and served.stderr.strip().splitlines() == lines


def test_a_problem_in_one_entry_still_lets_the_others_be_checked_and_a_broken_top_level_stops_there() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"mcpServers": {"a": {"command": 1}, "b": {"command": "${CB_UNSET_B}"}}}, env={})
    assert caught.value.problems == (
        "mcpServers.a.command: expected a string, got an integer",
        "mcpServers.b.command: environment variable CB_UNSET_B is not set (write ${CB_UNSET_B:-default} for a default)",
    )
    with pytest.raises(ConfigError) as caught:
        parse_config({"mcpServers": {"a": {"command": 1}}}, env={})
    assert caught.value.problems == ("mcpServers.a.command: expected a string, got an integer",)  # not "no servers"
    with pytest.raises(ConfigError) as caught:
        parse_config({"mcpServers": [], "admin": 3}, env={})
    assert len(caught.value.problems) == 2
