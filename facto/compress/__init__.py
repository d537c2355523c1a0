"""Block-wise lossy activation compression (the ActNN idea) and lossless helpers.

A floating tensor is flattened in memory order and split into blocks of
``block`` contiguous values. Each block keeps its minimum ``lo`` and step
``scale`` as 16-bit floats (float16 where the block fits it, else bfloat16,
chosen per block) and every value becomes a ``bits``-bit code, bit-packed into
bytes. Deterministic rounding has error <= scale / 2 per value; stochastic
rounding has error < scale and is unbiased.

The reference is vectorised PyTorch and runs unchanged on CPU or CUDA without
any host sync. On CUDA, float32/float16/bfloat16 tensors with power-of-two
blocks go through the Triton kernels of :mod:`facto.compress.kernels` instead (one launch
to quantize and pack, one to unpack and dequantize); both paths write the same
format, and deterministic codes and metadata are bit-identical between them.

Non-finite inputs (NaN, +-inf) never crash, but they do not round-trip: a
block holding one dequantizes to NaN; other blocks are unaffected.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import validate_bits

__all__ = [
    "HalfPacked",
    "NarrowInt",
    "Packed",
    "PackedMask",
    "Relaid",
    "Stored",
    "clamp_with_mask",
    "compress",
    "held_bytes",
    "owned",
    "half_pack",
    "masked_grad",
    "narrow_int",
    "pack_bits",
    "pack_mask",
    "quantize",
    "unpack_bits",
    "validate_block",
]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
FP16_META_LIMIT = 60000.0  # a block beyond this keeps bfloat16 metadata
WIDE_FLAG = -(2**15)  # int16 sign bit: set on a stored scale when lo and scale are bfloat16
NAN_BITS = 0x7FC0  # bfloat16 NaN: the metadata of a block holding NaN/inf


# ---------------------------------------------------------------- validation


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
    """The largest `dtype` value <= v (cast, then one ulp down where the cast rounded up)."""
    m = v.to(dtype)
    too_high = m.to(v.dtype) > v
    return torch.where(too_high, torch.nextafter(m, torch.full_like(m, -math.inf)), m)


def _round_up(v: Tensor, dtype: torch.dtype) -> Tensor:
    """The smallest `dtype` value >= v (cast, then one ulp up where the cast rounded down)."""
    m = v.to(dtype)
    too_low = m.to(v.dtype) < v
    return torch.where(too_low, torch.nextafter(m, torch.full_like(m, math.inf)), m)


def _bits16(v: Tensor) -> Tensor:
    """The raw 16-bit pattern of a float16/bfloat16 tensor, as int16."""
    return v.view(torch.int16)


def _finite(v: Tensor) -> Tensor:
    return v.abs() < math.inf  # False for NaN and +-inf


def _encode_meta(lo: Tensor, hi: Tensor, levels: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-block (meta, lo, scale): meta as stored, lo and scale as decoded from it.

    lo is rounded down and scale = (hi - lo) / levels rounded up, in float16 where the
    block fits it, else in bfloat16 with the sign bit of the stored scale set. A block
    whose metadata is not finite (NaN/inf inside, or beyond bfloat16 range) stores NaN
    metadata, so all its values dequantize to NaN. No host sync: the choice is per block.
    """
    cdt = lo.dtype
    lo = torch.where(lo == 0, torch.zeros_like(lo), lo)  # -0 -> +0: the min of +-0 is either
    fits = (lo.abs() <= FP16_META_LIMIT) & ((hi - lo) <= FP16_META_LIMIT * levels)
    lo_h, lo_b = _round_down(lo, torch.float16), _round_down(lo, torch.bfloat16)
    lo_m = torch.where(fits, lo_h.to(cdt), lo_b.to(cdt))
    span = hi - lo_m
    span = torch.where(span > 0, span, torch.zeros_like(span))  # no -0 scale: its sign is the flag
    step = span / span.new_full((), float(levels))  # a true division on CUDA too (no 1/levels)
    sc_h, sc_b = _round_up(step, torch.float16), _round_up(step, torch.bfloat16)
    scale_m = torch.where(fits, sc_h.to(cdt), sc_b.to(cdt))
    lo_bits = torch.where(fits, _bits16(lo_h), _bits16(lo_b))
    sc_bits = torch.where(fits, _bits16(sc_h), _bits16(sc_b) | WIDE_FLAG)
    ok = _finite(span) & _finite(lo_m) & _finite(scale_m)
    lo_bits = torch.where(ok, lo_bits, NAN_BITS)
    sc_bits = torch.where(ok, sc_bits, NAN_BITS | WIDE_FLAG)
    nan = torch.full_like(lo_m, math.nan)
    meta = torch.stack([lo_bits, sc_bits], dim=1)
    return meta, torch.where(ok, lo_m, nan), torch.where(ok, scale_m, nan)


def _decode_meta(meta: Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Per-block (lo, scale) in `dtype` from stored (nblocks, 2) int16 metadata."""
    lo_bits, sc_bits = meta[:, 0], meta[:, 1]
    wide = sc_bits < 0
    sc_bits = sc_bits & 0x7FFF

    def decode(b: Tensor) -> Tensor:
        return torch.where(wide, b.view(torch.bfloat16).to(dtype), b.view(torch.float16).to(dtype))

    return decode(lo_bits), decode(sc_bits)


def _reciprocal(scale: Tensor) -> Tensor:
    """1 / scale, 0 where scale is 0 (or NaN)."""
    return torch.where(scale > 0, scale.reciprocal(), torch.zeros_like(scale))


@dataclass(frozen=True, eq=False)
class Packed:
    """A floating tensor quantized block-wise to ``bits``-bit codes.

    ``meta`` holds per block the raw 16-bit patterns of [lo, scale]: float16 where the
    block fits it, else bfloat16 with the sign bit of the scale set (a scale is >= 0).
    """

    codes: Tensor  # uint8, pack_bits(codes, bits), exactly numel codes
    meta: Tensor  # int16 (nblocks, 2): bit patterns of lo and scale (sign of scale: bfloat16)
    bits: int
    block: int
    shape: torch.Size
    dtype: torch.dtype
    numel: int

    @property
    def lo(self) -> Tensor:
        """Per-block minimum as stored (rounded down), float32."""
        return _decode_meta(self.meta)[0]

    @property
    def scale(self) -> Tensor:
        """Per-block step as stored (rounded up), float32."""
        return _decode_meta(self.meta)[1]

    @property
    def bfloat16_blocks(self) -> Tensor:
        """Per block: True where lo and scale are stored as bfloat16 (else float16)."""
        return self.meta[:, 1] < 0

    def dequantize(self) -> Tensor:
        """lo + code * scale, in the original shape and dtype (contiguous, same device)."""
        flat = _fused(self.codes.device, lambda k: k.unpack_dequantize(
            self.codes, self.meta, self.bits, self.block, self.numel, self.dtype), self.dtype, self.block)
        if flat is not None:
            return flat.view(self.shape)
        return self._dequantize_reference()

    def _dequantize_reference(self) -> Tensor:
        out = torch.empty(self.numel, dtype=self.dtype, device=self.codes.device)
        chunk = max(_chunk_size(self.numel, self.block), 1)
        for start in range(0, self.numel, chunk):  # slice by slice: small work buffers
            stop = min(start + chunk, self.numel)
            out[start:stop] = self._dequantize_slice(start, stop)
        return out.view(self.shape)

    def _dequantize_slice(self, start: int, stop: int) -> Tensor:
        """Values start..stop (start on a block and byte boundary) in the original dtype."""
        cdt = _compute_dtype(self.dtype)
        numel = stop - start
        nblocks, width = _layout(numel, self.block)
        lo, scale = _decode_meta(self.meta[start // self.block: start // self.block + nblocks], cdt)
        first = start // 8 * self.bits
        codes = unpack_bits(self.codes[first: first + math.ceil(numel / 8) * self.bits], self.bits, numel)
        pad = nblocks * width - numel
        if pad:
            codes = torch.cat([codes, codes.new_zeros(pad)])
        out = codes.view(nblocks, width).to(cdt) * scale.unsqueeze(1)
        out = out.add_(lo.unsqueeze(1))  # lo + code * scale, two rounded operations
        return out.view(-1)[:numel].to(self.dtype)

    def restore(self) -> Tensor:
        """Same as :meth:`dequantize` (uniform interface of stored containers)."""
        return self.dequantize()

    def tensors(self) -> tuple[Tensor, ...]:
        """The tensors this container holds."""
        return (self.codes, self.meta)

    @property
    def nbytes(self) -> int:
        """Bytes held: packed codes plus 4 bytes of metadata per block (storages, once each)."""
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
    """uint8 codes shaped like blocks.

    t = (x - lo) * inv + 1/2 (+ noise in [-1/2, 1/2) when stochastic), NaN -> 0,
    clamped to [0, levels] and truncated: round-half-up or unbiased stochastic
    rounding. inv = 1 / scale (0 for a constant block). The kernel writes the same
    separately rounded operations, so deterministic codes match it bit for bit.
    """
    t = (blocks - lo.unsqueeze(1)).mul_(_reciprocal(scale).unsqueeze(1))
    t.add_(0.5)
    if stochastic:
        _add_centred_noise_(t, generator)
    t.nan_to_num_(0.0)  # NaN -> 0 (+-inf -> +-max, then clamped)
    return t.clamp_(0, levels).to(torch.uint8)  # truncation == floor


CHUNK_VALUES = 1 << 20  # the reference path works through big maps in slices of about this many values


def _chunk_size(numel: int, block: int) -> int:
    """Values per slice: whole blocks and whole bytes of codes, so slices concatenate exactly."""
    unit = block * 8 // math.gcd(block, 8)
    return max(unit, CHUNK_VALUES // unit * unit) if numel > CHUNK_VALUES else numel


def _quantize_reference(
    x: Tensor, bits: int, block: int, stochastic: bool, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """(packed codes, meta) in pure PyTorch, on x's device, without a host sync.

    Large maps are quantized slice by slice, so the work buffers stay small (the peak
    memory of a step follows what is stored) and the result is the same as in one go.
    """
    flat = x.contiguous().view(-1)
    chunk = _chunk_size(flat.numel(), block)
    if chunk >= flat.numel():
        return _quantize_slice(flat, bits, block, stochastic, generator)
    codes = torch.empty(math.ceil(flat.numel() / 8) * bits, dtype=torch.uint8, device=x.device)
    meta = torch.empty(math.ceil(flat.numel() / block), 2, dtype=torch.int16, device=x.device)
    for start in range(0, flat.numel(), chunk):
        part_codes, part_meta = _quantize_slice(flat[start:start + chunk], bits, block, stochastic, generator)
        codes[start // 8 * bits: start // 8 * bits + part_codes.numel()] = part_codes
        meta[start // block: start // block + part_meta.shape[0]] = part_meta
    return codes, meta


def _quantize_slice(
    flat: Tensor, bits: int, block: int, stochastic: bool, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    levels = 2**bits - 1
    blocks = _as_blocks(flat, block, _compute_dtype(flat.dtype))
    lo, hi = blocks.amin(dim=1), blocks.amax(dim=1)  # faster than aminmax on CPU
    meta, lo_m, scale_m = _encode_meta(lo, hi, levels)
    codes = _codes(blocks, lo_m, scale_m, levels, stochastic, generator)
    return pack_bits(codes.view(-1)[: flat.numel()], bits), meta


def _check_seed(seed: int | None) -> None:
    if seed is not None and not _is_int(seed):
        raise ValueError(f"seed={seed!r} is not allowed: use an int or None")


def _reference_generator(
    generator: torch.Generator | None, seed: int | None, device: torch.device
) -> torch.Generator | None:
    """The generator for reference noise: `generator`, else one seeded with `seed`, else None."""
    if generator is not None or seed is None:
        return generator
    return torch.Generator(device=device).manual_seed(seed % 2**63)


def quantize(
    x: Tensor,
    bits: int,
    block: int = 64,
    stochastic: bool = True,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Packed:
    """Quantize a floating tensor block-wise to ``bits`` (1..8) bits per value.

    Codes are computed from the stored (16-bit rounded) lo and scale, with lo
    rounded down and scale rounded up, so |dequantize - x| <= scale / 2
    (deterministic) or < scale (stochastic, with E[dequantize] == x) holds
    against the stored metadata. A constant block has scale 0 and is exact.
    ``nbytes == ceil(numel/8)*bits + ceil(numel/block)*4``. No host sync.

    Runs as one Triton kernel where :func:`facto.compress.kernels.available` (CUDA;
    float32/float16/bfloat16; power-of-two blocks in [8, 8192]), else in PyTorch. Stochastic
    noise: the kernel uses ``seed`` (drawn from ``generator`` on the host, or from
    torch's default CPU generator, when None); PyTorch uses ``generator`` (or a
    generator seeded with ``seed``).
    """
    _check_pack_width(bits)
    validate_block(block)
    _check_float(x)
    _check_seed(seed)
    x = x.detach()
    fused = _fused(x.device, lambda k: k.quantize_pack(
        x, bits, block, stochastic, k.kernel_seed(seed, generator) if stochastic else 0), x.dtype, block)
    if fused is not None:
        codes, meta = fused
    else:
        gen = _reference_generator(generator, seed, x.device) if stochastic else None
        codes, meta = _quantize_reference(x, bits, block, stochastic, gen)
    return Packed(
        codes=codes,
        meta=meta,
        bits=bits,
        block=block,
        shape=x.shape,
        dtype=x.dtype,
        numel=x.numel(),
    )


# ---------------------------------------------------------------- 16-bit


@dataclass(frozen=True, eq=False)
class HalfPacked:
    """A floating tensor held in 16 bits.

    float16/bfloat16 inputs are kept as they are. Wider inputs are held as float16 of
    ``x / 2**shift``, with ``shift`` (a 0-dim int32 tensor on x's device) the smallest
    power of two that brings max|x| below 2**15; it is 0 (plain float16) for any tensor
    already in float16 range, so no finite value becomes inf and no host sync is needed.
    """

    data: Tensor
    dtype: torch.dtype
    shift: Tensor | None = None

    def dequantize(self) -> Tensor:
        """Cast back to the original dtype (times 2**shift, exact)."""
        out = self.data.to(self.dtype)
        if self.shift is None:
            return out
        two = torch.full((), 2.0, dtype=self.dtype, device=out.device)
        return out.mul_(torch.pow(two, self.shift))

    def restore(self) -> Tensor:
        """Same as :meth:`dequantize`."""
        return self.dequantize()

    def tensors(self) -> tuple[Tensor, ...]:
        return (self.data,) if self.shift is None else (self.data, self.shift)

    @property
    def nbytes(self) -> int:
        """Bytes held: numel * 2, plus 4 for the shift of a float32/float64 input."""
        return held_bytes(*self.tensors())


HALF_SHIFT_LIMIT = 15  # scaled values stay below 2**15 < 65504, the float16 maximum


def _half_shift(x: Tensor) -> Tensor:
    """0-dim int32: smallest s >= 0 with max|x| / 2**s < 2**15 (0 if max|x| is not finite)."""
    if x.numel() == 0:
        return torch.zeros((), dtype=torch.int32, device=x.device)
    top = torch.linalg.vector_norm(x, math.inf)  # max |x|, on the device
    exponent = torch.frexp(top).exponent  # top < 2**exponent
    shift = (exponent - HALF_SHIFT_LIMIT).clamp_(min=0)
    return torch.where(_finite(top), shift, torch.zeros_like(shift))


def half_pack(x: Tensor) -> HalfPacked:
    """Hold x in 16 bits without a host sync (see :class:`HalfPacked`).

    A float16/bfloat16 input is kept as is (lossless); it shares x's storage only
    when x is the whole of it, else it is a compact copy. A float32/float64 input
    becomes float16 of x / 2**shift: exactly x.half() when max|x| < 2**15, and for a
    larger range every value keeps float16's 11-bit precision (only values below
    max|x| * 2**-30 lose bits to float16 subnormals). NaN/inf stay NaN/inf.
    """
    _check_float(x)
    if x.dtype in (torch.float16, torch.bfloat16):
        return HalfPacked(data=owned(x), dtype=x.dtype)
    x = x.contiguous()
    shift = _half_shift(x)
    two = torch.full((), 2.0, dtype=x.dtype, device=x.device)
    data = (x / torch.pow(two, shift)).to(torch.float16)  # dividing by 2**shift is exact
    return HalfPacked(data=data, dtype=x.dtype, shift=shift)


# ---------------------------------------------------------------- lossless


@dataclass(frozen=True, eq=False)
class PackedMask:
    """A bool tensor stored as 1 bit per value (pack_bits layout)."""

    codes: Tensor
    shape: torch.Size

    def unpack(self) -> Tensor:
        """The original bool tensor."""
        numel = self.shape.numel()
        flat = _fused(self.codes.device, lambda k: k.unpack_mask(self.codes, numel))
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
    codes = _fused(mask.device, lambda k: k.pack_mask(mask))
    if codes is None:
        codes = pack_bits(mask.contiguous().view(-1).to(torch.uint8), 1)
    return PackedMask(codes=codes, shape=mask.shape)


def _check_clamp_input(x: Tensor) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"x={getattr(x, 'dtype', type(x).__name__)} is not allowed: use a floating tensor")


def clamp_with_mask(x: Tensor, cap: float | None = None) -> tuple[Tensor, Tensor]:
    """ReLU (ReLU6-like with ``cap``) output and its 1-bit gradient mask, packed.

    Returns ``(y, codes)``: y = x.clamp(0) or x.clamp(0, cap); codes =
    pack_bits((x > 0) [& (x < cap)], 1) in x's memory order. One fused kernel on CUDA
    for contiguous float32/float16/bfloat16 x; :func:`masked_grad` is its backward.
    """
    _check_clamp_input(x)
    fused = _fused(x.device, lambda k: k.clamp_with_mask(x, cap), x.dtype) if x.is_contiguous() else None
    if fused is not None:
        return fused
    y = x.clamp(min=0) if cap is None else x.clamp(0, cap)
    mask = (x > 0) if cap is None else ((x > 0) & (x < cap))
    return y, pack_bits(mask.reshape(-1).to(torch.uint8), 1)


def masked_grad(grad_out: Tensor, codes: Tensor) -> Tensor:
    """grad_out * mask, the mask unpacked from :func:`clamp_with_mask`'s codes (one kernel on CUDA)."""
    fused = _fused(grad_out.device, lambda k: k.masked_grad(grad_out, codes), grad_out.dtype)
    if fused is not None:
        return fused
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
    if not (_is_int(upper_bound) and upper_bound >= 0):
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
    if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
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


# ---------------------------------------------------------------- dispatch


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


Stored = Tensor | Packed | HalfPacked | PackedMask | NarrowInt | Relaid


def _memory_order(x: Tensor) -> list[int] | None:
    """The dim order in which x's values lie in memory when it is not x's own and x is dense
    (no gaps, no overlap: channels_last, a transpose); None otherwise."""
    if x.dim() < 2 or x.is_contiguous():
        return None
    order = sorted(range(x.dim()), key=lambda d: -x.stride(d))
    return order if x.permute(order).is_contiguous() else None


def _relaid(x: Tensor, store) -> Stored | None:
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


def container_name(stored: Stored) -> str:
    """"tensor", or the name of the container holding the values ("Packed", ...)."""
    if isinstance(stored, Tensor):
        return "tensor"
    return type(stored.inner if isinstance(stored, Relaid) else stored).__name__


KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _kernels_for(device: torch.device, dtype: torch.dtype | None = None, block: int | None = None):
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


def _fused(device: torch.device, call, dtype: torch.dtype | None = None, block: int | None = None):
    """`call(facto.compress.kernels)` where the Triton kernels serve this call (see :func:`_kernels_for`),
    else None; None too when a kernel fails (it warned and turned the kernels off: the caller's
    PyTorch reference serves this call and every later one)."""
    kernels = _kernels_for(device, dtype, block)
    if kernels is None:
        return None
    try:
        return call(kernels)
    except kernels.KernelFailed:
        return None


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
    floating: bits None -> x itself (caller handles), 16 -> HalfPacked,
    1..8 -> Packed via :func:`quantize` (``generator``/``seed``: its noise).
    A non-contiguous x (channels_last, a strided view) is held by a `Relaid`, whose
    restore has x's shape and strides.
    """
    validate_bits(bits)
    validate_block(block)
    if not isinstance(x, Tensor):
        raise ValueError(f"x={type(x).__name__} is not allowed: use a torch.Tensor")
    if bits is None and x.is_floating_point():
        return x
    relaid = _relaid(x, lambda values: compress(values, bits, block, stochastic, generator, seed))
    if relaid is not None:
        return relaid
    if x.dtype == torch.bool:
        return pack_mask(x)
    if not x.is_floating_point():
        return narrow_int(x)
    if bits == 16:
        return half_pack(x)
    return quantize(x, bits, block, stochastic=stochastic, generator=generator, seed=seed)
