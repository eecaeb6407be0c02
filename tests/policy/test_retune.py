"""Run-time changes (circuit_configure) validated and sourced by the same code as the config file."""

from __future__ import annotations

from typing import Any

import pytest

from circuitbox.config.load import ConfigError, parse_config
from circuitbox.config.policy import ToolPolicy, describe_policy, retune


def policy() -> ToolPolicy:
    config = parse_config({"mcpServers": {"s": {"command": "x", "breaker": {"failure_threshold": 7}}}})
    return config.policy("s", "t")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"failure_threshold": "4"}, "settings.failure_threshold: expected an integer, got a string"),
        ({"failure_threshold": True}, "settings.failure_threshold: expected an integer, got a boolean"),
        ({"timeout": "5"}, "settings.timeout: expected a number, got a string"),
        ({"failure_treshold": 3}, "settings.failure_treshold: unknown key (did you mean failure_threshold?)"),
        ({"sliding_window_size": 10**9}, "settings.sliding_window_size: sliding_window_size must be in [1, 100000]"),
        ({"failure_threshold": None}, "settings.failure_threshold: expected an integer, got null"),
        ({"fallback": {"txt": "x"}}, "settings.fallback: expected"),
    ],
)
def test_a_run_time_change_is_validated_strictly_naming_the_setting(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        retune(policy(), settings)
    assert str(caught.value).startswith(message)


def test_a_run_time_change_names_itself_as_the_source_of_the_values_it_sets() -> None:
    before = policy()
    after = retune(before, {"timeout": 5, "call_timeout": 2})
    described = describe_policy(after)
    assert described["timeout"] == {"value": 5, "source": "circuit_configure"}
    assert described["call_timeout"] == {"value": 2, "source": "circuit_configure"}
    assert (
        described["failure_threshold"]
        == describe_policy(before)["failure_threshold"]
        == {
            "value": 7,
            "source": "server",
        }
    )
    assert after.call_timeout == 2 and after.breaker.name == before.breaker.name


def test_a_run_time_change_that_contradicts_the_policy_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"^settings\.max_timeout: max_timeout must be >= timeout"):
        retune(policy(), {"max_timeout": 10})
    # A longer open period carries the built-in cap along, as it does in the file.
    assert retune(policy(), {"timeout": 400}).breaker.max_timeout == 400
