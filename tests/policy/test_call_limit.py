"""`max_call_timeout`: how long progress notifications may keep a call alive."""

from __future__ import annotations

from circuitbox.config.load import parse_config
from circuitbox.config.policy import retune


def test_max_call_timeout_defaults_to_ten_times_call_timeout_wherever_call_timeout_comes_from() -> None:
    config = parse_config({"mcpServers": {"s": {"command": "x"}, "d": {"command": "docker-mcp"}}}, env={})
    assert (config.policy("s").call_timeout, config.policy("s").call_limit) == (30, 300)
    assert (config.policy("d").call_timeout, config.policy("d").call_limit) == (120, 1200)  # the docker preset
    assert config.policy("s").sources["max_call_timeout"] == "default"


def test_an_explicit_max_call_timeout_wins_and_names_its_source() -> None:
    tools = {"build": {"max_call_timeout": 3600}}
    config = parse_config({"mcpServers": {"s": {"command": "x", "tools": tools}}}, env={})
    policy = config.policy("s", "build")
    assert (policy.call_limit, policy.sources["max_call_timeout"]) == (3600, "tool:build")
    assert retune(policy, {"max_call_timeout": 60}).call_limit == 60
