"""What the tool list shows of breaker state, and the coalescing of its announcements, on injected clocks (the
end-to-end behaviour with real processes is in test_tool_list_surface.py)."""

from __future__ import annotations

import mcp_types as types
import trio
import trio.testing

from circuitbox.breakers import BreakerRegistry, CircuitBreakerConfig, CircuitState
from circuitbox.breakers.testing import FakeClock
from circuitbox.server.catalog import Catalog, Route
from circuitbox.server.tool_surface import ANNOTATION, Coalescer, Shown, ToolSurface, apply_view, open_view


def tool(name: str, description: str | None = "does things") -> types.Tool:
    return types.Tool(name=name, description=description, input_schema={"type": "object"})


def test_announcements_come_at_most_once_per_interval_and_the_last_change_of_a_burst_is_sent() -> None:
    sent: list[float] = []

    async def main() -> None:
        async def send() -> None:
            sent.append(trio.current_time())

        coalescer = Coalescer(2.0, send)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(coalescer.run)
            await trio.testing.wait_all_tasks_blocked()
            coalescer.poke()  # t=0: a quiet spell before it, sent at once
            await trio.sleep(0.5)
            for _ in range(5):  # a burst: one send for all of it, 2 s after the last one
                coalescer.poke()
                await trio.sleep(0.1)
            await trio.sleep(10)
            coalescer.poke()  # quiet again: at once
            await trio.sleep(1)
            assert coalescer.running
            nursery.cancel_scope.cancel()
        assert not coalescer.running

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert sent == [0.0, 2.0, 11.0]


def test_a_failing_announcement_is_logged_and_the_next_one_still_goes_out() -> None:
    sent: list[int] = []

    async def main() -> None:
        async def send() -> None:
            sent.append(len(sent))
            if len(sent) == 1:
                raise RuntimeError("client gone")

        coalescer = Coalescer(0, send)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(coalescer.run)
            await trio.testing.wait_all_tasks_blocked()
            coalescer.poke()
            await trio.testing.wait_all_tasks_blocked()
            coalescer.poke()
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert sent == [0, 1]


def setup() -> tuple[Catalog, dict[str, tuple[object, str]], FakeClock]:
    clock = FakeClock()
    registry = BreakerRegistry(clock=clock)
    config = CircuitBreakerConfig(failure_threshold=1, timeout=10, jitter=0)
    tools = {}
    entries: dict[str, tuple[object, str]] = {}
    for name, mode in (("a", "annotate"), ("h", "hide"), ("s", "static"), ("f", "annotate"), ("c", "hide")):
        tools[f"x__{name}"] = (Route("x", name), tool(f"x__{name}", None if name == "f" else "does things"))
        entries[name] = (registry.get_or_create(name, config), mode)
    return Catalog(tools=tools), entries, clock


def test_the_view_shows_open_and_forced_open_tools_until_their_open_period_ends() -> None:
    catalog, entries, clock = setup()
    for name in ("a", "h", "s"):
        permit = entries[name][0].acquire()  # type: ignore[attr-defined]
        permit.failure("timeout", "no answer")
    entries["f"][0].force(CircuitState.FORCED_OPEN)  # type: ignore[attr-defined]

    def lookup(server: str, name: str) -> tuple[object, str] | None:
        return entries.get(name) if name != "never" else None

    view, soonest = open_view(catalog, lookup)  # type: ignore[arg-type]
    assert set(view) == {"x__a", "x__h", "x__f"} and soonest == 10  # static and closed ones are not in it
    assert view["x__a"] == Shown("annotate", "open", "no answer")
    shown = {t.name: t for t in apply_view(catalog.tool_list(), view)}
    assert set(shown) == {"x__a", "x__s", "x__f", "x__c"}  # the hidden one is left out
    assert shown["x__a"].description == f"{ANNOTATION} does things"
    assert (shown["x__a"].meta or {})["circuitbox/breaker"] == {"state": "open", "last_error": "no answer"}
    assert shown["x__f"].description == ANNOTATION
    assert shown["x__c"] == catalog.tools["x__c"][1]

    clock.advance(10)  # the open period is over: the next call would be the probe
    view, soonest = open_view(catalog, lookup)  # type: ignore[arg-type]
    assert set(view) == {"x__f"} and soonest is None
    assert apply_view([tool("y")], {}) == [tool("y")]


def test_the_surface_announces_only_changes_of_what_the_list_shows() -> None:
    catalog, entries, _ = setup()
    announced: list[int] = []
    surface = ToolSurface(lambda server, name: entries.get(name), lambda: announced.append(1))  # type: ignore[arg-type,return-value]
    surface.breaker_changed()  # not running: nothing to wake
    surface.refresh(catalog)
    assert announced == [] and surface.view == {}
    entries["h"][0].force(CircuitState.FORCED_OPEN)  # type: ignore[attr-defined]
    surface.refresh(catalog)
    surface.refresh(catalog)
    assert announced == [1] and set(surface.view) == {"x__h"}


def test_the_surface_refreshes_on_a_transition_and_when_the_open_period_ends() -> None:
    async def main() -> list[float]:
        registry = BreakerRegistry(clock=trio.current_time)
        breaker = registry.get_or_create("a", CircuitBreakerConfig(failure_threshold=1, timeout=5, jitter=0))
        catalog = Catalog(tools={"x__a": (Route("x", "a"), tool("x__a"))})
        announced: list[float] = []
        surface = ToolSurface(lambda server, name: (breaker, "hide"), lambda: announced.append(trio.current_time()))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(surface.run, lambda: catalog)
            await trio.testing.wait_all_tasks_blocked()
            breaker.acquire().failure("timeout", "no answer")  # type: ignore[union-attr]
            surface.breaker_changed()
            await trio.testing.wait_all_tasks_blocked()
            assert set(surface.view) == {"x__a"}
            await trio.sleep(6)
            assert surface.view == {}
            nursery.cancel_scope.cancel()
        return announced

    announced = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert announced[0] == 0.0 and announced[1] == 5.05
