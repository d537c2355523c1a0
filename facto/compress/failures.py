"""What a kernel module does when one of its kernels fails: it turns its kernels off for that device
with one warning, and facto.compress redoes the call with its PyTorch reference."""
from __future__ import annotations

import functools
import warnings
from typing import Callable, TypeVar

import torch
from torch import Tensor

_Launcher = TypeVar("_Launcher", bound=Callable)


class KernelFailed(RuntimeError):
    """A kernel could not be built or run; its module's kernels are now off for its device."""


def guarded(works: Callable[[], dict[str, bool]], label: str) -> Callable[[_Launcher], _Launcher]:
    """A decorator for the launchers of one kernel module (`works`: gives its dict of device type ->
    kernels on, looked up at each failure; `label`: its kernels' name in the warning): any failure but
    running out of memory switches the kernels off for the device of the launcher's first argument
    (one warning) and raises KernelFailed."""

    def wrap(launcher: _Launcher) -> _Launcher:
        @functools.wraps(launcher)
        def run(first: Tensor, *args, **kwargs):
            try:
                return launcher(first, *args, **kwargs)
            except (MemoryError, torch.OutOfMemoryError):
                raise
            except Exception as err:
                kind, on = first.device.type, works()
                if on.get(kind):  # the kernels were on (during the probe, the probe warns)
                    warnings.warn(f"facto: {label} disabled on {kind} ({launcher.__name__}: {err!r});"
                                  " the PyTorch reference takes over", stacklevel=4)
                on[kind] = False
                raise KernelFailed(f"{launcher.__name__} failed on {kind}: {err!r}") from err

        return run  # type: ignore[return-value]

    return wrap
