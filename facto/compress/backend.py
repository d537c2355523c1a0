"""Which implementation serves a call: fused kernels or the PyTorch reference.

CUDA: the Triton kernels (:mod:`facto.compress.kernels`). CPU: the Numba kernels
(:mod:`facto.compress.cpu_kernels`), or the Triton kernels under
TRITON_INTERPRET=1 (their tests). Both write the reference's format, and seed their stochastic
rounding with :func:`facto.compress.seeds.kernel_seed`. ``FACTO_CPU_KERNELS=0`` (or false, no, off; read once) or
:func:`reference_only` makes the CPU run the reference.
"""
from __future__ import annotations

import os

import torch

from .switches import reference_only, reference_only_now  # noqa: F401 (reference_only: for callers here)

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
KERNEL_INTERFACE = ("KernelFailed", "available", "clamp_with_mask", "kernel_seed", "masked_grad", "pack_mask",
                    "quantize_pack", "reference_only", "supports_block", "unpack_dequantize",
                    "unpack_mask")  # what each kernel module offers facto.compress
CPU_KERNELS = os.environ.get("FACTO_CPU_KERNELS", "").strip().lower() not in ("0", "false", "no", "off")


def _triton_kernels(device: torch.device, dtype: torch.dtype | None, block: int | None):
    """facto.compress.kernels where it serves this call (CUDA, or CPU under TRITON_INTERPRET=1)."""
    if dtype is not None and dtype not in KERNEL_DTYPES:
        return None
    try:
        from . import kernels
    except Exception:  # a broken install must not break compression
        return None
    if block is not None and not kernels.supports_block(block):
        return None
    return kernels if kernels.available(device) else None


def _cpu_kernels(dtype: torch.dtype | None, block: int | None):
    """facto.compress.cpu_kernels where it serves this call (float32/float16/bfloat16 or no floating data)."""
    if not CPU_KERNELS or reference_only_now() or (dtype is not None and dtype not in KERNEL_DTYPES):
        return None
    try:
        from . import cpu_kernels
    except Exception:
        return None
    if block is not None and not cpu_kernels.supports_block(block):
        return None
    return cpu_kernels if cpu_kernels.available() else None


def kernels_for(device: torch.device, dtype: torch.dtype | None = None, block: int | None = None):
    """The kernel module that serves this call, or None for the PyTorch reference.

    float64, and blocks the kernels do not take (Triton: powers of two in [8, 8192]; Numba:
    multiples of 8), take the reference; so does code that torch.compile traces on the CPU. On CPU
    the Triton kernels serve only under TRITON_INTERPRET=1 (triton is not even imported otherwise).
    """
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") == "1":
            return _triton_kernels(device, dtype, block)
        if torch.compiler.is_compiling():  # inside torch.compile: the reference's ops compile, numba's do not
            return None
        return _cpu_kernels(dtype, block)
    return _triton_kernels(device, dtype, block)


def path_name(device: torch.device) -> str:
    """What compresses a float32 map on `device`: 'numba kernels', 'Triton kernels' or 'PyTorch reference'."""
    kernels = kernels_for(device, torch.float32, 64)
    if kernels is None:
        return "PyTorch reference"
    return "numba kernels" if kernels.__name__.endswith("cpu_kernels") else "Triton kernels"


def fused(device: torch.device, call, dtype: torch.dtype | None = None, block: int | None = None):
    """`call(kernels)` where a kernel module serves this call (see :func:`kernels_for`), else
    None; None too when a kernel fails (it warned and turned its kernels off: the caller's
    PyTorch reference serves this call and every later one)."""
    kernels = kernels_for(device, dtype, block)
    if kernels is None:
        return None
    try:
        return call(kernels)
    except kernels.KernelFailed:
        return None
