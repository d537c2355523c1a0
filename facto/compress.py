"""Block-wise lossy activation compression (the ActNN idea) and lossless helpers.

A floating tensor is flattened in memory order and split into blocks of
``block`` contiguous values. Each block keeps its minimum ``lo`` and step
``scale`` (as 16-bit floats) and every value becomes a ``bits``-bit code,
bit-packed into bytes. Deterministic rounding has error <= scale / 2 per
value; stochastic rounding has error < scale and is unbiased.

Everything is vectorised PyTorch and runs unchanged on CPU or CUDA. Each
``quantize`` call does one host sync (to pick the metadata dtype per tensor).

Non-finite inputs (NaN, +-inf) never crash, but they do not round-trip: a
block holding one dequantizes to NaN/inf values; other blocks are unaffected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "ALLOWED_BITS",
    "HalfPacked",
    "NarrowInt",
    "Packed",
    "PackedMask",
    "Stored",
    "compress",
    "held_bytes",
    "owned",
    "half_pack",
    "narrow_int",
    "pack_bits",
    "pack_mask",
    "quantize",
    "unpack_bits",
    "validate_bits",
    "validate_block",
]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
FP16_META_LIMIT = 60000.0  # metadata beyond this goes to bfloat16 / float32
FP16_MAX = 65504.0


# ---------------------------------------------------------------- validation


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


ALLOWED_BITS = (None, 1, 2, 3, 4, 5, 6, 7, 8, 16)  # None: no compression; 16: half precision


def validate_bits(bits: int | None) -> int | None:
    """Check a compression bit width: one of ALLOWED_BITS (None, 1..8 or 16)."""
    if bits is None or (_is_int(bits) and bits in ALLOWED_BITS):
        return bits
    raise ValueError(
        f"bits={bits!r} is not allowed: use None (no compression), 1..8 or 16"
    )


def validate_block(block: int) -> int:
    """Check a quantization block size: an int >= 1."""
    if _is_int(block) and block >= 1:
        return block
    raise ValueError(f"block={block!r} is not allowed: use an int >= 1")


def _check_pack_width(bits: int) -> None:
    if not (_is_int(bits) and 1 <= bits <= 8):
        raise ValueError(
            f"bits={bits!r} is not allowed here: use 1..8 "
            "(16 is handled by compress via HalfPacked)"
        )


def _check_float(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dtype not in FLOAT_DTYPES:
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"x={got} is not allowed: use a float16, bfloat16, float32 or float64 tensor"
        )


# ---------------------------------------------------------------- held memory


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


# ---------------------------------------------------------------- bit packing


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
    _check_pack_width(bits)
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
    _check_pack_width(bits)
    if not (_is_int(numel) and numel >= 0):
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


# ---------------------------------------------------------------- quantization


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _layout(numel: int, block: int) -> tuple[int, int]:
    """(number of blocks, row width); a single short block is not padded out."""
    nblocks = math.ceil(numel / block)
    return nblocks, max(1, min(block, numel))


def _as_blocks(x: Tensor, block: int, dtype: torch.dtype) -> Tensor:
    """Memory-order view of x as (nblocks, width), last block padded with its last value."""
    flat = x.contiguous().view(-1).to(dtype)
    nblocks, width = _layout(flat.numel(), block)
    pad = nblocks * width - flat.numel()
    if pad:
        flat = torch.cat([flat, flat[-1:].expand(pad)])
    return flat.view(nblocks, width)


def _round_down(v: Tensor, dtype: torch.dtype) -> Tensor:
    """Cast v to dtype, stepping one ulp down where the cast rounded up."""
    m = v.to(dtype)
    too_high = m.to(v.dtype) > v
    return torch.where(too_high, torch.nextafter(m, torch.full_like(m, -math.inf)), m)


def _round_up(v: Tensor, dtype: torch.dtype) -> Tensor:
    """Cast v to dtype, stepping one ulp up where the cast rounded down."""
    m = v.to(dtype)
    too_low = m.to(v.dtype) < v
    return torch.where(too_low, torch.nextafter(m, torch.full_like(m, math.inf)), m)


def _metadata_dtype(
    lo: Tensor, hi: Tensor, levels: int, dtype: torch.dtype
) -> tuple[torch.dtype, bool]:
    """Pick float16 metadata when it fits, else bfloat16 (float32 for float64 input).

    Also returns whether every block is finite. One host sync.
    """
    finite = torch.isfinite(lo).all() & torch.isfinite(hi).all()
    # comparisons with NaN are False and inf exceeds the limit: fits implies finite
    fits = (lo.abs() <= FP16_META_LIMIT).all() & (
        (hi - lo) <= FP16_META_LIMIT * levels
    ).all()
    fits_fp16, all_finite = torch.stack([fits, finite]).tolist()
    if fits_fp16:
        return torch.float16, all_finite
    return (torch.float32 if dtype == torch.float64 else torch.bfloat16), all_finite


@dataclass(frozen=True, eq=False)
class Packed:
    """A floating tensor quantized block-wise to ``bits``-bit codes."""

    codes: Tensor  # uint8, pack_bits(codes, bits), exactly numel codes
    lo: Tensor  # per-block minimum (float16 / bfloat16 / float32)
    scale: Tensor  # per-block step, same dtype as lo
    bits: int
    block: int
    shape: torch.Size
    dtype: torch.dtype
    numel: int

    def dequantize(self) -> Tensor:
        """lo + code * scale, in the original shape and dtype (contiguous, same device)."""
        cdt = _compute_dtype(self.dtype)
        nblocks, width = _layout(self.numel, self.block)
        codes = unpack_bits(self.codes, self.bits, self.numel)
        pad = nblocks * width - self.numel
        if pad:
            codes = torch.cat([codes, codes.new_zeros(pad)])
        out = torch.addcmul(
            self.lo.to(cdt).unsqueeze(1),
            codes.view(nblocks, width).to(cdt),
            self.scale.to(cdt).unsqueeze(1),
        )
        return out.view(-1)[: self.numel].to(self.dtype).view(self.shape)

    def restore(self) -> Tensor:
        """Same as :meth:`dequantize` (uniform interface of stored containers)."""
        return self.dequantize()

    def tensors(self) -> tuple[Tensor, ...]:
        """The tensors this container holds."""
        return (self.codes, self.lo, self.scale)

    @property
    def nbytes(self) -> int:
        """Bytes held: packed codes plus per-block lo and scale (storages, once each)."""
        return held_bytes(*self.tensors())


def _add_centred_noise_(t: Tensor, generator: torch.Generator | None) -> Tensor:
    """Add uniform noise in [-1/2, 1/2) with 2**-16 resolution to t, in place.

    Four 16-bit draws come from each random int64, which is several times
    cheaper than torch.rand on CPU; the rounding bias this leaves is below
    2**-16 of a quantization step.
    """
    words = torch.empty(math.ceil(t.numel() / 4), dtype=torch.int64, device=t.device)
    words.random_(-(2**63), None, generator=generator)
    noise = words.view(torch.int16)[: t.numel()].view(t.shape)
    return t.add_(noise, alpha=2.0**-16)


def _codes(
    blocks: Tensor,
    lo: Tensor,
    scale: Tensor,
    levels: int,
    stochastic: bool,
    generator: torch.Generator | None,
) -> Tensor:
    """Float codes in [0, levels] shaped like blocks; truncating them is the rounding.

    t = (x - lo) / scale + 1/2 (+ noise in [-1/2, 1/2) when stochastic), so
    floor(t) is round-half-up or unbiased stochastic rounding. A block with
    scale 0 gets codes 0.
    """
    inv = torch.where(scale > 0, scale.reciprocal(), torch.zeros_like(scale))
    offset = 0.5 - lo * inv
    t = torch.addcmul(offset.unsqueeze(1), blocks, inv.unsqueeze(1))
    if stochastic:
        _add_centred_noise_(t, generator)
    return t.clamp_(0, levels)


def quantize(
    x: Tensor,
    bits: int,
    block: int = 64,
    stochastic: bool = True,
    generator: torch.Generator | None = None,
) -> Packed:
    """Quantize a floating tensor block-wise to ``bits`` (1..8) bits per value.

    Codes are computed from the stored (16-bit rounded) lo and scale, with lo
    rounded down and scale rounded up, so |dequantize - x| <= scale / 2
    (deterministic) or < scale (stochastic, with E[dequantize] == x) holds
    against the stored metadata. A constant block has scale 0 and is exact.
    ``nbytes == ceil(numel/8)*bits + ceil(numel/block)*2*meta_bytes``.
    """
    _check_pack_width(bits)
    validate_block(block)
    _check_float(x)
    cdt = _compute_dtype(x.dtype)
    levels = 2**bits - 1
    blocks = _as_blocks(x, block, cdt)
    lo, hi = blocks.amin(dim=1), blocks.amax(dim=1)  # faster than aminmax on CPU
    meta_dtype, all_finite = _metadata_dtype(lo, hi, levels, x.dtype)
    lo_m = _round_down(lo, meta_dtype)
    lo_c = lo_m.to(cdt)
    scale_m = _round_up((hi - lo_c) / levels, meta_dtype)
    codes = _codes(blocks, lo_c, scale_m.to(cdt), levels, stochastic, generator)
    if not all_finite:
        codes.nan_to_num_(0.0)
    codes = codes.view(-1)[: x.numel()].to(torch.uint8)  # truncation == floor
    return Packed(
        codes=pack_bits(codes, bits),
        lo=lo_m,
        scale=scale_m,
        bits=bits,
        block=block,
        shape=x.shape,
        dtype=x.dtype,
        numel=x.numel(),
    )


# ---------------------------------------------------------------- 16-bit


@dataclass(frozen=True, eq=False)
class HalfPacked:
    """A floating tensor held in 16 bits (float16, or bfloat16 when out of fp16 range)."""

    data: Tensor
    dtype: torch.dtype

    def dequantize(self) -> Tensor:
        """Cast back to the original dtype."""
        return self.data.to(self.dtype)

    def restore(self) -> Tensor:
        """Same as :meth:`dequantize`."""
        return self.dequantize()

    def tensors(self) -> tuple[Tensor, ...]:
        return (self.data,)

    @property
    def nbytes(self) -> int:
        """Bytes held: numel * 2 for a compact 16-bit copy."""
        return held_bytes(self.data)


def half_pack(x: Tensor) -> HalfPacked:
    """Hold x in 16 bits: float16 unless |x| exceeds its range, then bfloat16.

    A float16/bfloat16 input is kept as is (lossless); it shares x's storage only
    when x is the whole of it, else it is a compact copy.
    """
    _check_float(x)
    if x.dtype in (torch.float16, torch.bfloat16):
        return HalfPacked(data=owned(x), dtype=x.dtype)
    x = x.contiguous()
    too_big = x.numel() > 0 and bool((x.amax() > FP16_MAX) | (x.amin() < -FP16_MAX))
    half = torch.bfloat16 if too_big else torch.float16
    return HalfPacked(data=x.to(half), dtype=x.dtype)


# ---------------------------------------------------------------- lossless


@dataclass(frozen=True, eq=False)
class PackedMask:
    """A bool tensor stored as 1 bit per value."""

    codes: Tensor
    shape: torch.Size

    def unpack(self) -> Tensor:
        """The original bool tensor."""
        return unpack_bits(self.codes, 1, self.shape.numel()).view(self.shape).bool()

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
    codes = mask.contiguous().view(-1).to(torch.uint8)
    return PackedMask(codes=pack_bits(codes, 1), shape=mask.shape)


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


def narrow_int(x: Tensor) -> NarrowInt:
    """Store an integer tensor as uint8, int8, int16, int32 or int64, narrowest first.

    An empty tensor becomes uint8. Unsigned 16/32/64-bit inputs are kept as
    they are. Shares x's storage only when no narrowing is possible and x is the
    whole of its storage.
    """
    if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
        raise ValueError(f"x={x.dtype} is not allowed: use an integer tensor")
    if x.dtype not in INT_DTYPES:
        return NarrowInt(data=owned(x), dtype=x.dtype)
    if x.numel() == 0:
        return NarrowInt(data=x.to(torch.uint8), dtype=x.dtype)
    lo, hi = torch.stack(torch.aminmax(x)).tolist()
    return NarrowInt(data=owned(x.to(_narrowest(lo, hi))), dtype=x.dtype)


# ---------------------------------------------------------------- dispatch

Stored = Tensor | Packed | HalfPacked | PackedMask | NarrowInt


def compress(
    x: Tensor,
    bits: int | None,
    block: int = 64,
    stochastic: bool = True,
    generator: torch.Generator | None = None,
) -> Stored:
    """Store x compactly; every container has ``.nbytes`` and ``.restore()``.

    bool -> PackedMask; integer -> NarrowInt (both lossless, whatever bits);
    floating: bits None -> x itself (caller handles), 16 -> HalfPacked,
    1..8 -> Packed via :func:`quantize`.
    """
    validate_bits(bits)
    validate_block(block)
    if x.dtype == torch.bool:
        return pack_mask(x)
    if not x.is_floating_point():
        return narrow_int(x)
    if bits is None:
        return x
    if bits == 16:
        return half_pack(x)
    return quantize(x, bits, block, stochastic=stochastic, generator=generator)
