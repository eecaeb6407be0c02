"""Behaviour specs and their per-call resolution, with an injected RNG and elapsed time."""

from __future__ import annotations

import random

import pytest

from circuitbox.chaos import DEFAULT_TOOLS, BehaviourError, parse_behaviour, parse_tool, resolve


@pytest.mark.parametrize(
    ("spec", "fields"),
    [
        ("healthy", {"kind": "healthy"}),
        ("add", {"kind": "add"}),
        ("error", {"kind": "error", "message": ""}),
        ("error:disk on fire: really", {"kind": "error", "message": "disk on fire: really"}),
        ("protocol_error", {"kind": "protocol_error", "code": -32603}),
        ("protocol_error:-32000", {"kind": "protocol_error", "code": -32000}),
        ("latency:0.5", {"kind": "latency", "seconds": (0.5, 0.5)}),
        ("latency:0.1-0.4", {"kind": "latency", "seconds": (0.1, 0.4)}),
        ("hang", {"kind": "hang"}),
        ("crash", {"kind": "crash", "code": 1}),
        ("crash:3", {"kind": "crash", "code": 3}),
        ("garbage", {"kind": "garbage", "then": "answer", "count": 3}),
        ("garbage:exit:1", {"kind": "garbage", "then": "exit", "count": 1}),
        ("garbage:hang", {"kind": "garbage", "then": "hang"}),
        ("flapping:5:10", {"kind": "flapping", "down": 5.0, "up": 10.0, "fault": "error"}),
        ("flapping:1:2:hang", {"kind": "flapping", "fault": "hang"}),
        ("fail:0.3", {"kind": "fail", "probability": 0.3, "fault": "error"}),
        ("fail:1:protocol_error", {"kind": "fail", "probability": 1.0, "fault": "protocol_error"}),
        ("fail_first:2", {"kind": "fail_first", "count": 2, "fault": "error"}),
        ("fail_first:1:hang", {"kind": "fail_first", "count": 1, "fault": "hang"}),
        ("progress", {"kind": "progress", "count": 3, "seconds": (0.0, 0.0)}),
        ("progress:5:0.1", {"kind": "progress", "count": 5, "seconds": (0.1, 0.1)}),
    ],
)
def test_every_documented_spec_parses_to_its_fields(spec: str, fields: dict[str, object]) -> None:
    behaviour = parse_behaviour(spec)
    assert behaviour.spec == spec
    for name, value in fields.items():
        assert getattr(behaviour, name) == value


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("nope", "unknown behaviour"),
        ("healthy:1", "expected 0 argument"),
        ("latency", "expected 1 argument"),
        ("latency:x", "must be a number"),
        ("latency:-1", "must be a number"),
        ("latency:nan", ">= 0"),
        ("latency:0.5-0.1", "low to high"),
        ("fail:1.5", "between 0 and 1"),
        ("fail:0.5:explode", "FAULT must be one of"),
        ("flapping:0:0", r"DOWN \+ UP"),
        ("garbage:later", "THEN must be one of"),
        ("crash:x", "must be an integer"),
        ("fail_first", "expected 1 to 2 argument"),
        ("fail_first:x", "must be an integer"),
    ],
)
def test_a_bad_spec_is_rejected_with_a_message_naming_the_problem(spec: str, complaint: str) -> None:
    with pytest.raises(BehaviourError, match=complaint):
        parse_behaviour(spec)


def test_a_tool_flag_is_name_equals_behaviour() -> None:
    name, behaviour = parse_tool("slow=latency:0.5")
    assert (name, behaviour.kind) == ("slow", "latency")
    for bad in ("slow", "=healthy", "x=nope"):
        with pytest.raises(BehaviourError):
            parse_tool(bad)


def test_the_default_tool_set_parses() -> None:
    assert {parse_behaviour(spec).kind for spec in DEFAULT_TOOLS.values()} >= {
        "healthy",
        "hang",
        "crash",
        "fail",
    }


def test_flapping_fails_for_down_seconds_then_heals_for_up_seconds_and_repeats() -> None:
    flapping = parse_behaviour("flapping:5:10:protocol_error")
    rng = random.Random(0)
    kinds = [resolve(flapping, rng, t).kind for t in (0, 4.99, 5, 14.99, 15, 19.99, 20)]
    down, up = "protocol_error", "healthy"
    assert kinds == [down, down, up, up, down, down, up]


def test_fail_with_a_seed_is_reproducible_and_near_its_probability() -> None:
    fail = parse_behaviour("fail:0.3")

    def run(seed: int) -> list[str]:
        rng = random.Random(seed)
        return [resolve(fail, rng, 0).kind for _ in range(1000)]

    assert run(7) == run(7)
    assert run(7) != run(8)
    assert 200 < run(7).count("error") < 400


def test_fail_with_probability_zero_or_one_is_certain() -> None:
    rng = random.Random(1)
    assert {resolve(parse_behaviour("fail:0"), rng, 0).kind for _ in range(50)} == {"healthy"}
    assert {resolve(parse_behaviour("fail:1:hang"), rng, 0).kind for _ in range(50)} == {"hang"}


def test_a_latency_range_resolves_to_a_fixed_delay_inside_it() -> None:
    rng = random.Random(3)
    delays = [resolve(parse_behaviour("latency:0.1-0.4"), rng, 0).seconds for _ in range(200)]
    assert all(low == high and 0.1 <= low <= 0.4 for low, high in delays)
    assert len({d for d, _ in delays}) > 100


def test_plain_behaviours_resolve_to_themselves() -> None:
    for spec in ("healthy", "hang", "latency:0.2", "garbage:exit", "crash"):
        behaviour = parse_behaviour(spec)
        assert resolve(behaviour, random.Random(0), 123.0) is behaviour


def test_fail_first_fails_the_first_n_calls_since_it_was_set_then_heals() -> None:
    behaviour = parse_behaviour("fail_first:2:hang")
    kinds = [resolve(behaviour, random.Random(0), 0.0, nth).kind for nth in (1, 2, 3, 4)]
    assert kinds == ["hang", "hang", "healthy", "healthy"]
