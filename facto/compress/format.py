"""The stored format's constants and the checks every container shares.

A floating map is split into blocks of `block` values; each block stores [lo, scale] as the raw
16-bit patterns of float16 numbers where the block fits float16 (|lo| and the span within
FP16_META_LIMIT), else of bfloat16 with WIDE_FLAG (the sign bit) set on the scale. The Triton
kernels (`kernels`) and the PyTorch reference read these same constants.

Special blocks. A block is special when it holds NaN or +-inf, when its metadata is not finite
(its range overflows the compute dtype, e.g. a float32 block spanning -3e38..3e38: hi - lo = inf,
or a scale beyond bfloat16), or when its top restored value lo + levels * scale (or lo) is beyond
the largest finite value of the input dtype. A special block stores NAN_BITS as its metadata (so
the kernels and the reference mark it alike, and it decodes to NaN) and its values are kept
exactly, in the input dtype, in `Packed.exact` (the special blocks' values one after the other,
in block order); restoring writes them back over the NaN decode. So every value of a special
block, finite or not, comes back exactly (NaN as NaN, +-inf with its sign). Storage cost of a
special block: block * itemsize bytes (256 for 64 float32 values) on top of its codes and 4 bytes
of metadata, all counted in `nbytes`. Finding out whether a map has special blocks reads one flag
on the host (one sync on CUDA); their positions are read only where there are some.
"""
from __future__ import annotations

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
FP16_META_LIMIT = 60000.0  # a block beyond this keeps bfloat16 metadata
WIDE_FLAG = -(2**15)  # int16 sign bit: set on a stored scale when lo and scale are bfloat16
NAN_BITS = 0x7FC0  # bfloat16 NaN: the lo (and, with WIDE_FLAG, the scale) of a special block


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_block(block: int) -> int:
    """Check a quantization block size: an int >= 1."""
    if is_int(block) and block >= 1:
        return block
    raise ValueError(f"block={block!r} is not allowed: use an int >= 1")


def check_pack_width(bits: int) -> None:
    if not (is_int(bits) and 1 <= bits <= 8):
        raise ValueError(
            f"bits={bits!r} is not allowed here: use 1..8 "
            "(16 is handled by compress via HalfPacked)"
        )


def check_float(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dtype not in FLOAT_DTYPES:
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"x={got} is not allowed: use a float16, bfloat16, float32 or float64 tensor"
        )


def check_not_complex(x: Tensor) -> None:
    """ValueError naming the dtype of a complex tensor (nothing here stores one)."""
    if isinstance(x, Tensor) and x.is_complex():
        raise ValueError(f"x={x.dtype} is not allowed: complex tensors are not supported "
                         "(use a floating, integer or bool tensor)")


def held_bytes(*tensors: Tensor) -> int:
    """Bytes really held by `tensors`: each underlying storage once, whole.

    A view keeps its entire base storage alive, so this counts the storage, not
    ``numel * element_size``: a stray view shows up here instead of hiding.
    """
    seen: set[tuple] = set()
    total = 0
    for t in tensors:
        storage = t.untyped_storage()
        key = (t.device, storage.data_ptr())
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def owned(t: Tensor) -> Tensor:
    """`t` itself when it is the whole of its storage (contiguous, no offset), else a compact copy.

    Every stored container passes its tensors through this, so no view into a
    larger buffer survives a pack.
    """
    if (t.is_contiguous() and t.storage_offset() == 0
            and t.untyped_storage().nbytes() == t.numel() * t.element_size()):
        return t
    return t.clone(memory_format=torch.contiguous_format)
