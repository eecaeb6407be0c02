"""A real streamable HTTP MCP server for the tests of circuitbox's own HTTP calls (test_http_calls.py).

    python -m tests.proxy.http_calls_server PORT [--json]

`--json` answers each POST with a JSON body instead of an event stream. Tools:

- `echo`: `message` back; `seen`: what the server saw of the tools/call requests so far (ids, headers, the client
  port each came from) and which of them were cancelled.
- `steps`: three progress notifications, then the answer.
- `ask`: a log message, a sampling request to the client on the call's stream, another log message, then the
  sampled text.
- `wait`: never answers on its own (until cancelled); `big`: `size` bytes of text; `die`: the process exits mid-call.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import anyio
import mcp_types as types
import uvicorn
from mcp.server.mcpserver import Context, MCPServer

mcp = MCPServer(name="http-calls-server")
calls: list[dict[str, Any]] = []
cancelled: list[str] = []


def _note(ctx: Context) -> None:
    request = ctx.request_context.request
    headers = dict(getattr(request, "headers", {}) or {})
    client = getattr(request, "client", None)
    calls.append({"id": ctx.request_id, "headers": headers, "port": client.port if client else None})


@mcp.tool()
async def echo(message: str, ctx: Context) -> str:
    _note(ctx)
    return message


@mcp.tool()
async def seen(ctx: Context) -> str:
    return json.dumps({"calls": calls, "cancelled": cancelled})


@mcp.tool()
async def steps(ctx: Context) -> str:
    _note(ctx)
    for step in (1, 2, 3):
        await ctx.report_progress(step, 3, f"step {step}")
    return "stepped"


@mcp.tool()
async def ask(ctx: Context) -> str:
    _note(ctx)
    await ctx.info("before the question")
    answer = await ctx.session.create_message(
        [types.SamplingMessage(role="user", content=types.TextContent(text="a question"))],
        max_tokens=5,
        related_request_id=ctx.request_context.request_id,
    )
    await ctx.info("after the question")
    content = answer.content
    return f"sampled: {content.text if isinstance(content, types.TextContent) else content}"


@mcp.tool()
async def wait(ctx: Context) -> str:
    _note(ctx)
    try:
        await anyio.sleep_forever()
    except anyio.get_cancelled_exc_class():
        cancelled.append(ctx.request_id)
        raise
    return "never"


@mcp.tool()
async def big(size: int, ctx: Context) -> str:
    _note(ctx)
    return "b" * size


@mcp.tool()
async def die(ctx: Context) -> str:
    _note(ctx)
    os._exit(3)


def main() -> None:
    port = int(sys.argv[1])
    app = mcp.streamable_http_app(json_response="--json" in sys.argv[2:])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
