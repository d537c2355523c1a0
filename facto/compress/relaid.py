"""Non-contiguous maps: stored compactly, restored with their own shape and strides (`Relaid`)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .lossless import Kept, NarrowInt, PackedMask
from .lossy import HalfPacked, Packed


@dataclass(frozen=True, eq=False)
class Relaid:
    """A non-contiguous tensor, stored compactly; `restore` gives back its shape and strides.

    A dense one (channels_last, a transpose) is stored in its memory order and restored
    without a copy; a view with gaps (a slice, a strided column) is stored as its values
    and restored into a buffer with its strides. Code that reads the strides of what it
    saved gets the layout it saved: channels_last kernels, and torch.compile's backward,
    which checks them.
    """

    inner: Packed | HalfPacked | PackedMask | NarrowInt
    shape: torch.Size
    stride: tuple[int, ...]
    dense: bool

    def restore(self) -> Tensor:
        values = self.inner.restore()
        if self.dense:
            return values.as_strided(self.shape, self.stride)
        out = torch.empty_strided(self.shape, self.stride, dtype=values.dtype, device=values.device)
        return out.copy_(values)

    def tensors(self) -> tuple[Tensor, ...]:
        return self.inner.tensors()

    @property
    def nbytes(self) -> int:
        return self.inner.nbytes


Stored = Tensor | Kept | Packed | HalfPacked | PackedMask | NarrowInt | Relaid


def _memory_order(x: Tensor) -> list[int] | None:
    """The dim order in which x's values lie in memory when it is not x's own and x is dense
    (no gaps, no overlap: channels_last, a transpose); None otherwise."""
    if x.dim() < 2 or x.is_contiguous():
        return None
    order = sorted(range(x.dim()), key=lambda d: -x.stride(d))
    return order if x.permute(order).is_contiguous() else None


def as_relaid(x: Tensor, store) -> Stored | None:
    """`store` applied to x's values inside a Relaid when x is not contiguous (None if it is,
    or if x overlaps itself, an expanded tensor: that one is restored contiguous)."""
    if x.is_contiguous():
        return None
    order = _memory_order(x)
    if order is not None:
        return Relaid(store(x.permute(order)), x.shape, x.stride(), dense=True)
    if any(st == 0 and n > 1 for st, n in zip(x.stride(), x.shape)):
        return None
    return Relaid(store(x.contiguous()), x.shape, x.stride(), dense=False)
