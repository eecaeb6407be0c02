"""The tool list follows breaker state: an open tool is annotated (or hidden) in tools/list, and clients are told.

`tool_list` per (server, tool): `annotate` (default) keeps an open tool listed with its name and schema, its
description prefixed `[circuit open ...]` and its `_meta["circuitbox/breaker"]` holding the state; `hide` leaves it
out while the circuit is open; `static` never changes it. "Open" means open with time left in its open period, or
forced open: once the period ends the next call is the probe, so the tool is listed as usual again (a hidden tool
comes back) without waiting for that call.

Each change of what the list shows sends `notifications/tools/list_changed`, through `Coalescer`: at most one per
`list_changed_interval`, and the last change of a burst is always sent.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import anyio
import mcp_types as types

from circuitbox.breakers import CircuitBreaker, CircuitState
from circuitbox.server.catalog import Catalog

logger = logging.getLogger("circuitbox.surface")

META_KEY = "circuitbox/breaker"
ANNOTATION = "[circuit open: calls fail fast until its breaker lets a probe through]"


@dataclass(frozen=True, slots=True)
class Shown:
    """How an open tool is listed: `mode` annotate or hide, and what its annotation says."""

    mode: str
    state: str
    last_error: str | None


View = Mapping[str, Shown]
"""Published tool name -> how it is shown; tools not in it are listed as their server lists them."""


Entries = Callable[[str, str], "tuple[CircuitBreaker, str] | None"]
"""(server, tool) -> the tool's breaker and its `tool_list`, or None while it has no breaker (never called)."""


def open_view(catalog: Catalog, entries: Entries) -> tuple[View, float | None]:
    """The view of `catalog` now, and the seconds until the earliest open period in it ends (None: none ends)."""
    view: dict[str, Shown] = {}
    soonest: float | None = None
    for name, (route, _) in catalog.tools.items():
        found = entries(route.server, route.name)
        if found is None:
            continue
        breaker, mode = found
        if mode == "static":
            continue
        state = breaker.state
        if state is CircuitState.OPEN:
            left = breaker.open_remaining()
            if not left:
                continue  # the period is over: the next call is the probe
            soonest = left if soonest is None else min(soonest, left)
        elif state is not CircuitState.FORCED_OPEN:
            continue
        view[name] = Shown(mode, state.value, breaker.snapshot().last_error)
    return view, soonest


def apply_view(tools: list[types.Tool], view: View) -> list[types.Tool]:
    """`tools` as the view shows them: hidden ones left out, annotated ones marked."""
    if not view:
        return tools
    out = []
    for tool in tools:
        shown = view.get(tool.name)
        if shown is None:
            out.append(tool)
        elif shown.mode == "annotate":
            description = f"{ANNOTATION} {tool.description}" if tool.description else ANNOTATION
            data = {"state": shown.state, "last_error": shown.last_error}
            out.append(
                tool.model_copy(update={"description": description, "meta": {**(tool.meta or {}), META_KEY: data}})
            )
    return out


class Coalescer:
    """Calls `send` after `poke()`, at most once per `interval` seconds: the first change of a quiet spell at once,
    later ones together when the interval has passed since the last send (so the last change is never lost)."""

    def __init__(
        self, interval: float, send: Callable[[], Awaitable[None]], clock: Callable[[], float] = anyio.current_time
    ) -> None:
        self.interval = interval
        self._send = send
        self._clock = clock
        self._last = -math.inf
        self._wake: anyio.Event | None = None
        self._pending = False

    @property
    def running(self) -> bool:
        return self._wake is not None

    def poke(self) -> None:
        self._pending = True
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Until cancelled: wait for a poke, wait out the interval since the last send, send."""
        self._wake = anyio.Event()
        try:
            while True:
                if not self._pending:
                    await self._wake.wait()
                wait = self._last + self.interval - self._clock()
                if wait > 0:
                    await anyio.sleep(wait)  # pokes meanwhile are covered by this send
                self._pending = False  # what changes from here on is news for the next send
                self._wake = anyio.Event()
                self._last = self._clock()
                try:
                    await self._send()
                except Exception:  # one failed announcement must not end the announcing
                    logger.exception("could not announce a tool list change")
        finally:
            self._wake = None


class ToolSurface:
    """The current view, recomputed when a breaker changes state, when an open period in it ends and when the
    catalog changes; `announce` is told whenever what the list shows changed."""

    def __init__(self, entries: Entries, announce: Callable[[], None]) -> None:
        self.view: View = {}
        self._entries = entries
        self._announce = announce
        self._soonest: float | None = None
        self._wake: anyio.Event | None = None

    def breaker_changed(self) -> None:
        """A breaker moved (a listener's call: synchronous, from inside the breaker)."""
        if self._wake is not None:
            self._wake.set()

    def refresh(self, catalog: Catalog) -> None:
        view, self._soonest = open_view(catalog, self._entries)
        if view != self.view:
            self.view = view
            self._announce()

    async def run(self, catalog: Callable[[], Catalog]) -> None:
        """Until cancelled: refresh on each breaker change and when the soonest open period in the view ends."""
        self._wake = anyio.Event()
        try:
            while True:
                # A little past the end, so that the breaker's own clock has passed it too.
                wait = math.inf if self._soonest is None else self._soonest + 0.05
                with anyio.move_on_after(wait):
                    await self._wake.wait()
                self._wake = anyio.Event()
                self.refresh(catalog())
        finally:
            self._wake = None
