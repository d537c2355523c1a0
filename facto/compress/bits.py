"""Bit-plane packing: 8 values of `bits` bits become `bits` bytes (byte j holds bit j of the 8)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .format import check_pack_width, is_int, owned

# Masked swaps (Hacker's Delight, transpose8) that transpose the 8x8 bit matrix
# held in one int64: byte k, bit j  <->  byte j, bit k.
_TRANSPOSE_STEPS = (
    (7, 0x00AA00AA00AA00AA),
    (14, 0x0000CCCC0000CCCC),
    (28, 0x00000000F0F0F0F0),
)


def _transpose_bytes(groups: Tensor) -> Tensor:
    """Bit-transpose each group of 8 bytes; groups is a contiguous uint8 tensor (G, 8).

    Uses an int64 view (little-endian: byte k is bits 8k..8k+7). The masks keep
    every shifted bit inside bits 0..62, so signed shifts are safe.
    """
    words = groups.view(torch.int64).clone()
    for shift, mask in _TRANSPOSE_STEPS:
        t = words >> shift
        t ^= words
        t &= mask
        words ^= t
        t <<= shift
        words ^= t
    return words.view(torch.uint8).view(-1, 8)


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Bit-plane pack a 1-D uint8 tensor of values < 2**bits.

    Values are padded with zeros to a multiple of 8; each group of 8 values
    becomes ``bits`` bytes where byte j holds bit j of the 8 values (value k
    at bit position k). Result size: ``ceil(numel / 8) * bits`` bytes.
    Bits of a value at or above ``bits`` are ignored. The result owns its buffer
    (a 1-bit result is not left as a strided view of the 8-byte work buffer).
    """
    check_pack_width(bits)
    if codes.dtype != torch.uint8 or codes.dim() != 1:
        raise ValueError(
            f"codes={codes.dtype}/{codes.dim()}-D is not allowed: use a 1-D uint8 tensor"
        )
    n = codes.numel()
    groups = codes.new_zeros(math.ceil(n / 8), 8)
    groups.view(-1)[:n] = codes
    return owned(_transpose_bytes(groups)[:, :bits].reshape(-1))


def unpack_bits(packed: Tensor, bits: int, numel: int) -> Tensor:
    """Inverse of :func:`pack_bits`: a 1-D uint8 tensor of ``numel`` values."""
    check_pack_width(bits)
    if not (is_int(numel) and numel >= 0):
        raise ValueError(f"numel={numel!r} is not allowed: use an int >= 0")
    expected = math.ceil(numel / 8) * bits
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != expected:
        raise ValueError(
            f"packed={packed.dtype}/{tuple(packed.shape)} is not allowed: "
            f"use a 1-D uint8 tensor of {expected} bytes for bits={bits}, numel={numel}"
        )
    planes = packed.new_zeros(math.ceil(numel / 8), 8)
    planes[:, :bits] = packed.view(-1, bits)
    return _transpose_bytes(planes).view(-1)[:numel]
