"""Log setup for `circuitbox serve` and the transition log lines.

Logs always go to stderr: in stdio mode stdout carries the MCP protocol. `--log-format json` writes one JSON
object per line (timestamp, level, logger, message and any structured fields), for log shippers.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, Literal, TextIO

from circuitbox.breakers import BreakerEvent, StateTransition

transitions_logger = logging.getLogger("circuitbox.transitions")

# Attributes every LogRecord has; anything else on a record came from `extra=` and goes into the JSON object.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class _Handler(logging.StreamHandler[TextIO]):
    """Marks our handler, so a second configure_logging() replaces it instead of doubling every line."""


def configure_logging(fmt: Literal["text", "json"] | str = "text", level: int | str = "INFO") -> None:
    """Send every log record at `level` and above to stderr, as text lines or JSON lines.

    Raises:
        ValueError: unknown format or level name.
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {fmt!r}")
    if isinstance(level, str):
        resolved = logging.getLevelName(level.upper())
        if not isinstance(resolved, int):
            raise ValueError(f"unknown log level {level!r}")
        level = resolved
    handler = _Handler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


# A circuit that stops passing calls is worth a warning; every other move is routine.
_WARN = frozenset({"open", "forced_open"})


class TransitionLogger:
    """Breaker listener writing one log line per state transition to logger "circuitbox.transitions".

    `labels` maps a breaker name to (server, tool), e.g. `MetricsCollector.labels_for`.
    """

    def __init__(self, labels: Callable[[str], tuple[str, str]] | None = None) -> None:
        self._labels = labels or (lambda name: (name, ""))

    def __call__(self, event: BreakerEvent) -> None:
        if not isinstance(event, StateTransition):
            return
        server, tool = self._labels(event.breaker)
        src, dst = event.from_state.value, event.to_state.value
        transitions_logger.log(
            logging.WARNING if dst in _WARN else logging.INFO,
            "circuit %s: %s -> %s (%s)",
            f"{server}/{tool}" if tool else server,
            src,
            dst,
            event.reason,
            extra={
                "event": "state_transition",
                "breaker": event.breaker,
                "server": server,
                "tool": tool,
                "from_state": src,
                "to_state": dst,
                "reason": event.reason,
                "generation": event.generation,
            },
        )


log_transition = TransitionLogger()
