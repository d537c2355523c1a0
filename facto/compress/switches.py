"""The switch that makes facto.compress run its PyTorch reference whatever kernels could serve (tests,
benchmarks); every kernel module asks it."""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

_reference_only: ContextVar[bool] = ContextVar("facto_reference_only", default=False)


@contextmanager
def reference_only() -> Iterator[None]:
    """Inside this block facto.compress uses its PyTorch reference (tests, benchmarks)."""
    token = _reference_only.set(True)
    try:
        yield
    finally:
        _reference_only.reset(token)


def reference_only_now() -> bool:
    """Whether the caller is inside :func:`reference_only`."""
    return _reference_only.get()
