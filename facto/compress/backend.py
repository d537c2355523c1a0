"""Which implementation serves a call: fused kernels or the PyTorch reference.

CUDA: the Triton kernels (:mod:`facto.compress.kernels`). CPU: the Numba kernels
(:mod:`facto.compress.cpu_kernels`), or the Triton kernels under
TRITON_INTERPRET=1 (their tests). Both write the reference's format, and seed their stochastic
rounding with :func:`kernel_seed`. ``FACTO_CPU_KERNELS=0`` (or false, no, off; read once) or
:func:`reference_only` makes the CPU run the reference.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
KERNEL_INTERFACE = ("KernelFailed", "available", "clamp_with_mask", "kernel_seed", "masked_grad", "pack_mask",
                    "quantize_pack", "reference_only", "supports_block", "unpack_dequantize",
                    "unpack_mask")  # what each kernel module offers facto.compress
CPU_KERNELS = os.environ.get("FACTO_CPU_KERNELS", "").strip().lower() not in ("0", "false", "no", "off")
_SEED_BITS = 62

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


# ---------------------------------------------------------------- seeds


def mix64(v: int) -> int:
    """splitmix64 finaliser: a well-spread 64-bit value from any int."""
    v = (v + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    v = ((v ^ (v >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    v = ((v ^ (v >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return v ^ (v >> 31)


def kernel_seed(seed: int | None, generator: torch.Generator | None = None) -> int:
    """The key of one tensor's rounding noise (the Triton kernels' Philox key; the Numba kernels
    mix it into theirs), on the host and without a device sync.

    An explicit `seed` is used as is. Else a CPU `generator` (or torch's default CPU
    generator) draws one, so torch.manual_seed makes runs repeat; a CUDA `generator`
    is never drawn from (that would sync): its host-side seed and offset are mixed
    and its offset advanced. Keys always lie in [2**62, 2**63), so Triton sees one
    int64 argument type and never recompiles for a new seed.
    """
    if seed is None and generator is not None and generator.device.type != "cpu":
        seed = _device_generator_seed(generator)
    if seed is None:
        cpu = generator if generator is not None and generator.device.type == "cpu" else None
        seed = int(torch.randint(0, 2**_SEED_BITS, (), generator=cpu, device="cpu"))
    return (seed & (2**_SEED_BITS - 1)) | 2**_SEED_BITS


def _device_generator_seed(generator: torch.Generator) -> int | None:
    """A key from a CUDA generator's host-side seed and Philox offset (advanced by 4), or None."""
    try:
        offset = generator.get_offset()
        generator.set_offset(offset + 4)
    except (RuntimeError, AttributeError):  # a generator without a Philox offset
        return None
    return mix64(mix64(generator.initial_seed()) ^ offset)
