"""Environment profiles and service presets: the seed's table and the range rule, for every pair."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from pydantic import ValidationError

from circuitbox.breakers import CircuitBreakerConfig
from circuitbox.breakers.profiles import (
    ENVIRONMENTS,
    PRESETS,
    check_environment,
    check_preset,
    environment_from,
    get_circuit_breaker_config,
    profile,
)

ENV_ORDER = ("production", "staging", "development", "testing")

# The rule written out by hand (production, staging, development, testing): low, 1/3 up, 2/3 up, high, rounded
# half up. Kept literal so a change to the rule or a range shows up here as a diff.
PRESET_TABLE = {
    "claude": (2, 3, 4, 5),
    "openai": (2, 3, 4, 5),
    "gemini": (3, 5, 6, 8),
    "deepseek": (2, 3, 4, 5),
    "groq": (2, 2, 3, 3),
    "ollama": (15, 27, 38, 50),
    "docker": (3, 5, 6, 8),
    "kubernetes": (3, 5, 8, 10),
    "desktop-commander": (5, 13, 22, 30),
    "prometheus": (2, 3, 4, 5),
    "slack": (3, 5, 6, 8),
    "s3": (2, 3, 4, 5),
    "security-scanner": (3, 5, 8, 10),
}
RANGES = {
    "claude": (2, 5), "openai": (2, 5), "gemini": (3, 8), "deepseek": (2, 5), "groq": (2, 3), "ollama": (15, 50),
    "docker": (3, 8), "kubernetes": (3, 10), "desktop-commander": (5, 30), "prometheus": (2, 5), "slack": (3, 8),
    "s3": (2, 5), "security-scanner": (3, 10),
}  # fmt: skip
SEED = {
    "development": (10, 180, 0.7),
    "staging": (5, 90, 0.5),
    "production": (3, 60, 0.4),
    "testing": (20, 300, 0.9),
}
PAIRS = [(env, preset) for env in ENV_ORDER for preset in PRESET_TABLE]


@pytest.mark.parametrize("environment", list(SEED))
def test_each_environment_profile_has_the_seeds_values(environment: str) -> None:
    config = profile(environment)
    assert (config.failure_threshold, config.timeout, config.failure_rate_threshold) == SEED[environment]
    assert config.call_timeout == CircuitBreakerConfig().call_timeout


def test_there_are_exactly_the_thirteen_presets_of_the_design() -> None:
    assert set(PRESETS) == set(PRESET_TABLE) == set(RANGES)


@pytest.mark.parametrize(("environment", "preset"), PAIRS)
def test_every_environment_and_preset_gets_the_failure_threshold_the_table_says(environment: str, preset: str) -> None:
    expected = PRESET_TABLE[preset][ENV_ORDER.index(environment)]
    assert profile(environment, preset).failure_threshold == expected


@pytest.mark.parametrize(("environment", "preset"), PAIRS)
def test_every_threshold_follows_the_range_rule_rounded_half_up(environment: str, preset: str) -> None:
    low, high = RANGES[preset]
    step = {"production": 0, "staging": 1, "development": 2, "testing": 3}[environment]
    exact = low + Fraction((high - low) * step, 3)
    assert profile(environment, preset).failure_threshold == math.floor(exact + Fraction(1, 2))
    assert (PRESETS[preset].low, PRESETS[preset].high) == (low, high)


@pytest.mark.parametrize(("environment", "preset"), PAIRS)
def test_a_preset_keeps_the_environments_open_period_and_rate(environment: str, preset: str) -> None:
    config = profile(environment, preset)
    assert (config.timeout, config.failure_rate_threshold) == SEED[environment][1:]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_explains_itself_and_tunes_deadlines_sensibly(preset: str) -> None:
    found = PRESETS[preset]
    assert len(found.doc) > 40
    config = profile("production", preset)
    assert config.slow_call_duration is not None and config.slow_call_duration < config.call_timeout


def test_deadlines_follow_the_nature_of_the_service() -> None:
    def call(preset: str) -> float:
        return profile("production", preset).call_timeout

    assert call("ollama") > call("claude") > call("groq")
    assert call("security-scanner") > call("docker") > call("slack")
    assert call("prometheus") <= 15


def test_gpt_4_is_an_alias_of_openai_and_names_ignore_case() -> None:
    assert profile("staging", "gpt-4") == profile("staging", "openai")
    assert check_preset(" Docker ").name == "docker"
    assert check_environment("Production") == "production"


def test_preset_none_is_the_environment_alone() -> None:
    assert profile("testing", "none") == profile("testing")


def test_an_unknown_environment_or_preset_lists_the_valid_ones() -> None:
    with pytest.raises(
        ValueError, match="unknown environment 'prod'; valid: development, production, staging, testing"
    ):
        profile("prod")
    with pytest.raises(ValueError, match=r"unknown preset 'mongo'; valid: .*gpt-4.*none.*security-scanner"):
        profile("production", "mongo")


def test_overrides_win_over_the_preset_and_are_validated() -> None:
    config = profile("production", "docker", failure_threshold=9, name="mine")
    assert (config.failure_threshold, config.name, config.call_timeout) == (9, "mine", 120)
    with pytest.raises(ValidationError, match="failure_threshold must be in \\[1, 100000\\]"):
        profile("production", failure_threshold=0)


def test_the_environment_comes_from_circuitbox_env_then_environment_then_production() -> None:
    assert environment_from({"CIRCUITBOX_ENV": "staging", "ENVIRONMENT": "testing"}) == ("staging", "$CIRCUITBOX_ENV")
    assert environment_from({"CIRCUITBOX_ENV": "", "ENVIRONMENT": "Testing"}) == ("testing", "$ENVIRONMENT")
    assert environment_from({}) == ("production", "default")
    with pytest.raises(ValueError, match=r"^\$ENVIRONMENT: unknown environment 'local'"):
        environment_from({"ENVIRONMENT": "local"})


def test_the_profile_table_is_the_seeds() -> None:
    assert {k: tuple(v.values()) for k, v in ENVIRONMENTS.items()} == SEED


def test_get_circuit_breaker_config_uses_the_environment_and_a_preset_or_the_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CIRCUITBOX_ENV", raising=False)
    monkeypatch.setenv("ENVIRONMENT", "development")
    by_type = get_circuit_breaker_config("anything", "ollama")
    assert (by_type.name, by_type.failure_threshold) == ("anything", 38)
    by_name = get_circuit_breaker_config("claude_expert_opus", "ai_provider")
    assert (by_name.name, by_name.failure_threshold, by_name.timeout) == ("claude_expert_opus", 4, 180)
    plain = get_circuit_breaker_config("payments")
    assert plain.failure_threshold == 10
    monkeypatch.delenv("ENVIRONMENT")
    assert get_circuit_breaker_config("payments").failure_threshold == 3
