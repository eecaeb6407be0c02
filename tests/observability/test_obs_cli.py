from __future__ import annotations

import json
from pathlib import Path

import pytest

from circuitbox.breakers import CircuitBreaker, CircuitBreakerConfig
from circuitbox.cli import main as cli_main
from circuitbox.observability import health_report


def test_the_dashboard_can_be_written_to_a_file_with_its_own_uid_and_title(tmp_path: Path) -> None:
    out = tmp_path / "dashboard.json"
    assert cli_main(["dashboard", "-o", str(out), "--uid", "cb-prod", "--title", "Breakers (prod)"]) == 0
    dash = json.loads(out.read_text())
    assert (dash["uid"], dash["title"]) == ("cb-prod", "Breakers (prod)")


def test_the_alert_rules_can_be_written_to_a_file(tmp_path: Path) -> None:
    out = tmp_path / "rules.yml"
    assert cli_main(["alerts", "-o", str(out), "--window", "10m", "--fallbacks-per-minute", "3"]) == 0
    text = out.read_text()
    assert "[10m]" in text and "* 60 > 3" in text and "[5m]" not in text


def test_the_alerts_command_refuses_a_failure_rate_outside_zero_to_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["alerts", "--failure-rate", "1.5"])
    assert exit_info.value.code == 2
    assert "must be in (0, 1]" in capsys.readouterr().err


def test_health_report_takes_labels_as_a_mapping_and_library_breakers_without_labels() -> None:
    breakers = [CircuitBreaker(CircuitBreakerConfig(name=n)) for n in ("k8s__apply", "payments")]
    report = health_report(breakers, {"k8s__apply": ("k8s", "apply")})
    assert [(b["server"], b["tool"]) for b in report["breakers"]] == [("k8s", "apply"), ("payments", "")]
    assert health_report(breakers)["servers"][0]["server"] == "k8s__apply"
