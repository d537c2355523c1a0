"""Lossless storage: 1-bit masks (`PackedMask`, and the ReLU's clamp with its mask) and integer tensors
in the narrowest dtype that holds their values (`NarrowInt`)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .backend import fused
from .bits import pack_bits, unpack_bits
from .format import INT_DTYPES, check_not_complex, held_bytes, is_int, owned


@dataclass(frozen=True, eq=False)
class Kept:
    """A floating tensor kept as it is (``compress(x, None)``): no copy, same strides.

    ``nbytes`` counts x's whole storage: a view keeps its entire base alive.
    """

    data: Tensor

    def restore(self) -> Tensor:
        """The tensor itself."""
        return self.data

    def tensors(self) -> tuple[Tensor, ...]:
        return (self.data,)

    @property
    def nbytes(self) -> int:
        """Bytes held: the storage behind the tensor, whole."""
        return held_bytes(self.data)


@dataclass(frozen=True, eq=False)
class PackedMask:
    """A bool tensor stored as 1 bit per value (pack_bits layout)."""

    codes: Tensor
    shape: torch.Size

    def unpack(self) -> Tensor:
        """The original bool tensor."""
        numel = self.shape.numel()
        flat = fused(self.codes.device, lambda k: k.unpack_mask(self.codes, numel))
        if flat is not None:
            return flat.view(self.shape)
        return unpack_bits(self.codes, 1, numel).view(self.shape).bool()

    def restore(self) -> Tensor:
        """Same as :meth:`unpack`."""
        return self.unpack()

    def tensors(self) -> tuple[Tensor, ...]:
        return (self.codes,)

    @property
    def nbytes(self) -> int:
        """Bytes held: ceil(numel / 8)."""
        return held_bytes(self.codes)


def pack_mask(mask: Tensor) -> PackedMask:
    """Store a bool tensor at 1 bit per value."""
    if mask.dtype != torch.bool:
        raise ValueError(f"mask={mask.dtype} is not allowed: use a bool tensor")
    codes = fused(mask.device, lambda k: k.pack_mask(mask))
    if codes is None:
        codes = pack_bits(mask.contiguous().view(-1).to(torch.uint8), 1)
    return PackedMask(codes=codes, shape=mask.shape)


def _check_clamp_input(x: Tensor) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"x={getattr(x, 'dtype', type(x).__name__)} is not allowed: use a floating tensor")


def clamp_with_mask(x: Tensor, cap: float | None = None, inplace: bool = False) -> tuple[Tensor, Tensor]:
    """ReLU (ReLU6-like with ``cap``) output and its 1-bit gradient mask, packed.

    Returns ``(y, codes)``: y = x.clamp(0) or x.clamp(0, cap) (x itself, clamped in place, with
    ``inplace``); codes = pack_bits((x > 0) [& (x < cap)], 1) in x's memory order. One fused kernel
    for contiguous float32/float16/bfloat16 x (numba on the CPU, Triton on CUDA);
    :func:`masked_grad` is its backward.
    """
    _check_clamp_input(x)
    done = fused(x.device, lambda k: k.clamp_with_mask(x, cap, inplace), x.dtype) if x.is_contiguous() else None
    if done is not None:
        return done
    mask = (x > 0) if cap is None else ((x > 0) & (x < cap))
    codes = pack_bits(mask.reshape(-1).to(torch.uint8), 1)
    return (x.clamp_ if inplace else x.clamp)(0, cap), codes


def masked_grad(grad_out: Tensor, codes: Tensor) -> Tensor:
    """grad_out * mask, the mask unpacked from :func:`clamp_with_mask`'s codes (one kernel on CUDA)."""
    done = fused(grad_out.device, lambda k: k.masked_grad(grad_out, codes), grad_out.dtype)
    if done is not None:
        return done
    mask = unpack_bits(codes, 1, grad_out.numel()).view(grad_out.shape)
    return grad_out * mask.to(grad_out.dtype)


@dataclass(frozen=True, eq=False)
class NarrowInt:
    """An integer tensor held in the narrowest dtype that holds its values."""

    data: Tensor
    dtype: torch.dtype

    def restore(self) -> Tensor:
        """The original tensor, exactly (dtype and shape)."""
        return self.data.to(self.dtype)

    def tensors(self) -> tuple[Tensor, ...]:
        return (self.data,)

    @property
    def nbytes(self) -> int:
        """Bytes held: numel * itemsize of the narrow dtype."""
        return held_bytes(self.data)


def _narrowest(lo: int, hi: int) -> torch.dtype:
    for dtype in INT_DTYPES:
        info = torch.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return dtype
    return torch.int64


def _check_upper_bound(x: Tensor, upper_bound: int) -> None:
    """Validate the hint; its promise is checked against the values on CPU only (free there)."""
    if not (is_int(upper_bound) and upper_bound >= 0):
        raise ValueError(f"upper_bound={upper_bound!r} is not allowed: use an int >= 0 or None")
    if x.device.type == "cpu" and x.numel() and bool((x < 0).any() | (x > upper_bound).any()):
        raise ValueError(f"upper_bound={upper_bound} is wrong: x holds values outside [0, {upper_bound}]")


def narrow_int(x: Tensor, upper_bound: int | None = None) -> NarrowInt:
    """Store an integer tensor as uint8, int8, int16, int32 or int64, narrowest first.

    An empty tensor becomes uint8. Unsigned 16/32/64-bit inputs are kept as
    they are, and so are 1-byte inputs (nothing is narrower). Shares x's storage only
    when no narrowing is possible and x is the whole of its storage.

    Picking the dtype from the values needs them on the host: one sync on CUDA. A
    caller that knows ``0 <= x <= upper_bound`` (e.g. max-pool indices: the input's
    H * W - 1) passes it and no value is read (on CPU the promise is checked). On CUDA a
    16-bit tensor is kept as it is rather than read back (a sync costs more than a byte).
    """
    check_not_complex(x)
    if x.dtype == torch.bool or x.is_floating_point():
        raise ValueError(f"x={x.dtype} is not allowed: use an integer tensor")
    if upper_bound is not None:
        _check_upper_bound(x, upper_bound)
    if x.dtype not in INT_DTYPES or x.element_size() == 1 or (
            x.device.type == "cuda" and x.element_size() == 2 and upper_bound is None):
        return NarrowInt(data=owned(x), dtype=x.dtype)
    if x.numel() == 0:
        return NarrowInt(data=x.to(torch.uint8), dtype=x.dtype)
    if upper_bound is not None:
        narrow = _narrowest(0, upper_bound)
    else:
        lo, hi = torch.stack(torch.aminmax(x)).tolist()  # the one legitimate host sync
        narrow = _narrowest(lo, hi)
    return NarrowInt(data=owned(x.to(narrow)), dtype=x.dtype)
