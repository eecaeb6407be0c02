#!/usr/bin/env bash
# What users install is what CI tests:
#  1. the built wheel alone in a fresh venv (no extras, nothing else): pip check, every module imports, the demo runs
#     and `serve` answers the SDK's client over stdio and HTTP;
#  2. the lowest versions the dependencies declare (uv's lowest-direct resolution) run the unit tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
work=.cache/install-check
rm -rf "$work" && mkdir -p "$work"

python -m pip wheel -q --no-deps -w "$work/dist" .
python -m venv "$work/wheel-venv"
"$work/wheel-venv/bin/pip" install -q "$work"/dist/circuitbox-*.whl
"$work/wheel-venv/bin/pip" check
(cd "$work" && ./wheel-venv/bin/python "$OLDPWD/.ci/wheel_smoke.py")
(cd "$work" && ./wheel-venv/bin/circuitbox demo --quick | tail -n 20)

python -m pip install -q 'uv>=0.5'
python -m uv venv -q "$work/lowest-venv"
python -m uv pip install -q --python "$work/lowest-venv/bin/python" --resolution lowest-direct .
# The test tools at their own current versions; the package's dependencies stay at their lower bounds.
python -m uv pip install -q --python "$work/lowest-venv/bin/python" pytest hypothesis trio mcp-server-time
python -m uv pip list --python "$work/lowest-venv/bin/python" | grep -E '^(mcp|mcp-types|anyio|pydantic|prometheus-client|starlette|uvicorn) '
"$work/lowest-venv/bin/python" -m pytest -q -p no:cacheprovider tests/breakers tests/config tests/policy tests/chaos/test_chaos_state.py
