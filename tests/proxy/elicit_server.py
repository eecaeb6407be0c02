"""A real MCP server (stdio) whose tools ask the client things and take them back, for the relay tests.

    python -m tests.proxy.elicit_server

- `sign_in`: a URL-mode elicitation, then `notifications/elicitation/complete` for it (the out-of-band flow done).
- `complete_unknown`: `notifications/elicitation/complete` for an elicitation no client was asked.
- `ask_then_withdraw`: a form elicitation the server cancels (`notifications/cancelled`) once `withdraw` is called.
- `vendor.example/echo` (a request no spec has): its params back; `vendor.example/note` (a notification no spec
  has): kept, and the `noted` tool lists those it got.
- `echo_meta` (tool), `meta_prompt` (prompt), `meta://echo/{key}` (resource template): the request's `_meta` as JSON.
"""

from __future__ import annotations

import json

import anyio
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import NotificationParams, RequestParams, Result
from pydantic import BaseModel, ConfigDict

mcp = MCPServer(name="elicit-server")
withdrawn = anyio.Event()


class Answer(BaseModel):
    answer: str


@mcp.tool()
async def sign_in(ctx: Context) -> str:
    result = await ctx.elicit_url("Sign in to continue", "https://example.invalid/sign-in", "sign-in-1")
    await ctx.session.send_elicit_complete("sign-in-1")
    return f"sign-in {result.action}"


@mcp.tool()
async def complete_unknown(ctx: Context) -> str:
    await ctx.session.send_elicit_complete("never-asked")
    return "sent"


@mcp.tool()
async def ask_then_withdraw(ctx: Context) -> str:
    global withdrawn
    withdrawn = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def ask() -> None:
            await ctx.elicit("A question the server will take back", Answer)

        tg.start_soon(ask)
        await withdrawn.wait()
        tg.cancel_scope.cancel()  # the SDK sends notifications/cancelled for the abandoned elicitation
    return "withdrawn"


@mcp.tool()
async def withdraw() -> str:
    withdrawn.set()
    return "ok"


def _meta_of(ctx: Context) -> str:
    return json.dumps(ctx.request_context.meta or {}, sort_keys=True)


@mcp.tool()
async def echo_meta(ctx: Context) -> str:
    return _meta_of(ctx)


@mcp.prompt()
async def meta_prompt(ctx: Context) -> str:
    return _meta_of(ctx)


@mcp.resource("meta://echo/{key}")
async def meta_resource(key: str, ctx: Context) -> str:
    return _meta_of(ctx)


class Anything(RequestParams):
    model_config = ConfigDict(extra="allow")


class AnyNote(NotificationParams):
    model_config = ConfigDict(extra="allow")


class Echoed(Result):
    model_config = ConfigDict(extra="allow")


notes: list[dict[str, object]] = []


async def vendor_echo(ctx: ServerRequestContext, params: Anything) -> Echoed:
    return Echoed.model_validate({"echoed": params.model_dump(exclude_none=True), "by": "elicit-server"})


async def vendor_note(ctx: ServerRequestContext, params: AnyNote) -> None:
    notes.append(params.model_dump(exclude_none=True))


@mcp.tool()
async def noted() -> str:
    return json.dumps(notes)


# As the SDK's own conformance server registers handlers MCPServer has no decorator for.
mcp._lowlevel_server.add_request_handler("vendor.example/echo", Anything, vendor_echo)
mcp._lowlevel_server.add_notification_handler("vendor.example/note", AnyNote, vendor_note)


if __name__ == "__main__":
    mcp.run(transport="stdio")
