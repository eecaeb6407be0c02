"""The precedence chain, the source of every value, tool globs, and memoization."""

from __future__ import annotations

import re
from typing import Any

import pytest

from circuitbox.config.load import ConfigError, parse_config
from circuitbox.config.policy import POLICY_FIELDS, LastKnownGood, RetryPolicy, TextFallback, ToolFallback
from tests.config.support import one


def layered(**tools: dict[str, Any]) -> dict[str, Any]:
    return {
        "environment": "staging",
        "defaults": {"failure_threshold": 7, "success_threshold": 4, "half_open_max_calls": 2},
        "mcpServers": {
            "docker": {
                "command": "docker-mcp",
                "breaker": {"success_threshold": 5, "minimum_calls": 20},
                "tool_errors": "ignore",
                "tools": tools,
            }
        },
    }


def test_each_layer_overrides_the_ones_below_and_names_itself_as_the_source() -> None:
    config = parse_config(layered(remove_container={"minimum_calls": 30}), env={})
    policy = config.policy("docker", "remove_container")
    expected = {
        "jitter": (0.1, "default"),  # built-in
        "timeout": (90, "environment"),  # staging
        "call_timeout": (120, "preset"),  # docker, inferred from the name
        "failure_threshold": (7, "defaults"),  # beats the preset's 5
        "half_open_max_calls": (2, "defaults"),
        "success_threshold": (5, "server"),  # beats defaults
        "tool_errors": ("ignore", "server"),
        "minimum_calls": (30, "tool:remove_container"),  # beats the server
    }
    for field, (value, source) in expected.items():
        assert (policy.value(field), policy.sources[field]) == (value, source), field
    assert set(policy.sources) == set(POLICY_FIELDS)
    assert policy.breaker.name == "docker__remove_container"


def test_the_server_policy_has_no_tool_layer_and_is_named_after_the_server() -> None:
    config = parse_config(layered(remove_container={"minimum_calls": 30}), env={})
    policy = config.policy("docker")
    assert policy.breaker.name == "docker"
    assert (policy.breaker.minimum_calls, policy.sources["minimum_calls"]) == (20, "server")


def test_an_exact_name_beats_any_glob_and_a_longer_glob_beats_a_shorter() -> None:
    config = parse_config(
        layered(
            list_containers={"call_timeout": 1},
            **{"list_*": {"call_timeout": 2, "timeout": 20}, "*": {"call_timeout": 3, "jitter": 0}},
            **{"list_c*": {"call_timeout": 4}},
        ),
        env={},
    )
    exact = config.policy("docker", "list_containers")
    assert (exact.call_timeout, exact.sources["call_timeout"]) == (1, "tool:list_containers")
    # Fields the exact entry leaves alone still come from the globs, most specific first.
    assert (exact.breaker.timeout, exact.sources["timeout"]) == (20, "tool:list_*")
    assert (exact.breaker.jitter, exact.sources["jitter"]) == (0, "tool:*")
    longer = config.policy("docker", "list_cats")
    assert (longer.call_timeout, longer.sources["call_timeout"]) == (4, "tool:list_c*")
    shorter = config.policy("docker", "list_images")
    assert (shorter.call_timeout, shorter.sources["call_timeout"]) == (2, "tool:list_*")
    other = config.policy("docker", "inspect")
    assert (other.call_timeout, other.sources["call_timeout"]) == (3, "tool:*")


def test_globs_of_equal_length_apply_in_file_order_so_the_later_wins() -> None:
    config = parse_config(layered(**{"get_?": {"call_timeout": 1}, "get_[ab]": {"call_timeout": 2}}), env={})
    assert config.policy("docker", "get_a").sources["call_timeout"] == "tool:get_[ab]"
    assert config.policy("docker", "get_c").sources["call_timeout"] == "tool:get_?"


def test_glob_matching_is_case_sensitive_like_tool_names() -> None:
    config = parse_config(layered(**{"Get*": {"call_timeout": 1}}), env={})
    assert config.policy("docker", "get_x").sources["call_timeout"] == "preset"


def test_a_policy_is_computed_once_per_server_and_tool() -> None:
    config = parse_config(layered(), env={})
    assert config.policy("docker", "a") is config.policy("docker", "a")
    assert config.policy("docker", "a") is not config.policy("docker", "b")
    assert config.policy("docker") is config.policy("docker")


def test_a_reloaded_config_resolves_afresh_and_equal_policies_compare_equal() -> None:
    first = parse_config(layered(a={"call_timeout": 5}), env={})
    same = parse_config(layered(a={"call_timeout": 5}), env={})
    changed = parse_config(layered(a={"call_timeout": 6}), env={})
    assert first.policy("docker", "a") == same.policy("docker", "a")
    assert first.policy("docker", "a") != changed.policy("docker", "a")
    assert first == same


def test_an_unknown_server_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        one().policy("nope")


def test_fallbacks_and_classification_keys_resolve_to_their_types() -> None:
    config = one(
        {
            "command": "x",
            "ignore_errors": ["not found"],
            "breaker": {"fallback": {"tool": "other__status"}, "failure_errors": ["(?i)quota"]},
            "tools": {"a": {"fallback": {"text": "later"}, "ignore_errors": []}, "b": {"fallback": None}},
        }
    )
    server = config.policy("srv")
    assert server.fallback == ToolFallback("other__status")
    assert server.ignore_errors == (re.compile("not found"),)
    assert server.failure_errors[0].search("QUOTA exceeded")
    assert server.value("fallback") == {"tool": "other__status"}
    assert server.value("failure_errors") == ["(?i)quota"]
    a = config.policy("srv", "a")
    assert (a.fallback, a.ignore_errors, a.value("fallback")) == (TextFallback("later"), (), {"text": "later"})
    assert config.policy("srv", "b").fallback is None
    assert config.policy("srv", "b").tool_errors == "classified"  # the default: only distress counts


def test_the_tool_surface_fields_resolve_with_their_sources_and_spell_back_as_written() -> None:
    config = one(
        {
            "command": "x",
            "breaker": {"tool_list": "hide", "retry": {"attempts": 2, "backoff": 0.5}},
            "tools": {
                "get_*": {"fallback": {"last_known_good": {"max_age": 60}, "text": "no copy kept"}},
                "get_one": {"fallback": {"last_known_good": {}}, "idempotent": True, "retry": None},
            },
        },
        list_changed_interval=0.5,
    )
    assert config.list_changed_interval == 0.5
    server = config.policy("srv")
    assert (server.tool_list, server.retry, server.idempotent, server.last_known_good) == (
        "hide",
        RetryPolicy(attempts=2, backoff=0.5),
        False,
        None,
    )
    assert server.value("retry") == {"attempts": 2, "backoff": 0.5, "max_backoff": 2.0, "budget": 0.2}
    assert server.sources["retry"] == "server" and server.sources["idempotent"] == "default"
    many = config.policy("srv", "get_many")
    assert many.fallback == LastKnownGood(60, TextFallback("no copy kept"))
    assert many.value("fallback") == {"last_known_good": {"max_age": 60}, "text": "no copy kept"}
    one_tool = config.policy("srv", "get_one")
    assert one_tool.last_known_good == LastKnownGood(300)
    assert one_tool.value("fallback") == {"last_known_good": {"max_age": 300}}
    assert (one_tool.retry, one_tool.sources["retry"], one_tool.idempotent) == (None, "tool:get_one", True)
    assert config.policy("srv", "other").tool_list == "hide"
    plain = one().policy("srv", "t")
    assert (plain.tool_list, plain.retry, plain.idempotent, plain.fallback) == ("annotate", None, False, None)


def test_defaults_may_set_proxy_fields_too() -> None:
    config = one(defaults={"call_timeout": 12, "fallback": {"text": "down"}, "tool_errors": "ignore"})
    policy = config.policy("srv", "t")
    assert (policy.call_timeout, policy.breaker.call_timeout, policy.tool_errors) == (12, 12, "ignore")
    assert policy.sources["fallback"] == "defaults"


def test_null_restores_an_optional_field() -> None:
    config = one({"command": "docker", "breaker": {"slow_call_duration": None}})
    policy = config.policy("srv")
    assert (policy.breaker.slow_call_duration, policy.sources["slow_call_duration"]) == (None, "server")


def test_a_longer_open_period_from_the_user_raises_the_built_in_cap_with_it() -> None:
    policy = one(defaults={"timeout": 900}).policy("srv")
    assert (policy.breaker.max_timeout, policy.sources["max_timeout"]) == (900, "defaults")


def test_a_cap_the_user_set_below_the_open_period_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"^mcpServers\.srv\.breaker\.max_timeout: max_timeout must be >= timeout"):
        one({"command": "x", "breaker": {"max_timeout": 100}}, defaults={"timeout": 200})


def test_contradicting_layers_name_the_most_specific_key_involved() -> None:
    with pytest.raises(ConfigError, match=r"^mcpServers\.srv\.tools\.t\.minimum_calls: minimum_calls must be <="):
        one({"command": "x", "breaker": {"sliding_window_size": 20}, "tools": {"t": {"minimum_calls": 50}}})
    with pytest.raises(ConfigError, match=r"^mcpServers\.srv\.tools\.t\*\.sliding_window_size: minimum_calls"):
        one({"command": "x", "tools": {"t*": {"sliding_window_size": 5}}})


def test_a_contradiction_only_built_in_layers_could_cause_names_the_breaker() -> None:
    from circuitbox.config.policy import Layer, base_layers, resolve

    broken = Layer("preset", "preset", {"minimum_calls": 500})
    with pytest.raises(ConfigError, match=r"^srv__t: minimum_calls must be <="):
        resolve("srv__t", [*base_layers("production", None), broken])
