"""Last-known-good answers: a read-only tool's last successful result per arguments, served, marked stale, when
its circuit rejects a call or the call fails.

Only read-only tools qualify: for them an older answer is still a true answer about the past, and serving it
cannot hide a write that did not happen.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

import mcp_types as types

STALE_META_KEY = "circuitbox/stale"

MAX_ENTRIES = 256
"""Results kept per tool; the least recently used goes first."""


def arguments_key(arguments: dict[str, Any] | None) -> str:
    """Canonical JSON of a call's arguments: the same arguments in any key order are one key."""
    return json.dumps(arguments or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


class KeptAnswers:
    """The last successful results of one tool, by canonical arguments, with the time each was kept."""

    __slots__ = ("_entries", "max_entries")

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, types.CallToolResult]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def keep(self, key: str, result: types.CallToolResult, now: float) -> None:
        self._entries[key] = (now, result)
        self._entries.move_to_end(key)
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def find(self, key: str, max_age: float, now: float) -> tuple[types.CallToolResult, float] | None:
        """The kept result for `key` and its age, or None (none kept, or older than `max_age`: then dropped)."""
        found = self._entries.get(key)
        if found is None:
            return None
        kept_at, result = found
        age = now - kept_at
        if age > max_age:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return result, age


def stale_result(
    result: types.CallToolResult, age: float, published: str, why: str, meta: dict[str, Any] | None = None
) -> types.CallToolResult:
    """`result` as a stale answer: a first text line saying so, and `_meta["circuitbox/stale"] = {"age": s}`."""
    note = types.TextContent(
        text=f"[stale answer] Tool '{published}' {why}; this is its last successful result for the same arguments, "
        f"{age:.0f} s old."
    )
    return result.model_copy(
        update={
            "content": [note, *result.content],
            "meta": {**(result.meta or {}), **(meta or {}), STALE_META_KEY: {"age": round(age, 3)}},
        }
    )
