"""Resilience suite fixtures: the anyio backend, and a table of per-scenario figures printed after the run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

FIGURES: list[tuple[str, dict[str, Any]]] = []


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[..., None]:
    """`figures(label, **values)`: shown in the terminal summary (answer times, calls saved, soak memory)."""

    def record(label: str, **values: Any) -> None:
        FIGURES.append((f"{request.node.name} [{label}]", values))

    return record


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    return str(value)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("resilience figures")
    for label, values in FIGURES:
        terminalreporter.write_line(label)
        terminalreporter.write_line("    " + ", ".join(f"{k}={_show(v)}" for k, v in values.items()))
