"""circuitbox's own pagination of the lists it merges (tools, prompts, resources, resource templates).

A merged list can be far larger than any one downstream's page: 50,000 tools are a 4 MB answer, which the SDK's own
HTTP client refuses (its SSE events stop at 1 MiB). So each list is cut into pages of at most `PAGE_ITEMS` items and
about `PAGE_BYTES` of JSON (a single item larger than that still gets a page of its own), and the client follows
`nextCursor`. A cursor is opaque to the client: the list's kind and the offset of the page, base64url-encoded. One
that does not decode to a page of this list is the client's mistake (-32602), never a silent restart at page one.

Page boundaries are computed once per merged list (the catalog is rebuilt on every list change), not per request.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import mcp_types as types
from mcp import MCPError
from pydantic import BaseModel

PAGE_ITEMS = 500
PAGE_BYTES = 512 * 1024  # half the SDK client's 1 MiB event limit: room for the envelope and the SSE framing

ItemT = TypeVar("ItemT", bound=BaseModel)


def encode_cursor(kind: str, offset: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{offset}".encode()).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str) -> int:
    """The offset a cursor of list `kind` points at.

    Raises:
        MCPError: -32602, the cursor was not made by this list.
    """
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, number = text.partition(":")
        offset = int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        offset = -1
        prefix = ""
    if prefix != kind or offset < 0 or not number.isdigit():
        raise MCPError(code=types.INVALID_PARAMS, message=f"Invalid cursor for {kind}/list: {cursor[:80]!r}")
    return offset


def _boundaries(items: Sequence[BaseModel], max_items: int, max_bytes: int) -> list[int]:
    """Start offsets of every page after the first."""
    starts: list[int] = []
    count = size = 0
    for index, item in enumerate(items):
        item_size = len(item.model_dump_json(by_alias=True, exclude_none=True)) + 1
        if count and (count >= max_items or size + item_size > max_bytes):
            starts.append(index)
            count = size = 0
        count += 1
        size += item_size
    return starts


class Pages(Generic[ItemT]):
    """One merged list, cut into pages once."""

    def __init__(
        self, kind: str, items: Sequence[ItemT], *, max_items: int = PAGE_ITEMS, max_bytes: int = PAGE_BYTES
    ) -> None:
        self.kind = kind
        self.items = items
        self._starts = [0, *_boundaries(items, max_items, max_bytes)]
        self._next = {start: end for start, end in zip(self._starts, [*self._starts[1:], len(items)], strict=True)}

    def page(self, params: Any) -> tuple[list[ItemT], str | None]:
        """The page the request's cursor points at (the first without one) and the cursor of the next, if any.

        Raises:
            MCPError: -32602, a cursor this list did not give out (or one of a list that has changed since).
        """
        cursor = getattr(params, "cursor", None)
        start = decode_cursor(self.kind, cursor) if cursor else 0
        end = self._next.get(start)
        if end is None:
            raise MCPError(
                code=types.INVALID_PARAMS,
                message=f"Invalid cursor for {self.kind}/list: the list changed; list again from the start",
            )
        return list(self.items[start:end]), encode_cursor(self.kind, end) if end < len(self.items) else None


class PageCache:
    """The pages of each list, cut again only when what the list is built from is another object."""

    def __init__(self) -> None:
        self._cached: dict[str, tuple[tuple[object, ...], Pages[Any]]] = {}

    def pages(self, kind: str, sources: tuple[object, ...], items: Callable[[], Sequence[Any]]) -> Pages[Any]:
        """`sources`: what the list is built from (the catalog, our own tools), held and compared by identity."""
        cached = self._cached.get(kind)
        same = cached is not None and len(cached[0]) == len(sources)
        if cached is None or not same or any(a is not b for a, b in zip(cached[0], sources, strict=True)):
            cached = self._cached[kind] = (sources, Pages(kind, items()))
        return cached[1]
