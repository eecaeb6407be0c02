"""SIGHUP with a changed command, under load: the new connection starts beside the old one and takes over once it
is ready, so no call fails and no breaker opens."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import anyio
import mcp_types as types
import pytest

from tests.proxy.harness import chaos, pid_of, proxy_session
from tests.proxy.test_breakers_through_the_proxy import chaos_stats, status, text
from tests.proxy.test_shutdown import alive

pytestmark = pytest.mark.anyio

# One failure would open it: a reload that fails even one call shows.
STRICT = {"failure_threshold": 1, "timeout": 600, "jitter": 0, "minimum_calls": 100}
LANES = 3


async def test_sighup_with_a_changed_command_under_load_fails_no_call_and_opens_no_breaker(tmp_path: Path) -> None:
    config = {"mcpServers": {"c": {**chaos("echo=healthy", seed=1), "breaker": STRICT}}}
    async with proxy_session(tmp_path, config) as session:
        old_pid = (await chaos_stats(session, "c"))["pid"]
        answers: list[types.CallToolResult] = []
        switched = anyio.Event()

        async def lane(n: int) -> None:
            while not switched.is_set():
                answers.append(await session.call_tool("c__echo", {"message": f"lane {n}"}))
            for _ in range(10):  # and a few on the new connection
                answers.append(await session.call_tool("c__echo", {"message": f"lane {n}"}))

        async with anyio.create_task_group() as tg:
            for n in range(LANES):
                tg.start_soon(lane, n)
            path = tmp_path / "circuitbox.json"
            changed = {
                "environment": "testing",
                "mcpServers": {"c": {**chaos("echo=healthy", seed=2), "breaker": STRICT}},
            }
            path.write_text(json.dumps(changed))  # a new seed: new args, so a new connection
            os.kill(pid_of(path), signal.SIGHUP)
            with anyio.fail_after(30):
                while (await chaos_stats(session, "c"))["pid"] == old_pid:
                    await anyio.sleep(0.05)  # polling until the new connection answers; bounded
            switched.set()

        assert len(answers) > LANES * 10
        failed = [text(a) for a in answers if a.is_error]
        assert failed == []
        breakers = (await status(session, server="c"))["breakers"]
        assert {(b["tool"], b["state"], b["failures"]) for b in breakers if b["tool"] == "echo"} == {
            ("echo", "closed", 0)
        }
        assert (await status(session, server="c"))["servers"][0]["connection"] == "connected"
        with anyio.fail_after(30):
            while alive(old_pid):
                await anyio.sleep(0.05)  # the old connection retires once its calls are answered; bounded
