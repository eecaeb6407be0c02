"""Preset inference from a server's name, command, args and URL: whole words only."""

from __future__ import annotations

import pytest

from circuitbox.breakers.profiles import infer_preset
from tests.config.support import one


@pytest.mark.parametrize(
    ("name", "preset"),
    [
        ("docker", "docker"),
        ("mcp-server-docker", "docker"),
        ("DockerMCP", "docker"),
        ("kubectl", "kubernetes"),
        ("k8s", "kubernetes"),
        ("k8s-prod", "kubernetes"),
        ("kubernetes", "kubernetes"),
        ("kube_tools", "kubernetes"),
        ("slack", "slack"),
        ("team.slack.bot", "slack"),
        ("s3", "s3"),
        ("aws-s3", "s3"),
        ("minio", "s3"),
        ("prometheus", "prometheus"),
        ("desktop-commander", "desktop-commander"),
        ("DesktopCommander", "desktop-commander"),
        ("desktop_commander", "desktop-commander"),
        ("claude", "claude"),
        ("anthropic-api", "claude"),
        ("claude-desktop-commander", "desktop-commander"),
        ("openai", "openai"),
        ("gpt", "openai"),
        ("gpt-4", "openai"),
        ("gpt4o", "openai"),
        ("chatgpt", "openai"),
        ("gemini", "gemini"),
        ("deepseek-r1", "deepseek"),
        ("groq", "groq"),
        ("ollama", "ollama"),
        ("semgrep", "security-scanner"),
        ("trivy", "security-scanner"),
        ("bandit", "security-scanner"),
        ("security-scanner", "security-scanner"),
        ("SecurityScan", "security-scanner"),
    ],
)
def test_a_name_that_says_the_service_gets_its_preset(name: str, preset: str) -> None:
    assert infer_preset(name) == preset


@pytest.mark.parametrize(
    "name",
    [
        "mass3d",  # "s3" inside a word
        "s3x",
        "egpt",  # "gpt" inside a word
        "gpts",
        "dockerfile-linter",  # about Dockerfiles, not a container engine
        "dockerized-app",
        "slacker",
        "prometheusx",
        "kubeflow",
        "minion",
        "claudette",
        "banditos",
        "desktop",  # half of a phrase
        "commander",
        "filesystem",
        "time",
        "",
    ],
)
def test_a_name_with_the_keyword_only_inside_a_word_gets_no_preset(name: str) -> None:
    assert infer_preset(name) is None


def test_the_command_args_and_url_are_read_after_the_name() -> None:
    assert infer_preset("tools", "/usr/local/bin/docker") == "docker"
    assert infer_preset("tools", "npx", ["-y", "@modelcontextprotocol/server-slack"]) == "slack"
    assert infer_preset("tools", None, [], "https://minio.internal:9000/mcp") == "s3"
    assert infer_preset("slack", "docker", ["run", "mcp/slack"]) == "slack"  # the name is trusted first
    assert infer_preset("tools", "uvx", ["mcp-server-time"], "http://127.0.0.1/mcp") is None


def test_the_config_shows_an_inferred_preset_and_preset_none_opts_out() -> None:
    inferred = one({"command": "npx", "args": ["-y", "@modelcontextprotocol/server-slack"]}, name="chat")
    assert (inferred.servers["chat"].preset, inferred.servers["chat"].preset_source) == ("slack", "inferred")
    assert inferred.policy("chat").sources["call_timeout"] == "preset"
    opted_out = one({"command": "docker-mcp", "preset": "none"}, name="docker")
    assert (opted_out.servers["docker"].preset, opted_out.servers["docker"].preset_source) == (None, "none")
    assert "preset" not in opted_out.policy("docker").sources.values()
    nothing = one({"command": "some-server"})
    assert (nothing.servers["srv"].preset, nothing.servers["srv"].preset_source) == (None, "none")
    explicit = one({"command": "x", "preset": "GPT-4"})
    assert (explicit.servers["srv"].preset, explicit.servers["srv"].preset_source) == ("openai", "explicit")
