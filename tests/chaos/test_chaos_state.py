"""ChaosState: tools, behaviours switched at run time, counters, seeded RNGs, on an injected clock."""

from __future__ import annotations

import pytest

from circuitbox.chaos import ChaosState, UnknownToolError, parse_behaviour


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(seed: int | None = 1, clock: Clock | None = None, **tools: str) -> ChaosState:
    specs = {name: parse_behaviour(spec) for name, spec in tools.items()}
    return ChaosState(specs, seed=seed, clock=clock or Clock())


def test_calls_and_outcomes_are_counted_per_tool() -> None:
    state = make(echo="healthy", boom="error")
    entry, behaviour = state.begin("echo")
    assert behaviour.kind == "healthy"
    assert state.stats()["tools"]["echo"]["in_flight"] == 1
    state.end(entry, "ok")
    boom, _ = state.begin("boom")
    state.end(boom, "cancelled")
    stats = state.stats()
    assert stats["tools"]["echo"] == {
        "behaviour": "healthy",
        "calls": 1,
        "ok": 1,
        "errors": 0,
        "protocol_errors": 0,
        "cancelled": 0,
        "in_flight": 0,
    }
    assert stats["tools"]["boom"]["cancelled"] == 1
    assert (stats["total_calls"], stats["seed"]) == (2, 1)


def test_an_unknown_tool_raises() -> None:
    state = make(echo="healthy")
    with pytest.raises(UnknownToolError):
        state.begin("nope")
    with pytest.raises(UnknownToolError):
        state.set("nope", parse_behaviour("hang"))
    with pytest.raises(UnknownToolError):
        state.remove("nope")


def test_flapping_follows_the_injected_clock_from_when_it_was_set() -> None:
    clock = Clock()
    state = make(clock=clock, wobble="healthy")
    clock.now += 50  # time before the switch must not count
    state.set("wobble", parse_behaviour("flapping:2:3"))
    seen = []
    for step in (0.0, 1.9, 2.1, 4.9, 5.1):
        clock.now = 150 + step
        seen.append(state.begin("wobble")[1].kind)
    assert seen == ["error", "error", "healthy", "healthy", "error"]


def test_set_star_switches_every_tool() -> None:
    state = make(a="healthy", b="healthy")
    assert state.set("*", parse_behaviour("error")) == ["a", "b"]
    assert {e.behaviour.kind for e in state.tools.values()} == {"error"}


def test_a_tool_sequence_depends_only_on_the_seed_and_its_name() -> None:
    def sequence(state: ChaosState, interleave: bool) -> list[str]:
        kinds: list[str] = []
        for _ in range(40):
            if interleave:
                state.begin("other")
            kinds.append(state.begin("flaky")[1].kind)
        return kinds

    first = sequence(make(seed=5, flaky="fail:0.5", other="fail:0.5"), interleave=False)
    assert first == sequence(make(seed=5, flaky="fail:0.5", other="fail:0.5"), interleave=True)
    assert first != sequence(make(seed=6, flaky="fail:0.5", other="fail:0.5"), interleave=False)


def test_reset_restores_tools_behaviours_counters_and_the_rng() -> None:
    state = make(seed=9, flaky="fail:0.5")
    before = [state.begin("flaky")[1].kind for _ in range(20)]
    assert state.add("extra", parse_behaviour("add")) is True
    assert state.tools["extra"].shape == "add"
    state.set("flaky", parse_behaviour("hang"))
    assert state.reset() is True
    assert set(state.tools) == {"flaky"}
    assert state.stats()["total_calls"] == 0
    assert [state.begin("flaky")[1].kind for _ in range(20)] == before
    assert state.reset() is False


def test_adding_an_existing_tool_sets_its_behaviour_and_keeps_its_shape() -> None:
    state = make(sum="add")
    assert state.add("sum", parse_behaviour("error")) is False
    assert (state.tools["sum"].shape, state.tools["sum"].behaviour.kind) == ("add", "error")
    state.remove("sum")
    assert state.tools == {}


def test_an_unseeded_state_still_works() -> None:
    state = make(seed=None, flaky="fail:0.5")
    assert {state.begin("flaky")[1].kind for _ in range(100)} == {"healthy", "error"}
