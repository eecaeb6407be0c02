"""Secrets never shown: each path a secret could leak by (check --connect errors, DEBUG logs, circuit_status and
`circuitbox status`) grepped for, with real processes: the proxy, real downstreams and refusing endpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from circuitbox.config.secrets import mask, secrets_of
from circuitbox.server.transports import http_client
from tests.config.support import check
from tests.net import free_port, import_path_env, wait_for_port
from tests.proxy.harness import chaos, write_config
from tests.proxy.test_http_front_end import serve_args

# Each secret reaches the config a different way; none of them may appear in any output.
SECRETS = {
    "CB_T_URL_TOKEN": "url-query-secret-1",  # ${VAR} in a URL's query
    "CB_T_HEADER": "header-secret-2",  # ${VAR} in a header
    "CB_T_DIR": "command-secret-3",  # ${VAR} in a command
    "CB_T_ARG": "argument-secret-4",  # ${VAR} in an argument
}
LITERAL_PASSWORD = "url-password-secret-5"  # written in clear in the URL's user info
LITERAL_QUERY = "literal-query-secret-6"  # written in clear in a query value


def leaked(text: str) -> list[str]:
    return [s for s in [*SECRETS.values(), LITERAL_PASSWORD, LITERAL_QUERY] if s in text]


def chaos_http() -> tuple[list[str], int]:
    port = free_port()
    return [sys.executable, "-m", "circuitbox", "chaos", "--transport", "http", "--port", str(port)], port


@asynccontextmanager
async def process(
    args: list[str], port: int | None, log: Path, env: dict[str, str] | None = None
) -> AsyncIterator[None]:
    """A process of ours (stderr to `log`), listening on `port` when given; stopped by its PID at the end."""
    with log.open("wb") as err:
        proc = await anyio.open_process(args, stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, **(env or {})})
        try:
            if port is not None:
                await wait_for_port(port)
            yield
        finally:
            proc.terminate()
            with anyio.move_on_after(10):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def servers(web_port: int) -> dict[str, Any]:
    """Downstreams whose errors or log lines would quote a secret: a URL with credentials and tokens, a header, a
    command and an argument brought in by ${VAR}."""
    creds = f"http://bot:{LITERAL_PASSWORD}@127.0.0.1:{web_port}"
    query = f"token=${{CB_T_URL_TOKEN}}&api_key={LITERAL_QUERY}"
    return {
        "web": {"url": f"{creds}/mcp?{query}", "headers": {"Authorization": "Bearer ${CB_T_HEADER}"}},
        "missing": {"type": "sse", "url": f"{creds}/nowhere?{query}"},
        "nocmd": {"command": "/opt/${CB_T_DIR}/bin/server", "args": ["--key", "${CB_T_ARG}"]},
        "badheader": {"url": f"http://127.0.0.1:{web_port}/mcp", "headers": {"X-Key": "${CB_T_HEADER}\nX: y"}},
    }


@pytest.mark.anyio
async def test_check_connect_errors_never_echo_a_header_url_credential_or_expanded_secret(tmp_path: Path) -> None:
    args, port = chaos_http()
    async with process(args, port, tmp_path / "chaos.log"):
        done = await anyio.to_thread.run_sync(
            lambda: check(str(write_config(tmp_path, {"mcpServers": servers(port)})), "--connect", env=SECRETS)
        )
    assert done.returncode == 1, done.stderr  # the broken ones could not be listed...
    errors = {line.split("'")[1]: line for line in done.stderr.splitlines() if "could not be listed" in line}
    assert set(errors) == {"missing", "nocmd", "badheader"}, done.stderr
    # ... each error still says what went wrong, with the secret masked where the text quoted it.
    assert "Illegal header value" in errors["badheader"] and "***" in errors["badheader"]
    assert "404" in errors["missing"] and "http://***@127.0.0.1" in errors["missing"]
    assert "/opt/***/bin/server" in errors["nocmd"]
    assert leaked(done.stdout + done.stderr) == []


@pytest.mark.anyio
async def test_debug_logs_never_show_url_credentials_query_tokens_or_header_values(tmp_path: Path) -> None:
    args, port = chaos_http()
    log = tmp_path / "proxy.log"
    config = write_config(tmp_path, {"mcpServers": servers(port) | {"c": chaos("echo=healthy")}})
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "circuitbox", "serve", "--config", str(config), "--log-level", "DEBUG"],
        env={**import_path_env(), **{k: v for k, v in os.environ.items() if k.startswith("COVERAGE")}, **SECRETS},
    )
    async with process(args, port, tmp_path / "chaos.log"):
        with log.open("w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
                with anyio.fail_after(60):
                    await session.initialize()
                    assert not (await session.call_tool("web__echo", {"said": "hi"})).is_error
    text = log.read_text()
    assert "Connecting to StreamableHTTP endpoint: http://***@127.0.0.1" in text  # the SDK's DEBUG line, masked
    assert "DEBUG" in text and leaked(text) == []


@pytest.mark.anyio
async def test_circuit_status_and_circuitbox_status_mask_a_secret_expanded_into_a_command_or_url(
    tmp_path: Path,
) -> None:
    args, web_port = chaos_http()
    port = free_port()
    config = write_config(tmp_path, {"mcpServers": servers(web_port)})
    token = {"CIRCUITBOX_AUTH_TOKEN": "the-auth-token"}
    async with (
        process(args, web_port, tmp_path / "chaos.log"),
        process(serve_args(config, port), port, tmp_path / "proxy.log", env=SECRETS | token | import_path_env()),
    ):
        headers = {"Authorization": "Bearer the-auth-token"}
        async with (
            http_client(headers) as http,
            streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            with anyio.fail_after(60):
                await session.initialize()
                while True:  # until both broken servers have failed once and say why
                    status = (await session.call_tool("circuit_status", {})).structured_content
                    assert status is not None
                    errors = {s["server"]: s["last_error"] for s in status["servers"]}
                    if errors["nocmd"] and errors["missing"]:
                        break
                    await anyio.sleep(0.1)  # another process's progress: nothing to wait on instead
        assert "/opt/***/bin/server" in errors["nocmd"] and "***" in errors["missing"]
        assert leaked(json.dumps(status)) == []
        for extra in ([], ["--json"]):
            shown = await anyio.run_process(
                [sys.executable, "-m", "circuitbox", "status", "--url", f"http://127.0.0.1:{port}", *extra],
                env={**os.environ, **token},
                check=False,
            )
            out = shown.stdout.decode()
            assert shown.returncode == 0 and "nocmd" in out and leaked(out + shown.stderr.decode()) == []
    assert leaked((tmp_path / "proxy.log").read_text()) == []


def test_secrets_of_a_server_are_its_env_headers_expanded_values_and_url_credentials() -> None:
    found = secrets_of(
        {"A": "env-value"},
        {"Authorization": "Bearer tok-123456"},
        "https://user%40x:p%40ss-word@h/p?sig=qvalue&v=1",
        ["expanded-value", "eu"],
    )
    assert found == {
        "env-value",
        "Bearer tok-123456",
        "tok-123456",
        "user%40x",
        "user@x",
        "p%40ss-word",
        "p@ss-word",
        "qvalue",
        "expanded-value",
    }


def test_mask_covers_every_form_a_secret_takes_and_token_like_query_values_of_any_url() -> None:
    secret = 'se"cr\net'
    text = f"a {secret} b {secret.encode()!r} c {json.dumps(secret)}"
    assert mask(text, [secret]) == "a *** b b'***' c \"***\""
    assert mask("GET https://u:p@h/x?access_token=abc&page=2&X-Api-Key=zz#f") == (
        "GET https://***@h/x?access_token=***&page=2&X-Api-Key=***#f"
    )
    assert mask("ab is short", ["ab"]) == "ab is short"
    assert mask("mail me@example.com", []) == "mail me@example.com"
