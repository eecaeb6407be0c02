"""The one-command demo: circuitbox in front of two chaos downstreams, scripted callers, a live table and a summary.

The command itself (`circuitbox demo`) is `circuitbox.commands.demo`.
"""

from __future__ import annotations


def broken_pipe(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return any(broken_pipe(inner) for inner in exc.exceptions)
    return isinstance(exc, BrokenPipeError)
