"""One run of the scenario: scripted callers, an outage injected then healed, breaker states read via the proxy."""

from __future__ import annotations

import random
import time
from typing import Any, Protocol

import anyio
import mcp_types as types
from mcp import ClientSession, MCPError

from circuitbox.demo._model import Call, Kind, Outcome, ToolTally
from circuitbox.demo._plan import FAILING, FAULTS, TOOLS, Timing, all_tools, published

META_KEY = "circuitbox/breaker"
WATCH_INTERVAL = 0.1
"""How often the breaker states are read (circuit_status) while a scenario runs."""
RENDER_INTERVAL = 0.25
"""How often the view is refreshed (4 times a second)."""
GRACE = 5.0
"""Beyond call_timeout, how long a caller waits before it records a call as never answered."""


class View(Protocol):
    def event(self, scenario: Scenario, at: float, text: str) -> None: ...

    def update(self, scenario: Scenario) -> None: ...


def structured(result: Any) -> dict[str, Any]:
    data = getattr(result, "structured_content", None)
    return dict(data) if isinstance(data, dict) else {}


async def tool_call(session: ClientSession, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Call a tool that must succeed (own tools, chaos_control) and return its structuredContent.

    Raises:
        RuntimeError: the tool answered with an error.
    """
    result = await session.call_tool(name, arguments)
    if not isinstance(result, types.CallToolResult) or result.is_error:
        raise RuntimeError(f"{name} {arguments} failed: {result}")
    return structured(result)


async def downstream_calls(session: ClientSession, server: str) -> int:
    """Calls that reached `server`'s demo tools, as the chaos server counted them."""
    stats = await tool_call(session, published(server, "chaos_control"), {"action": "stats"})
    tools = stats.get("tools", {})
    return sum(int(tools.get(tool, {}).get("calls", 0)) for tool in TOOLS[server])


class Scenario:
    """Callers call the four demo tools until `timing.total`; the script breaks `search` and heals it."""

    def __init__(
        self, session: ClientSession, timing: Timing, *, seed: int, breakers: bool, fault: str, view: View
    ) -> None:
        self.session = session
        self.timing = timing
        self.seed = seed
        self.breakers = breakers
        self.fault = fault
        self.view = view
        self.label = "with breakers" if breakers else "without breakers"
        self.phase = "warm-up"
        self.tallies = {(s, t): ToolTally(s, t, state="closed" if breakers else "disabled") for s, t in all_tools()}
        self.calls: list[Call] = []
        self.events: list[tuple[float, str]] = []
        self.outage_at: float | None = None
        self.heal_at: float | None = None
        self._announced: set[str] = set()
        self._t0 = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self._t0

    def note(self, text: str) -> None:
        at = self.now()
        self.events.append((at, text))
        self.view.event(self, at, text)

    async def run(self) -> Outcome:
        self._t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch)
            tg.start_soon(self._render)
            async with anyio.create_task_group() as callers:
                for index in range(self.timing.callers):
                    callers.start_soon(self._caller, index)
                await self._script()
            tg.cancel_scope.cancel()
        duration = self.now()
        await self._read_states()
        self.view.update(self)
        counted = {server: await downstream_calls(self.session, server) for server in TOOLS}
        return Outcome(self.label, self.breakers, self.calls, self.tallies, counted, self.events, duration)

    # -- the script and the callers --------------------------------------------------------------------------

    async def _sleep_until(self, at: float) -> None:
        await anyio.sleep(max(0.0, at - self.now()))

    async def _set_all(self, server: str, behaviour: str) -> None:
        await tool_call(
            self.session, published(server, "chaos_control"), {"action": "set", "tool": "*", "behaviour": behaviour}
        )

    async def _script(self) -> None:
        await self._sleep_until(self.timing.warmup)
        await self._set_all(FAILING, FAULTS[self.fault])
        self.outage_at, self.phase = self.now(), "OUTAGE"
        what = "hangs (never answers)" if self.fault == "hang" else "returns errors"
        self.note(f"outage injected: every '{FAILING}' tool now {what}")
        await self._sleep_until(self.timing.heal_at)
        await self._set_all(FAILING, "healthy")
        self.heal_at, self.phase = self.now(), "recovery"
        self.note(f"outage healed: '{FAILING}' answers normally again")
        await self._sleep_until(self.timing.total)
        self.phase = "finishing"

    async def _caller(self, index: int) -> None:
        # Seeded per caller (not per run), so both runs make the same choices in the same order.
        rng = random.Random(f"{self.seed}/{index}")
        tools = all_tools()
        number = 0
        while self.now() < self.timing.total:
            server, tool = rng.choice(tools)
            number += 1
            start = self.now()
            kind = await self._call(server, tool, {"message": f"caller {index} call {number}"})
            self._record(Call(server, tool, start, self.now() - start, kind))
            await anyio.sleep(rng.uniform(*self.timing.think))

    async def _call(self, server: str, tool: str, arguments: dict[str, Any]) -> Kind:
        result: Any = None
        with anyio.move_on_after(self.timing.call_timeout + GRACE):
            try:
                result = await self.session.call_tool(published(server, tool), arguments)
            except MCPError:
                return "failed"
        if result is None:
            return "no_answer"
        if not isinstance(result, types.CallToolResult):
            return "failed"
        if not result.is_error:
            return "ok"
        return "fast_fail" if META_KEY in (result.meta or {}) else "failed"

    def _record(self, call: Call) -> None:
        self.calls.append(call)
        tally = self.tallies[(call.server, call.tool)]
        tally.add(call)
        if call.kind == "fast_fail" and self.outage_at is not None:
            seen = max(0.0, call.start - self.outage_at)
            tally.opened_after = seen if tally.opened_after is None else min(tally.opened_after, seen)
        if (
            not self.breakers
            and call.kind == "ok"
            and call.server == FAILING
            and self.heal_at is not None
            and call.start >= self.heal_at
            and tally.recovered_after is None
        ):
            tally.recovered_after = call.start + call.seconds - self.heal_at
            self.note(
                f"{published(call.server, call.tool)} answers again ({tally.recovered_after:.1f} s after the heal)"
            )

    # -- watching breaker states -----------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await self._read_states()
            await anyio.sleep(WATCH_INTERVAL)

    async def _read_states(self) -> None:
        try:
            data = await tool_call(self.session, "circuit_status", {})
        except Exception:  # the summary reports a proxy that stopped answering; the view keeps going
            return
        for row in data.get("breakers", []):
            tally = self.tallies.get((row.get("server"), row.get("tool")))
            if tally is not None:
                self._state_seen(tally, str(row.get("state")))

    def _state_seen(self, tally: ToolTally, state: str) -> None:
        before, tally.state = tally.state, state
        if state == before:
            return
        name = published(tally.server, tally.tool)
        at = self.now()
        if state == "open" and self.outage_at is not None and name not in self._announced:
            self._announced.add(name)
            seen = at - self.outage_at
            tally.opened_after = seen if tally.opened_after is None else min(tally.opened_after, seen)
            self.note(f"{name} OPEN after repeated failures: calls now fail fast ({tally.opened_after:.1f} s in)")
        elif state == "open" and before == "half_open":
            self.note(f"{name} probe failed: open again for longer")
        elif state == "half_open":
            self.note(f"{name} half-open: letting a probe through")
        elif state == "closed" and self.heal_at is not None and tally.recovered_after is None:
            tally.recovered_after = at - self.heal_at
            self.note(f"{name} closed: recovered {tally.recovered_after:.1f} s after the heal")

    async def _render(self) -> None:
        while True:
            self.view.update(self)
            await anyio.sleep(RENDER_INTERVAL)
