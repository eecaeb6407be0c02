"""Loading valid configs: both shapes, JSON and TOML, transports, expansion, environment, discovery, secrets."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from circuitbox.config.load import ConfigError, discover_config_path, load_config, parse_config
from tests.config.support import one, write

DESIGN_EXAMPLE = {
    "environment": "production",
    "defaults": {"failure_threshold": 5, "timeout": 60},
    "admin": {"enabled": False},
    "metrics": {"port": 9464, "host": "127.0.0.1"},
    "mcpServers": {
        "docker": {
            "command": "docker-mcp",
            "args": [],
            "env": {"DOCKER_HOST": "${DOCKER_HOST}"},
            "preset": "docker",
            "breaker": {"failure_threshold": 3},
            "tools": {
                "remove_*": {"call_timeout": 10, "fallback": {"text": "Docker is unavailable; nothing was removed."}}
            },
        },
        "k8s": {
            "type": "http",
            "url": "http://127.0.0.1:9000/mcp",
            "headers": {"Authorization": "Bearer ${K8S_TOKEN}"},
        },
    },
}
SECRETS = {"DOCKER_HOST": "tcp://docker-secret-host:2376", "K8S_TOKEN": "k8s-secret-token"}


def test_the_design_example_loads_with_everything_it_states() -> None:
    config = parse_config(DESIGN_EXAMPLE, source="example", env=SECRETS)
    assert (config.environment, config.environment_source, config.source) == ("production", "config", "example")
    assert (config.admin_enabled, config.metrics_port, config.metrics_host) == (False, 9464, "127.0.0.1")
    docker, k8s = config.servers.values()
    assert (docker.name, docker.transport, docker.command, docker.args) == ("docker", "stdio", "docker-mcp", ())
    assert dict(docker.env) == {"DOCKER_HOST": SECRETS["DOCKER_HOST"]}
    assert (docker.namespace, docker.preset, docker.preset_source) == ("docker", "docker", "explicit")
    assert (docker.startup_timeout, docker.enabled, docker.cwd, docker.url) == (30, True, None, None)
    assert (k8s.transport, k8s.url, k8s.command) == ("http", "http://127.0.0.1:9000/mcp", None)
    assert dict(k8s.headers) == {"Authorization": "Bearer k8s-secret-token"}
    assert (k8s.preset, k8s.preset_source) == ("kubernetes", "inferred")
    removal = config.policy("docker", "remove_image")
    assert (removal.call_timeout, removal.breaker.failure_threshold) == (10, 3)


def test_the_vs_code_servers_shape_loads_the_same() -> None:
    config = parse_config(
        {"servers": {"fs": {"type": "stdio", "command": "fs-mcp"}, "web": {"type": "sse", "url": "http://h/sse"}}},
        env={},
    )
    assert [(s.name, s.transport) for s in config.servers.values()] == [("fs", "stdio"), ("web", "sse")]


def test_servers_keep_the_order_of_the_file() -> None:
    names = ["zeta", "alpha", "mid"]
    config = parse_config({"mcpServers": {n: {"command": n} for n in names}}, env={})
    assert list(config.servers) == names


@pytest.mark.parametrize(
    ("entry", "transport"),
    [
        ({"command": "x"}, "stdio"),
        ({"type": "stdio", "command": "x"}, "stdio"),
        ({"url": "http://h/mcp"}, "http"),
        ({"type": "http", "url": "http://h/mcp"}, "http"),
        ({"type": "streamable-http", "url": "http://h/mcp"}, "http"),
        ({"type": "sse", "url": "http://h/sse"}, "sse"),
    ],
)
def test_the_transport_follows_type_or_else_command_or_url(entry: dict[str, str], transport: str) -> None:
    assert one(entry).servers["srv"].transport == transport


def test_circuitbox_keys_of_a_server_are_read() -> None:
    config = one({"command": "x", "cwd": "/tmp", "namespace": "", "startup_timeout": 5, "enabled": False})
    server = config.servers["srv"]
    assert (server.cwd, server.namespace, server.startup_timeout, server.enabled) == ("/tmp", "", 5, False)


def test_windsurfs_server_url_is_read_as_the_url() -> None:
    server = one({"serverUrl": "https://h/mcp"}).servers["srv"]
    assert (server.transport, server.url) == ("http", "https://h/mcp")


def test_clines_disabled_key_is_read_as_enabled_false() -> None:
    assert one({"command": "x", "disabled": True}).servers["srv"].enabled is False
    assert one({"command": "x", "disabled": False, "enabled": True}).servers["srv"].enabled is True


def test_agent_client_keys_are_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    data = {
        "inputs": [{"id": "token", "type": "promptString"}],
        "servers": {
            "a": {"command": "x", "envFile": "${workspaceFolder}/.env", "dev": {"watch": "src/**"}},
            "b": {"command": "y", "autoApprove": [], "timeout": 60, "description": "b", "transportType": "stdio"},
        },
    }
    with caplog.at_level(logging.WARNING, logger="circuitbox.config"):
        config = parse_config(data, source="mcp.json", env={})
    assert list(config.servers) == ["a", "b"]
    expected = [
        "inputs",
        "servers.a.dev",
        "servers.a.envFile",
        "servers.b.autoApprove",
        "servers.b.description",
        "servers.b.timeout",
        "servers.b.transportType",
    ]
    assert [w.split(":")[0] for w in config.warnings] == expected
    assert all(r.levelno == logging.WARNING and r.getMessage().startswith("mcp.json: ") for r in caplog.records)
    assert len(caplog.records) == len(expected)


def test_variables_expand_in_command_args_cwd_env_url_and_headers() -> None:
    env = {"BIN": "/opt/bin", "HOME_DIR": "/home/me", "TOKEN": "t0k", "HOST": "example.org"}
    stdio = parse_config(
        {
            "mcpServers": {
                "a": {
                    "command": "${BIN}/server",
                    "args": ["--dir", "${HOME_DIR}/data", "--mode=${MODE:-fast}", "$HOME ${env:TOKEN} $${literal}"],
                    "cwd": "${HOME_DIR}",
                    "env": {"API_TOKEN": "${TOKEN}", "EMPTY": "${UNSET:-}"},
                },
                "b": {"url": "https://${HOST}/mcp", "headers": {"X-Key": "${TOKEN}", "X-Env": "${STAGE:-dev}"}},
            }
        },
        env=env,
    )
    a, b = stdio.servers.values()
    assert a.command == "/opt/bin/server"
    assert a.args == ("--dir", "/home/me/data", "--mode=fast", "$HOME t0k ${literal}")
    assert (a.cwd, dict(a.env)) == ("/home/me", {"API_TOKEN": "t0k", "EMPTY": ""})
    assert (b.url, dict(b.headers)) == ("https://example.org/mcp", {"X-Key": "t0k", "X-Env": "dev"})


def test_a_default_applies_to_an_empty_variable_and_an_empty_variable_without_default_stays_empty() -> None:
    config = parse_config({"mcpServers": {"s": {"command": "x", "args": ["${A:-fallback}", "[${A}]"]}}}, env={"A": ""})
    assert config.servers["s"].args == ("fallback", "[]")


def test_a_disabled_server_needs_no_variables() -> None:
    config = one({"command": "${NOT_SET}", "enabled": False})
    assert config.servers["srv"].command == "${NOT_SET}"


def test_the_environment_comes_from_the_file_then_the_flag_then_the_variables() -> None:
    data = {"mcpServers": {"s": {"command": "x"}}}
    assert parse_config({**data, "environment": "testing"}, environment="staging").environment == "testing"
    flagged = parse_config(data, environment="Staging", env={"CIRCUITBOX_ENV": "testing"})
    assert (flagged.environment, flagged.environment_source) == ("staging", "--environment")
    by_var = parse_config(data, env={"CIRCUITBOX_ENV": "development", "ENVIRONMENT": "testing"})
    assert (by_var.environment, by_var.environment_source) == ("development", "$CIRCUITBOX_ENV")
    by_generic = parse_config(data, env={"ENVIRONMENT": "testing"})
    assert (by_generic.environment, by_generic.environment_source) == ("testing", "$ENVIRONMENT")
    assert parse_config(data, env={}).environment_source == "default"
    assert parse_config(data, env={}).environment == "production"


def test_repr_and_str_never_show_env_or_header_values() -> None:
    config = parse_config(DESIGN_EXAMPLE, env=SECRETS)
    for text in (repr(config), str(config), repr(config.servers["docker"]), str(config.servers["k8s"])):
        for secret in SECRETS.values():
            assert secret not in text
    assert "'DOCKER_HOST': '***'" in repr(config.servers["docker"])
    assert "'Authorization': '***'" in repr(config.servers["k8s"])


def test_repr_shows_neither_args_nor_url_credentials_where_an_expanded_secret_may_hide() -> None:
    entries = {"a": {"command": "srv", "args": ["--token=${T}"]}, "b": {"url": "https://u:${T}@h:8443/mcp?k=${T}#${T}"}}
    config = parse_config({"mcpServers": entries}, env={"T": "expanded-secret"})
    a, b = config.servers.values()
    assert repr(a).startswith("ServerConfig(name='a', target='stdio: srv', args=<1>, env={}, headers={}")
    assert b.target() == "http: https://h:8443/mcp"
    assert "expanded-secret" not in repr(config)
    assert b.url == "https://u:expanded-secret@h:8443/mcp?k=expanded-secret#expanded-secret"


def test_json_and_toml_files_load_the_same(tmp_path: Path) -> None:
    toml = """
environment = "staging"

[defaults]
failure_threshold = 4

[mcpServers.docker]
command = "docker-mcp"
args = ["--verbose"]

[mcpServers.docker.tools."remove_*"]
call_timeout = 10
"""
    from_toml = load_config(write(tmp_path, toml, "circuitbox.toml"))
    from_json = load_config(
        write(
            tmp_path,
            {
                "environment": "staging",
                "defaults": {"failure_threshold": 4},
                "mcpServers": {
                    "docker": {
                        "command": "docker-mcp",
                        "args": ["--verbose"],
                        "tools": {"remove_*": {"call_timeout": 10}},
                    }
                },
            },
        )
    )
    assert from_toml.servers == from_json.servers
    assert from_toml.policy("docker", "remove_x") == from_json.policy("docker", "remove_x")
    assert from_toml.source.endswith("circuitbox.toml")


def test_discovery_prefers_the_flag_then_the_variable_then_json_then_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert discover_config_path("given.json", env={"CIRCUITBOX_CONFIG": "var.json"}) == Path("given.json")
    assert discover_config_path(None, env={"CIRCUITBOX_CONFIG": "var.json"}) == Path("var.json")
    with pytest.raises(ConfigError, match="no config file"):
        discover_config_path(None, env={})
    (tmp_path / "circuitbox.toml").write_text("")
    assert discover_config_path(None, env={}) == Path("circuitbox.toml")
    (tmp_path / "circuitbox.json").write_text("")
    assert discover_config_path(None, env={}) == Path("circuitbox.json")
    monkeypatch.setenv("CIRCUITBOX_CONFIG", "from-env.json")
    assert discover_config_path(None) == Path("from-env.json")
