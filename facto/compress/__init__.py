"""Block-wise lossy activation compression (the ActNN idea) and lossless helpers: `compress(x, bits)`.

A floating tensor is flattened in memory order and split into blocks of
``block`` contiguous values. Each block keeps its minimum ``lo`` and step
``scale`` as 16-bit floats (float16 where the block fits it, else bfloat16,
chosen per block) and every value becomes a ``bits``-bit code, bit-packed into
bytes. Deterministic rounding has error <= scale / 2 per value; stochastic
rounding has error < scale and is unbiased.

The reference is vectorised PyTorch and runs unchanged on CPU or CUDA; the one
value it reads on the host (a sync on CUDA) is a flag saying whether any block is
special. Fused kernels serve instead where they can: on CUDA the Triton kernels of
:mod:`facto.compress.kernels` (float32/float16/bfloat16, power-of-two blocks: one launch
to quantize and pack, which also raises the map's special-block flag, one to unpack and
dequantize), on the CPU the Numba kernels of :mod:`facto.compress.cpu_kernels`
(the same dtypes, blocks that are multiples of 8: one pass each way). All paths write the same
format, and deterministic codes and metadata are bit-identical between them.

Every finite value keeps its bound: a block holding NaN or +-inf, or whose range
overflows float arithmetic (a special block), is kept exactly, NaN as NaN and inf
with its sign, at block * itemsize extra bytes (see :mod:`facto.compress.format`).

Modules: `format` (constants and shared checks), `bits` (bit packing), `lossy` (b-bit and
16-bit containers), `lossless` (masks, narrow integers), `relaid` (non-contiguous maps),
`backend` (which path serves a call), `kernels` (Triton), `cpu_kernels` (Numba), `seeds` (their
noise keys), `switches` (the reference-only switch they obey) and `failures` (what a failing
kernel does).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..config import validate_bits
from .bits import pack_bits, unpack_bits
from .format import check_not_complex, held_bytes, owned, validate_block
from .lossless import (
    Kept,
    NarrowInt,
    PackedMask,
    clamp_with_mask,
    masked_grad,
    narrow_int,
    pack_mask,
)
from .lossy import HalfPacked, Packed, half_pack, quantize
from .relaid import Relaid, Stored, as_relaid

__all__ = [
    "HalfPacked", "Kept", "NarrowInt", "Packed", "PackedMask", "Relaid", "Stored", "clamp_with_mask", "compress",
    "container_name", "half_pack", "held_bytes", "masked_grad", "narrow_int", "owned", "pack_bits", "pack_mask",
    "quantize", "unpack_bits", "validate_block",
]


def container_name(stored: Stored) -> str:
    """"tensor" for a tensor kept as it is (bare or in a `Kept`), else the name of the container
    holding the values ("Packed", ...)."""
    if isinstance(stored, (Tensor, Kept)):
        return "tensor"
    return type(stored.inner if isinstance(stored, Relaid) else stored).__name__


def compress(
    x: Tensor,
    bits: int | None,
    block: int = 64,
    stochastic: bool = True,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Stored:
    """Store x compactly; every container has ``.nbytes`` and ``.restore()``.

    bool -> PackedMask; integer -> NarrowInt (both lossless, whatever bits);
    floating: bits None -> Kept (x itself, no copy), 16 -> HalfPacked,
    1..8 -> Packed via :func:`quantize` (``generator``/``seed``: its noise).
    A non-contiguous x (channels_last, a strided view) is held by a `Relaid`, whose
    restore has x's shape and strides. Complex tensors are refused (ValueError).
    """
    validate_bits(bits)
    validate_block(block)
    if not isinstance(x, Tensor):
        raise ValueError(f"x={type(x).__name__} is not allowed: use a torch.Tensor")
    check_not_complex(x)
    if bits is None and x.is_floating_point():
        return Kept(x)
    held = as_relaid(x, lambda values: compress(values, bits, block, stochastic, generator, seed))
    if held is not None:
        return held
    if x.dtype == torch.bool:
        return pack_mask(x)
    if not x.is_floating_point():
        return narrow_int(x)
    if bits == 16:
        return half_pack(x)
    return quantize(x, bits, block, stochastic=stochastic, generator=generator, seed=seed)
