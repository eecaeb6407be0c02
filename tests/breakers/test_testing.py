from __future__ import annotations

import pytest

from circuitbox.breakers.testing import FakeClock


def test_a_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(5)
    assert clock() == clock.now == 5.0
    clock.advance(2.5)
    assert clock() == 7.5
    assert repr(clock) == "FakeClock(now=7.5)"


def test_a_fake_clock_never_goes_back() -> None:
    clock = FakeClock()
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-1)
    assert clock.now == 0
