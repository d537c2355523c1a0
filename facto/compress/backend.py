"""Which implementation serves a call: the Triton kernels (`kernels`) or the PyTorch reference."""
from __future__ import annotations

import os

import torch

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def kernels_for(device: torch.device, dtype: torch.dtype | None = None, block: int | None = None):
    """The facto.compress.kernels module when its Triton kernels serve this call, else None.

    On CPU that is only under TRITON_INTERPRET=1 (tests); triton is not even imported
    otherwise. float64 and blocks that are not powers of two >= 8 take the reference path.
    """
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return None
    if dtype is not None and dtype not in KERNEL_DTYPES:
        return None
    try:
        from . import kernels
    except Exception:  # a broken install must not break compression
        return None
    if block is not None and not kernels.supports_block(block):
        return None
    return kernels if kernels.available(device) else None


def fused(device: torch.device, call, dtype: torch.dtype | None = None, block: int | None = None):
    """`call(facto.compress.kernels)` where the Triton kernels serve this call (see :func:`_kernels_for`),
    else None; None too when a kernel fails (it warned and turned the kernels off: the caller's
    PyTorch reference serves this call and every later one)."""
    kernels = kernels_for(device, dtype, block)
    if kernels is None:
        return None
    try:
        return call(kernels)
    except kernels.KernelFailed:
        return None
