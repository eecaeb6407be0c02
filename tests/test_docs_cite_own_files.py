"""The project's docs and docstrings cite its own documents, never a file the repository does not contain."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_CITED = re.compile(r"[\w./-]*\w\.md\b")


def test_every_markdown_file_the_project_cites_is_in_the_project() -> None:
    own = {p.name for p in ROOT.rglob("*.md") if ".cache" not in p.parts}
    texts = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "src").rglob("*.py")]
    missing = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in texts
        for name in _CITED.findall(path.read_text())
        if Path(name).name not in own
    }
    assert not missing, sorted(missing)
