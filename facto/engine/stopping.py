"""Stop requests that reach a run inside its long phases, not only between its events.

A run's consumer (a `facto.engine.jobs.Job`'s thread, the worker process's main thread) installs
its stop flag for the thread the run executes in (`stop_requests`); the run calls `check_stop()`
between steps and inside every long phase (data loading, factorization, warm-up, evaluation),
which raises `RunStopped` once a stop was asked for. The recorder stores a run that ends so as
'interrupted', like a stream closed between events. Without an installed flag (the CLI, scripts)
`check_stop()` does nothing: Ctrl-C raises KeyboardInterrupt there.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

STOPPED_BY_USER = "stopped by the user"

_local = threading.local()


class RunStopped(BaseException):
    """A stop request ended a run mid-phase (a BaseException, so no `except Exception` of a
    library in between swallows it). Its message says who stopped the run."""

    def __init__(self, reason: str = STOPPED_BY_USER) -> None:
        super().__init__(reason)
        self.reason = reason


@contextmanager
def stop_requests(reason: Callable[[], str | None]) -> Iterator[None]:
    """Within the block, `check_stop()` in this thread raises RunStopped(reason()) once `reason()`
    gives a text (None: go on). Blocks nest; the innermost one counts."""
    previous = getattr(_local, "reason", None)
    _local.reason = reason
    try:
        yield
    finally:
        _local.reason = previous


def stop_reason() -> str | None:
    """Why this thread's run should stop (None: it goes on, or no flag is installed)."""
    reason = getattr(_local, "reason", None)
    return reason() if reason is not None else None


def check_stop() -> None:
    """Raise RunStopped when this thread's run was asked to stop."""
    reason = stop_reason()
    if reason is not None:
        raise RunStopped(reason)
