"""The clock the engine reads: any zero-argument callable returning monotonic seconds."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]
"""Monotonic seconds. Never wall time: a wall clock jumps (NTP) and would open or close circuits at random."""

monotonic: Clock = time.monotonic
