from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL_HINT = (
    "run `bash .ci/install-prometheus.sh` (it unpacks Debian's prometheus package into .cache/prometheus/) "
    "or point CIRCUITBOX_PROMETHEUS_DIR at a folder holding the prometheus and promtool binaries"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _find(binary: str) -> str:
    candidates = []
    if env := os.environ.get("CIRCUITBOX_PROMETHEUS_DIR"):
        candidates += [Path(env) / binary, Path(env) / "bin" / binary]
    candidates.append(REPO / ".cache" / "prometheus" / "bin" / binary)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    on_path = shutil.which(binary)
    if on_path:
        return on_path
    # Fail, never skip: CI runs the install script, so a missing binary is a broken setup.
    pytest.fail(f"{binary} not found: {INSTALL_HINT}", pytrace=False)


@pytest.fixture
def promtool() -> str:
    return _find("promtool")


@pytest.fixture
def prometheus() -> str:
    return _find("prometheus")
