"""The `cluster` key: expanded, validated, shown by check with the URL's password masked."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from circuitbox.cluster import missing_extra
from circuitbox.config.load import ConfigError, parse_config
from tests.config.support import check, write

SERVERS = {"mcpServers": {"a": {"command": "x"}}}


def config_with(cluster: Any, env: dict[str, str] | None = None) -> Any:
    return parse_config({"cluster": cluster, **SERVERS}, env=env or {})


def test_the_cluster_key_expands_variables_and_defaults_its_group() -> None:
    config = config_with(
        {"redis_url": "redis://:${REDIS_PASSWORD}@${REDIS_HOST:-127.0.0.1}:6379/0"}, {"REDIS_PASSWORD": "hunter22"}
    )
    assert config.cluster is not None
    assert config.cluster.redis_url == "redis://:hunter22@127.0.0.1:6379/0"
    assert config.cluster.group == "default"
    assert config.cluster.shown_url == "redis://***@127.0.0.1:6379/0"
    assert "hunter22" not in repr(config.cluster)
    assert "hunter22" in config.cluster.secrets


def test_no_cluster_key_means_no_cluster() -> None:
    assert parse_config(SERVERS, env={}).cluster is None


@pytest.mark.parametrize(
    ("cluster", "problem"),
    [
        ({"redis_url": "http://127.0.0.1:6379"}, "cluster.redis_url: expected a redis://, rediss:// or unix:// URL"),
        ({"redis_url": "redis://:6379/0"}, "cluster.redis_url: no host in"),
        ({"redis_url": "redis://127.0.0.1", "group": "a{b}"}, "cluster.group: 'a{b}' is not a group name"),
        ({"redis_url": "redis://127.0.0.1", "group": ""}, "cluster.group: '' is not a group name"),
        ({"redis_url": "${NOPE}"}, "cluster.redis_url: environment variable NOPE is not set"),
        ({"redis_url": "redis://h", "group": "${NOPE}"}, "cluster.group: environment variable NOPE is not set"),
        ({"group": "g"}, "cluster.redis_url"),
        ({"redis_url": "redis://h", "extra": 1}, "cluster.extra"),
    ],
)
def test_a_bad_cluster_key_is_a_config_error_naming_it(cluster: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_with(cluster)
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def test_a_bad_url_is_shown_without_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        config_with({"redis_url": "http://:${PW}@h"}, {"PW": "hunter22"})
    assert "hunter22" not in str(caught.value)


def test_check_shows_the_cluster_with_the_password_masked(tmp_path: Path) -> None:
    path = write(
        tmp_path, {"cluster": {"redis_url": "redis://user:s3cr3tpw@10.0.0.5:6380/1", "group": "edge"}, **SERVERS}
    )
    table = check(str(path))
    assert table.returncode == 0, table.stderr
    assert "cluster: group 'edge' through Redis redis://***@10.0.0.5:6380/1" in table.stdout
    as_json = check(str(path), "--json")
    assert json.loads(as_json.stdout)["cluster"] == {"redis_url": "redis://***@10.0.0.5:6380/1", "group": "edge"}
    assert "s3cr3tpw" not in table.stdout + table.stderr + as_json.stdout + as_json.stderr


def test_without_redis_py_the_cluster_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    assert missing_extra() is None
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "redis" else real(name, *a))
    assert missing_extra() == "the cluster key needs redis-py: pip install 'circuitbox[redis]'"
