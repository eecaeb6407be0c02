"""The per-server `session` and `max_sessions` keys: validated like the other server keys, shown by `check`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from circuitbox.config.load import ConfigError
from tests.config.support import check, one, write


def test_a_server_shares_its_connection_automatically_unless_told_otherwise() -> None:
    server = one().servers["srv"]
    assert (server.session, server.max_sessions) == ("auto", 64)
    tuned = one({"command": "some-server", "session": "per_client", "max_sessions": 3}).servers["srv"]
    assert (tuned.session, tuned.max_sessions) == ("per_client", 3)


@pytest.mark.parametrize(
    ("entry", "named"),
    [({"session": "per-client"}, "session"), ({"max_sessions": 0}, "max_sessions"), ({"max_sessions": "x"}, "max")],
)
def test_a_bad_session_key_is_a_config_error_naming_it(entry: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=f"srv.*{named}"):
        one({"command": "some-server", **entry})


def test_check_shows_each_servers_session_mode_in_the_table_and_the_json(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {"mcpServers": {"a": {"command": "some-server"}, "b": {"command": "x", "session": "shared"}}},
    )
    table = check(str(path))
    assert table.returncode == 0, table.stderr
    assert "session: auto (max_sessions 64)" in table.stdout
    assert "session: shared (max_sessions 64)" in table.stdout
    report = json.loads(check(str(path), "--json").stdout)
    assert [s["session"] for s in report["servers"]] == [
        {"mode": "auto", "max_sessions": 64},
        {"mode": "shared", "max_sessions": 64},
    ]
