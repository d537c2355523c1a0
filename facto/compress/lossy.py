"""Lossy storage of floating maps: b-bit block-wise quantization (`Packed`, 1..8 bits) and 16 bits
(`HalfPacked`). Special blocks (NaN, +-inf, a range beyond float arithmetic) are kept exactly:
see :mod:`facto.compress.format`."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .backend import fused
from .bits import pack_bits, unpack_bits
from .format import (
    FP16_META_LIMIT,
    NAN_BITS,
    WIDE_FLAG,
    check_float,
    check_pack_width,
    held_bytes,
    is_int,
    owned,
    validate_block,
)


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


def _encode_meta(lo: Tensor, hi: Tensor, levels: int, out_max: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per-block (meta, lo, scale): meta as stored, lo and scale as decoded from it.

    lo is rounded down and scale = (hi - lo) / levels rounded up, in float16 where the
    block fits it, else in bfloat16 with the sign bit of the stored scale set. A special
    block (NaN/inf inside, metadata beyond bfloat16 range, or restored values beyond
    +-out_max, the input dtype's largest finite value) stores NAN_BITS metadata: its
    values are kept apart (`Packed.exact`). No host sync: the choice is per block.
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
    top = scale_m * levels + lo_m  # the largest restored value, rounded as dequantize rounds it
    ok = _finite(span) & _finite(lo_m) & _finite(scale_m) & (top <= out_max) & (lo_m >= -out_max)
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


def _special_blocks(meta: Tensor) -> Tensor:
    """Per block: True where it is special (NAN_BITS metadata; see facto.compress.format)."""
    return meta[:, 0] == NAN_BITS


def _any(flags: Tensor) -> bool:
    """Whether any flag is set: the one value quantize reads on the host (a sync on CUDA)."""
    return bool(flags.any())


def _special_positions(meta: Tensor, block: int, numel: int) -> Tensor:
    """Flat positions of the values of the special blocks, in block order (reads them: a sync)."""
    blocks = _special_blocks(meta).nonzero().view(-1)
    positions = (blocks.unsqueeze(1) * block + torch.arange(block, device=meta.device)).view(-1)
    return positions[positions < numel]  # the last block may be short


def _exact_values(x: Tensor, meta: Tensor, block: int, special: Tensor | bool | None = None) -> Tensor | None:
    """The values of x's special blocks, exactly, in x's dtype; None where there is none.

    special: whether any block is special, as a kernel reported it (a bool, or a 0-dim tensor on
    x's device whose one value is read: a sync on CUDA); None: read off the metadata."""
    if meta.shape[0] == 0:
        return None
    if special is None:
        special = _any(_special_blocks(meta))
    if not bool(special):
        return None
    flat = x.contiguous().view(-1)
    return flat[_special_positions(meta, block, flat.numel())]


@dataclass(frozen=True, eq=False)
class Packed:
    """A floating tensor quantized block-wise to ``bits``-bit codes.

    ``meta`` holds per block the raw 16-bit patterns of [lo, scale]: float16 where the
    block fits it, else bfloat16 with the sign bit of the scale set (a scale is >= 0).
    ``exact`` holds the values of the special blocks (NAN_BITS metadata), exactly, in block
    order, or is None where there is none (see :mod:`facto.compress.format`).
    """

    codes: Tensor  # uint8, pack_bits(codes, bits), exactly numel codes
    meta: Tensor  # int16 (nblocks, 2): bit patterns of lo and scale (sign of scale: bfloat16)
    bits: int
    block: int
    shape: torch.Size
    dtype: torch.dtype
    numel: int
    exact: Tensor | None = None  # values of the special blocks, in self.dtype

    @property
    def lo(self) -> Tensor:
        """Per-block minimum as stored (rounded down), float32; NaN for a special block."""
        return _decode_meta(self.meta)[0]

    @property
    def scale(self) -> Tensor:
        """Per-block step as stored (rounded up), float32; NaN for a special block."""
        return _decode_meta(self.meta)[1]

    @property
    def bfloat16_blocks(self) -> Tensor:
        """Per block: True where lo and scale are stored as bfloat16 (else float16)."""
        return self.meta[:, 1] < 0

    def dequantize(self) -> Tensor:
        """lo + code * scale (special blocks: their exact values), in the original shape and dtype
        (contiguous, same device)."""
        flat = fused(self.codes.device, lambda k: k.unpack_dequantize(
            self.codes, self.meta, self.bits, self.block, self.numel, self.dtype), self.dtype, self.block)
        if flat is not None:
            return self._put_exact(flat).view(self.shape)
        return self._dequantize_reference()

    def _dequantize_reference(self) -> Tensor:
        out = torch.empty(self.numel, dtype=self.dtype, device=self.codes.device)
        chunk = max(_chunk_size(self.numel, self.block), 1)
        for start in range(0, self.numel, chunk):  # slice by slice: small work buffers
            stop = min(start + chunk, self.numel)
            out[start:stop] = self._dequantize_slice(start, stop)
        return self._put_exact(out).view(self.shape)

    def _put_exact(self, flat: Tensor) -> Tensor:
        """flat (the dequantized values) with the special blocks' exact values written back."""
        if self.exact is not None:
            flat[_special_positions(self.meta, self.block, self.numel)] = self.exact
        return flat

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
        return (self.codes, self.meta) if self.exact is None else (self.codes, self.meta, self.exact)

    @property
    def nbytes(self) -> int:
        """Bytes held: packed codes, 4 bytes of metadata per block and the exact values of the
        special blocks (storages, once each)."""
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
    meta, lo_m, scale_m = _encode_meta(lo, hi, levels, torch.finfo(flat.dtype).max)
    codes = _codes(blocks, lo_m, scale_m, levels, stochastic, generator)
    return pack_bits(codes.view(-1)[: flat.numel()], bits), meta


def _check_seed(seed: int | None) -> None:
    if seed is not None and not is_int(seed):
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
    against the stored metadata. A constant block has scale 0 and is exact. A special block
    (NaN, +-inf, or a range beyond float arithmetic; see :mod:`facto.compress.format`) is
    kept exactly. ``nbytes == ceil(numel/8)*bits + ceil(numel/block)*4``, plus
    ``block * itemsize`` per special block. One value is read on the host (is any block
    special?: a sync on CUDA), and where some are, their positions.

    Runs as one kernel where one serves (:func:`facto.compress.backend.kernels_for`: Triton on
    CUDA for float32/float16/bfloat16 and power-of-two blocks in [8, 8192]; Numba on the CPU for
    the same dtypes and blocks that are multiples of 8), else in PyTorch. Stochastic noise: a kernel
    uses ``seed`` (drawn from ``generator`` on the host, or from torch's default CPU generator,
    when None); PyTorch uses ``generator`` (or a generator seeded with ``seed``).
    """
    check_pack_width(bits)
    validate_block(block)
    check_float(x)
    _check_seed(seed)
    x = x.detach()
    done = fused(x.device, lambda k: k.quantize_pack(
        x, bits, block, stochastic, k.kernel_seed(seed, generator) if stochastic else 0), x.dtype, block)
    if done is not None:
        codes, meta, special = done
    else:
        gen = _reference_generator(generator, seed, x.device) if stochastic else None
        codes, meta = _quantize_reference(x, bits, block, stochastic, gen)
        special = None
    return Packed(
        codes=codes,
        meta=meta,
        bits=bits,
        block=block,
        shape=x.shape,
        dtype=x.dtype,
        numel=x.numel(),
        exact=_exact_values(x, meta, block, special),
    )


@dataclass(frozen=True, eq=False)
class HalfPacked:
    """A floating tensor held in 16 bits.

    float16/bfloat16 inputs are kept as they are. Wider inputs are held as float16 of
    ``x / 2**shift``, with ``shift`` (a 0-dim int32 tensor on x's device) the smallest
    power of two that brings the largest finite |x| below 2**15; it is 0 (plain float16) for
    any tensor already in float16 range, so no finite value becomes inf and no host sync is
    needed. NaN and +-inf are held as they are.
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
    """0-dim int32: smallest s >= 0 with m / 2**s < 2**15, m the largest |x| of x's finite values."""
    if x.numel() == 0:
        return torch.zeros((), dtype=torch.int32, device=x.device)
    finite = x.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)  # NaN/inf must not set the range
    top = torch.linalg.vector_norm(finite, math.inf)  # max |x|, on the device
    exponent = torch.frexp(top).exponent  # top < 2**exponent
    return (exponent - HALF_SHIFT_LIMIT).clamp_(min=0)


def half_pack(x: Tensor) -> HalfPacked:
    """Hold x in 16 bits without a host sync (see :class:`HalfPacked`).

    A float16/bfloat16 input is kept as is (lossless); it shares x's storage only
    when x is the whole of it, else it is a compact copy. A float32/float64 input
    becomes float16 of x / 2**shift: exactly x.half() when max|x| < 2**15, and for a
    larger range every value keeps float16's 11-bit precision (only values below
    max|x| * 2**-30 lose bits to float16 subnormals). NaN/inf stay NaN/inf (with their sign)
    and do not count in max|x|, so they cost no finite value its range.
    """
    check_float(x)
    if x.dtype in (torch.float16, torch.bfloat16):
        return HalfPacked(data=owned(x), dtype=x.dtype)
    x = x.contiguous()
    shift = _half_shift(x)
    two = torch.full((), 2.0, dtype=x.dtype, device=x.device)
    data = (x / torch.pow(two, shift)).to(torch.float16)  # dividing by 2**shift is exact
    return HalfPacked(data=data, dtype=x.dtype, shift=shift)
