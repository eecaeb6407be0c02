"""`circuitbox serve` and `check` at the command line: tokens from a file or the environment, clear refusals."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import httpx2
import pytest

from tests.net import free_port, import_path_env
from tests.proxy.harness import chaos, running_process, write_config
from tests.proxy.test_http_front_end import serve_args

CONFIG = {"mcpServers": {"c": chaos("echo=healthy")}}


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A `circuitbox serve` expected to refuse before it starts (bounded: a proxy that does start fails this)."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **import_path_env()}
    return subprocess.run(
        [sys.executable, "-m", "circuitbox", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=base | (env or {}),
    )


def refused(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("circuitbox: "), done.stderr
    assert all(word in lines[0] for word in words), lines[0]


def test_a_token_of_only_whitespace_is_refused_from_every_source(tmp_path: Path) -> None:
    config = str(write_config(tmp_path, CONFIG))
    blank = tmp_path / "token"
    blank.write_text("  \n")
    http = ["--config", config, "--transport", "http", "--port", str(free_port())]
    refused(serve(*http, "--auth-token", "   "), "--auth-token", "whitespace")
    refused(serve(*http, "--auth-token-file", str(blank)), str(blank), "whitespace")
    refused(serve(*http, env={"CIRCUITBOX_AUTH_TOKEN": "\t"}), "$CIRCUITBOX_AUTH_TOKEN", "whitespace")


def test_an_unreadable_token_file_is_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    done = serve(
        "--config", str(write_config(tmp_path, CONFIG)), "--transport", "http", "--auth-token-file", str(missing)
    )
    refused(done, "cannot read the auth token", str(missing))


def test_metrics_port_with_the_http_transport_is_an_error_not_silently_ignored(tmp_path: Path) -> None:
    config = str(write_config(tmp_path, CONFIG))
    done = serve("--config", config, "--transport", "http", "--port", str(free_port()), "--metrics-port", "9999")
    refused(done, "--metrics-port", "stdio")


def test_a_port_in_use_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve("--config", str(write_config(tmp_path, CONFIG)), "--transport", "http", "--port", str(port))
    refused(done, f"127.0.0.1:{port}", "in use")
    assert "Traceback" not in done.stderr


@pytest.mark.anyio
async def test_the_token_from_a_file_or_the_environment_guards_the_listener(tmp_path: Path) -> None:
    config = write_config(tmp_path, CONFIG)
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")  # the trailing newline an editor leaves is not part of the token
    for extra, env, token in (
        (["--auth-token-file", str(token_file)], {}, "from-a-file"),
        ([], {"CIRCUITBOX_AUTH_TOKEN": "from-the-env"}, "from-the-env"),
    ):
        port = free_port()
        async with running_process(serve_args(config, port, *extra), port=port, env=env):
            url = f"http://127.0.0.1:{port}/metrics"
            async with httpx2.AsyncClient() as http:
                assert (await http.get(url)).status_code == 401
                assert (await http.get(url, headers={"Authorization": f"Bearer {token}"})).status_code == 200


def test_check_piped_into_a_reader_that_stops_early_ends_quietly(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"mcpServers": {f"s{i}": chaos("echo=healthy") for i in range(200)}})
    with subprocess.Popen(
        [sys.executable, "-m", "circuitbox", "check", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **import_path_env()},
    ) as check:
        assert check.stdout is not None and check.stderr is not None
        check.stdout.readline()
        check.stdout.close()  # as `| head -1` does
        stderr = check.stderr.read().decode()
        assert check.wait(timeout=60) == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


@pytest.mark.anyio
async def test_status_without_the_right_token_says_401_and_how_to_pass_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, CONFIG)
    port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text("the-token\n")

    async def status(*extra: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        done = await anyio.run_process(
            [sys.executable, "-m", "circuitbox", "status", "--url", f"http://127.0.0.1:{port}", *extra],
            check=False,
            env={k: v for k, v in os.environ.items() if k != "CIRCUITBOX_AUTH_TOKEN"} | (env or {}),
        )
        return done.returncode, done.stdout.decode(), done.stderr.decode()

    async with running_process(serve_args(config, port, "--auth-token-file", str(token_file)), port=port):
        code, _, err = await status()
        assert code == 1 and err.count("\n") == 1, err
        assert "HTTP 401: the instance requires its bearer token" in err
        assert "--auth-token-file PATH, $CIRCUITBOX_AUTH_TOKEN or --auth-token TOKEN" in err
        code, _, err = await status("--auth-token", "not-it")
        assert code == 1 and "HTTP 401: the instance refused the token given" in err and "not-it" not in err
        code, out, err = await status("--auth-token-file", str(token_file))
        assert code == 0 and "connected" in out, err
        code, out, err = await status(env={"CIRCUITBOX_AUTH_TOKEN": "the-token"})
        assert code == 0 and "connected" in out, err
        code, _, err = await status("--url", f"http://127.0.0.1:{port}/elsewhere", "--auth-token-file", str(token_file))
        assert code == 1 and "HTTP 404: no circuitbox status there" in err, err
        code, _, err = await status(env={"CIRCUITBOX_AUTH_TOKEN": " "})
        assert code == 2 and "empty or only whitespace" in err


def test_status_explains_the_other_refusals() -> None:
    from circuitbox.commands.status import refusal

    assert "DNS-rebinding" in refusal(421, "t") and "--allowed-host" in refusal(403, None)
    assert refusal(500, "t") == "HTTP 500 from the instance"
