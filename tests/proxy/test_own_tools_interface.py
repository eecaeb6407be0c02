"""Own tools reach the proxy through a narrow interface, never by importing it."""

from __future__ import annotations

import ast
from pathlib import Path

import circuitbox.server.own_tools as own_tools


def test_own_tools_never_import_the_proxy() -> None:
    tree = ast.parse(Path(own_tools.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert "circuitbox.server.proxy" not in imported
    assert not any(name and name.startswith("circuitbox.server.") for name in imported)
