"""Merged lists come in pages of circuitbox's own: bounded in items and bytes, with an opaque cursor."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import Client, ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client

from circuitbox.server.pages import PAGE_ITEMS, PageCache, Pages, decode_cursor, encode_cursor
from circuitbox.server.transports import http_client
from tests.net import free_port
from tests.proxy.harness import chaos, running_process, write_config
from tests.proxy.test_http_front_end import serve_args

pytestmark = pytest.mark.anyio

MANY = 50_000


def tools(count: int, description: str = "") -> list[types.Tool]:
    return [types.Tool(name=f"t{i}", description=description, input_schema={"type": "object"}) for i in range(count)]


def every_page(pages: Pages[types.Tool]) -> list[list[types.Tool]]:
    out, cursor = [], None
    while True:
        page, cursor = pages.page(types.PaginatedRequestParams(cursor=cursor) if cursor else None)
        out.append(page)
        if cursor is None:
            return out


def test_pages_hold_at_most_the_item_limit_and_cover_the_list_once_in_order() -> None:
    items = tools(1_234)
    pages = every_page(Pages("tools", items))
    assert [len(p) for p in pages] == [PAGE_ITEMS, PAGE_ITEMS, 234]
    assert [t.name for p in pages for t in p] == [t.name for t in items]


def test_pages_are_cut_by_size_too_and_an_item_larger_than_a_page_gets_one_of_its_own() -> None:
    items = [*tools(10, "x" * 300), types.Tool(name="huge", description="y" * 5_000, input_schema={}), *tools(3)]
    pages = every_page(Pages("tools", items, max_items=100, max_bytes=1_000))
    assert all(len(p) >= 1 for p in pages)
    assert [t.name for p in pages for t in p] == [t.name for t in items]
    assert ["huge"] in [[t.name for t in p] for p in pages]
    for page in pages:
        if len(page) > 1:
            assert sum(len(t.model_dump_json(by_alias=True, exclude_none=True)) + 1 for t in page) <= 1_000


def test_an_empty_list_is_one_empty_page() -> None:
    assert Pages("prompts", []).page(None) == ([], None)


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("not base64 at all!", id="not base64"),
        pytest.param(encode_cursor("prompts", 500), id="another list's cursor"),
        pytest.param(encode_cursor("tools", 7), id="not a page start"),
        pytest.param(encode_cursor("tools", 5_000), id="past the end"),
        pytest.param("dG9vbHM6LTE", id="negative offset"),
        pytest.param("dG9vbHM6eA", id="offset not a number"),
        pytest.param("__8", id="not utf-8"),
    ],
)
def test_a_cursor_this_list_did_not_give_out_is_invalid_params(cursor: str) -> None:
    with pytest.raises(MCPError) as caught:
        Pages("tools", tools(1_000)).page(types.PaginatedRequestParams(cursor=cursor))
    assert caught.value.error.code == types.INVALID_PARAMS
    assert "cursor" in caught.value.error.message


def test_a_cursor_round_trips() -> None:
    assert decode_cursor("tools", encode_cursor("tools", 1_500)) == 1_500


def test_pages_are_cut_again_only_when_what_the_list_is_built_from_changes() -> None:
    cache, catalog, own = PageCache(), object(), object()
    built: list[int] = []

    def items() -> list[types.Tool]:
        built.append(1)
        return tools(3)

    first = cache.pages("tools", (catalog, own), items)
    assert cache.pages("tools", (catalog, own), items) is first and len(built) == 1
    assert cache.pages("tools", (object(), own), items) is not first and len(built) == 2
    assert cache.pages("tools", (object(),), items) is not first and len(built) == 3


async def test_fifty_thousand_tools_list_through_the_sdks_http_client_page_by_page(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"tools": {f"tool_{i:05d}": "healthy" for i in range(MANY)}}))
    server = chaos()
    server["args"] = [*server["args"], "--spec", str(spec)]
    server["startup_timeout"] = 120
    config = write_config(tmp_path, {"mcpServers": {"big": server}})
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    async with running_process(serve_args(config, port), port=port):
        # The SDK's own client refuses an SSE event over 1 MiB: one 4 MB page could not be read at all.
        async with (
            http_client() as http,
            streamable_http_client(url, http_client=http) as (read, write),
            ClientSession(read, write, read_timeout_seconds=120) as session,
        ):
            with anyio.fail_after(180):
                await session.initialize()
                names: list[str] = []
                cursor: str | None = None
                pages = 0
                while True:
                    params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
                    page = await session.list_tools(params=params)
                    assert len(page.tools) <= PAGE_ITEMS
                    names += [tool.name for tool in page.tools]
                    pages += 1
                    cursor = page.next_cursor
                    if cursor is None:
                        break
                with pytest.raises(MCPError) as caught:
                    await session.list_tools(params=types.PaginatedRequestParams(cursor="bogus"))
            assert caught.value.error.code == types.INVALID_PARAMS
            published = {f"big__tool_{i:05d}" for i in range(MANY)}
            assert len(names) == len(set(names)) and published <= set(names)
            assert pages >= MANY // PAGE_ITEMS
            call = await session.call_tool("big__tool_49999", {"message": "last one"})
            assert not call.is_error
        # A 2026-era client follows the cursors too.
        async with Client(url) as client:
            with anyio.fail_after(120):
                first = await client.list_tools()
                second = await client.list_tools(cursor=first.next_cursor)
            assert len(first.tools) == PAGE_ITEMS and first.next_cursor
            assert {t.name for t in first.tools}.isdisjoint({t.name for t in second.tools})
