"""Triton kernels for facto.compress: one launch to quantize+pack, one to unpack+dequantize.

Same format and formulas as the PyTorch reference in :mod:`facto.compress` (read its
docstrings first): deterministic codes and metadata are bit-identical to it. Every
kernel walks a flat 1-D view, so only ``bits``, ``block``, the dtypes and the ReLU cap's
presence are compile-time constants: a new tensor shape never recompiles. No kernel
reads anything back to the host.

Used on CUDA when Triton imports and a first tiny launch works; on CPU only under
``TRITON_INTERPRET=1`` (tests), which must be set before triton is imported. Where
triton is missing or broken, :func:`available` is False and facto.compress runs its
reference silently. A kernel that fails later (its first launch compiles it: a compiler
or driver that cannot build one variant) raises :class:`KernelFailed` after turning the
kernels off for that device with one warning, and facto.compress redoes that call with
its reference; an out-of-memory error is not a kernel failure and propagates.
"""

from __future__ import annotations

import math
import os
import threading
import warnings

import torch
from torch import Tensor

from .failures import KernelFailed, guarded
from .format import FP16_META_LIMIT, NAN_BITS, WIDE_FLAG
from .seeds import kernel_seed
from .switches import reference_only, reference_only_now

try:
    import triton
    import triton.language as tl
except Exception:  # missing or broken install: the reference takes over
    triton = None

__all__ = [
    "KernelFailed",
    "available",
    "clamp_with_mask",
    "kernel_seed",
    "masked_grad",
    "pack_mask",
    "quantize_pack",
    "reference_only",
    "supports_block",
    "unpack_dequantize",
    "unpack_mask",
]  # backend.KERNEL_INTERFACE: both kernel modules offer it

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # as triton saw it when decorating
TILE = 2048  # values per program of the quantize / dequantize kernels
MASK_GROUPS = 256  # groups of 8 values per program of the 1-bit mask kernels
MAX_BLOCK = 8192

KERNELS = ("_quantize_pack_kernel", "_unpack_dequantize_kernel", "_clamp_mask_kernel",
           "_masked_grad_kernel", "_pack_mask_kernel", "_unpack_mask_kernel")  # for tests
_works: dict[str, bool] = {}


# ---------------------------------------------------------------- availability


def supports_block(block: int) -> bool:
    """Whether the kernels take this block size: a power of two in [8, MAX_BLOCK]."""
    return 8 <= block <= MAX_BLOCK and block & (block - 1) == 0


def available(device: torch.device | str) -> bool:
    """True where the Triton kernels run for tensors on `device`.

    CUDA: triton imports and a first tiny launch works (checked once). CPU: only when
    the kernels were decorated under TRITON_INTERPRET=1 and it is still set (tests);
    the reference is faster there. Always False inside :func:`reference_only`.
    """
    if triton is None or reference_only_now():
        return False
    kind = torch.device(device).type
    if kind == "cpu":
        if not (INTERPRETED and os.environ.get("TRITON_INTERPRET") == "1"):
            return False
    elif kind != "cuda":
        return False
    if kind not in _works:
        _works[kind] = _probe(torch.device(kind))
    return _works[kind]


def _probe(device: torch.device) -> bool:
    """Run the smallest kernel once and compare it with values known by hand: 8 negatives then
    8 positives give the 1-bit mask bytes 0x00, 0xFF (the bit-plane layout of facto.compress)."""
    try:
        x = torch.tensor([-1.0] * 8 + [2.0] * 8, device=device)
        y, codes = clamp_with_mask(x, None)
        want = torch.tensor([0, 255], dtype=torch.uint8, device=device)
        return bool(torch.equal(y, x.clamp(min=0)) and torch.equal(codes, want))
    except Exception as err:  # a compiler or driver problem: use the reference
        warnings.warn(f"facto: Triton kernels disabled on {device.type} ({err!r})", stacklevel=3)
        return False


_guarded = guarded(lambda: _works, "Triton kernels")


# ---------------------------------------------------------------- kernels

if triton is not None:
    _LIMIT = tl.constexpr(FP16_META_LIMIT)
    _NAN_BITS = tl.constexpr(NAN_BITS)
    _WIDE_FLAG = tl.constexpr(WIDE_FLAG)

    @triton.jit
    def _to16(v, WIDE: tl.constexpr):
        """v (float32) cast to bfloat16 if WIDE else float16, round to nearest even."""
        if WIDE:
            h = v.to(tl.bfloat16)
        else:
            h = v.to(tl.float16)
        return h

    @triton.jit
    def _floor16(v, WIDE: tl.constexpr):
        """int32 bits of the largest float16 (bfloat16 if WIDE) value <= v (float32)."""
        h = _to16(v, WIDE)
        b = h.to(tl.int16, bitcast=True).to(tl.int32)
        down = tl.where(b > 0, b - 1, tl.where(b == 0, -32767, b + 1))  # one ulp towards -inf
        return tl.where(h.to(tl.float32) > v, down, b)

    @triton.jit
    def _ceil16(v, WIDE: tl.constexpr):
        """int32 bits of the smallest float16 (bfloat16 if WIDE) value >= v (float32, v >= 0)."""
        h = _to16(v, WIDE)
        b = h.to(tl.int16, bitcast=True).to(tl.int32)
        return tl.where(h.to(tl.float32) < v, b + 1, b)

    @triton.jit
    def _from16(b, wide):
        """float32 value of 16-bit patterns `b` (int32): bfloat16 where `wide`, else float16."""
        b16 = b.to(tl.int16)
        as_b = b16.to(tl.bfloat16, bitcast=True).to(tl.float32)
        as_h = b16.to(tl.float16, bitcast=True).to(tl.float32)
        return tl.where(wide, as_b, as_h)

    @triton.jit
    def _out(v, BF16: tl.constexpr):
        """float32 v cast for storing: to bfloat16 if BF16 (round to nearest even, spelt out
        so the interpreter, whose cast truncates, agrees with GPUs), else left to the store."""
        if BF16:
            u = v.to(tl.uint32, bitcast=True)
            u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
            u = tl.where(v != v, 0x7FC0, u)
            v = u.to(tl.uint16).to(tl.bfloat16, bitcast=True)
        return v

    @triton.jit
    def _finite(v):
        return tl.abs(v) < float("inf")

    @triton.jit
    def _encode_meta(lo, hi, has_nan, LEVELS: tl.constexpr, OUT_MAX: tl.constexpr):
        """Per block: (lo bits, scale bits, lo, scale), as facto.compress.lossy._encode_meta
        (OUT_MAX: the input dtype's largest finite value; special blocks get NAN_BITS)."""
        lo = tl.where(lo == 0, 0.0, lo)
        fits = (tl.abs(lo) <= _LIMIT) & ((hi - lo) <= _LIMIT * LEVELS)
        lo_bits = tl.where(fits, _floor16(lo, False), _floor16(lo, True))
        lo_m = _from16(lo_bits, ~fits)
        span = hi - lo_m
        span = tl.where(span > 0, span, 0.0)
        step = tl.math.div_rn(span, tl.full(span.shape, LEVELS, tl.float32))
        sc_bits = tl.where(fits, _ceil16(step, False), _ceil16(step, True) | _WIDE_FLAG)
        scale_m = _from16(sc_bits & 0x7FFF, ~fits)
        top = scale_m * LEVELS + lo_m  # the largest restored value, rounded as dequantize rounds it
        ok = (has_nan == 0) & _finite(span) & _finite(lo_m) & _finite(scale_m)
        ok = ok & (top <= OUT_MAX) & (lo_m >= -OUT_MAX)
        lo_bits = tl.where(ok, lo_bits, _NAN_BITS)
        sc_bits = tl.where(ok, sc_bits, _NAN_BITS | _WIDE_FLAG)
        return lo_bits, sc_bits, tl.where(ok, lo_m, float("nan")), tl.where(ok, scale_m, float("nan"))

    @triton.jit
    def _tile(BLOCK: tl.constexpr, G: tl.constexpr):
        """Indices of this program's G blocks: block [G], group of 8 [G, R], value [G, R, 8]."""
        R: tl.constexpr = BLOCK // 8
        blk = tl.program_id(0).to(tl.int64) * G + tl.arange(0, G)
        grp = blk[:, None] * R + tl.arange(0, R)[None, :]
        offs = grp[:, :, None] * 8 + tl.arange(0, 8)[None, None, :]
        return blk, grp, offs

    @triton.jit
    def _noise(seed, grp):
        """Uniform [-1/2, 1/2) in steps of 2**-16, [G, R, 8]: one Philox call per 8 values."""
        r0, r1, r2, r3 = tl.randint4x(seed, grp)
        k = tl.arange(0, 8)[None, None, :]
        word = tl.where(k < 2, r0[:, :, None], tl.where(k < 4, r1[:, :, None],
                        tl.where(k < 6, r2[:, :, None], r3[:, :, None])))
        half = (word >> ((k % 2) * 16).to(tl.uint32)) & 0xFFFF
        return half.to(tl.float32) * (1.0 / 65536.0) - 0.5

    @triton.jit(do_not_specialize=["numel", "nblocks", "ngroups", "seed"])
    def _quantize_pack_kernel(x_ptr, codes_ptr, meta_ptr, flag_ptr, numel, nblocks, ngroups, seed,
                              BITS: tl.constexpr, BLOCK: tl.constexpr, G: tl.constexpr,
                              STOCHASTIC: tl.constexpr, OUT_MAX: tl.constexpr):
        LEVELS: tl.constexpr = 2**BITS - 1
        blk, grp, offs = _tile(BLOCK, G)
        inside = offs < numel
        x = tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32)
        lo = tl.min(tl.min(tl.where(inside, x, float("inf")), 2), 1)
        hi = tl.max(tl.max(tl.where(inside, x, -float("inf")), 2), 1)
        has_nan = tl.max(tl.max((x != x).to(tl.int32), 2), 1)
        lo_bits, sc_bits, lo_m, scale_m = _encode_meta(lo, hi, has_nan, LEVELS, OUT_MAX)
        inv = tl.where(scale_m > 0, tl.math.div_rn(tl.full(scale_m.shape, 1.0, tl.float32), scale_m), 0.0)
        t = (x - lo_m[:, None, None]) * inv[:, None, None]
        t = t + 0.5
        if STOCHASTIC:
            t = t + _noise(seed, grp)
        t = tl.where(t > 0, t, 0.0)  # NaN -> 0 and the lower clamp
        t = tl.where(t < LEVELS, t, LEVELS)
        code = tl.where(inside, t.to(tl.int32), 0)  # truncation == floor
        k = tl.arange(0, 8)[None, None, :]
        in_groups = grp < ngroups
        for j in tl.static_range(BITS):
            plane = tl.sum(((code >> j) & 1) << k, axis=2)
            tl.store(codes_ptr + grp * BITS + j, plane.to(tl.uint8), mask=in_groups)
        in_blocks = blk < nblocks
        tl.store(meta_ptr + blk * 2, lo_bits.to(tl.int16), mask=in_blocks)
        tl.store(meta_ptr + blk * 2 + 1, sc_bits.to(tl.int16), mask=in_blocks)
        special = tl.max(((lo_bits == _NAN_BITS) & in_blocks).to(tl.int32), 0)
        tl.atomic_max(flag_ptr, special)  # the map's flag: is any block special?

    @triton.jit(do_not_specialize=["numel", "nblocks", "ngroups"])
    def _unpack_dequantize_kernel(codes_ptr, meta_ptr, out_ptr, numel, nblocks, ngroups,
                                  BITS: tl.constexpr, BLOCK: tl.constexpr, G: tl.constexpr,
                                  OUT_BF16: tl.constexpr):
        blk, grp, offs = _tile(BLOCK, G)
        in_blocks = blk < nblocks
        lo_bits = tl.load(meta_ptr + blk * 2, mask=in_blocks, other=0).to(tl.int32)
        sc_bits = tl.load(meta_ptr + blk * 2 + 1, mask=in_blocks, other=0).to(tl.int32)
        wide = sc_bits < 0
        lo = _from16(lo_bits, wide)
        scale = _from16(sc_bits & 0x7FFF, wide)
        k = tl.arange(0, 8)[None, None, :]
        in_groups = grp < ngroups
        code = tl.zeros(offs.shape, tl.int32)
        for j in tl.static_range(BITS):
            plane = tl.load(codes_ptr + grp * BITS + j, mask=in_groups, other=0).to(tl.int32)
            code = code | (((plane[:, :, None] >> k) & 1) << j)
        out = lo[:, None, None] + code.to(tl.float32) * scale[:, None, None]
        tl.store(out_ptr + offs, _out(out, OUT_BF16), mask=offs < numel)

    @triton.jit
    def _groups(GROUPS: tl.constexpr):
        """Group-of-8 indices [GROUPS] and value indices [GROUPS, 8] of this program."""
        grp = tl.program_id(0).to(tl.int64) * GROUPS + tl.arange(0, GROUPS)
        return grp, grp[:, None] * 8 + tl.arange(0, 8)[None, :]

    @triton.jit(do_not_specialize=["numel", "ngroups"])
    def _clamp_mask_kernel(x_ptr, y_ptr, codes_ptr, numel, ngroups, cap, cap_x,
                           HAS_CAP: tl.constexpr, GROUPS: tl.constexpr, OUT_BF16: tl.constexpr):
        grp, offs = _groups(GROUPS)
        inside = offs < numel
        xf = tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32)
        if HAS_CAP:  # as torch: clamp in float32, compare with the cap rounded to x's dtype
            y = tl.where(xf < 0, 0.0, tl.where(xf > cap, cap, xf))
            keep = (xf > 0) & (xf < cap_x)
        else:
            y = tl.where(xf < 0, 0.0, xf)
            keep = xf > 0
        tl.store(y_ptr + offs, _out(y, OUT_BF16), mask=inside)
        k = tl.arange(0, 8)[None, :]
        packed = tl.sum(tl.where(keep & inside, 1, 0) << k, axis=1)
        tl.store(codes_ptr + grp, packed.to(tl.uint8), mask=grp < ngroups)

    @triton.jit(do_not_specialize=["numel", "ngroups"])
    def _masked_grad_kernel(g_ptr, codes_ptr, out_ptr, numel, ngroups, GROUPS: tl.constexpr,
                            OUT_BF16: tl.constexpr):
        grp, offs = _groups(GROUPS)
        inside = offs < numel
        g = tl.load(g_ptr + offs, mask=inside, other=0.0).to(tl.float32)
        packed = tl.load(codes_ptr + grp, mask=grp < ngroups, other=0).to(tl.int32)
        bit = (packed[:, None] >> tl.arange(0, 8)[None, :]) & 1
        tl.store(out_ptr + offs, _out(g * bit.to(tl.float32), OUT_BF16), mask=inside)

    @triton.jit(do_not_specialize=["numel", "ngroups"])
    def _pack_mask_kernel(src_ptr, codes_ptr, numel, ngroups, GROUPS: tl.constexpr):
        grp, offs = _groups(GROUPS)
        v = tl.load(src_ptr + offs, mask=offs < numel, other=0)
        packed = tl.sum(tl.where(v != 0, 1, 0) << tl.arange(0, 8)[None, :], axis=1)
        tl.store(codes_ptr + grp, packed.to(tl.uint8), mask=grp < ngroups)

    @triton.jit(do_not_specialize=["numel", "ngroups"])
    def _unpack_mask_kernel(codes_ptr, dst_ptr, numel, ngroups, GROUPS: tl.constexpr):
        grp, offs = _groups(GROUPS)
        packed = tl.load(codes_ptr + grp, mask=grp < ngroups, other=0).to(tl.int32)
        bit = (packed[:, None] >> tl.arange(0, 8)[None, :]) & 1
        tl.store(dst_ptr + offs, bit.to(tl.uint8), mask=offs < numel)


# ---------------------------------------------------------------- launchers


_NO_FMA = {"enable_fp_fusion": False}  # separately rounded ops, as the reference


def _per_program(block: int) -> int:
    return max(1, TILE // block)


@_guarded
def quantize_pack(x: Tensor, bits: int, block: int, stochastic: bool,
                  seed: int) -> tuple[Tensor, Tensor, Tensor | bool]:
    """(codes, meta, special) of facto.compress.Packed for x, in one launch (special blocks: NAN_BITS
    metadata; facto.compress.lossy keeps their values apart). special: a 0-dim int32 tensor on x's
    device, non-zero where any block is special (False for an empty x).

    x: float32/float16/bfloat16 (any shape; memory order of x.contiguous()); bits 1..8;
    block a power of two in [8, MAX_BLOCK]; seed from :func:`kernel_seed`.
    """
    flat = x.contiguous().view(-1)
    numel = flat.numel()
    nblocks, ngroups = math.ceil(numel / block), math.ceil(numel / 8)
    codes = torch.empty(ngroups * bits, dtype=torch.uint8, device=x.device)
    meta = torch.empty((nblocks, 2), dtype=torch.int16, device=x.device)
    if not numel:
        return codes, meta, False
    flag = _flag_slot(x.device)
    g = _per_program(block)
    _quantize_pack_kernel[(triton.cdiv(nblocks, g),)](
        flat, codes, meta, flag, numel, nblocks, ngroups, seed,
        BITS=bits, BLOCK=block, G=g, STOCHASTIC=bool(stochastic),
        OUT_MAX=torch.finfo(x.dtype).max, **_NO_FMA)
    return codes, meta, flag


FLAG_SLOTS = 4096  # maps per zeroed buffer of special-block flags (one fill launch per this many)


class _FlagBuffers(threading.local):
    """Per thread and device: a zeroed int32 buffer whose slots the quantize kernel raises, and the
    next free slot. A used slot is never written again; a new buffer follows the last slot."""

    def __init__(self) -> None:
        self.buffers: dict[torch.device, tuple[Tensor, int]] = {}


_flag_buffers = _FlagBuffers()


def _flag_slot(device: torch.device) -> Tensor:
    """A fresh zero flag on `device` (a 0-dim view into a shared buffer: no launch of its own)."""
    buffer, used = _flag_buffers.buffers.get(device, (None, FLAG_SLOTS))
    if used == FLAG_SLOTS:
        buffer, used = torch.zeros(FLAG_SLOTS, dtype=torch.int32, device=device), 0
    _flag_buffers.buffers[device] = (buffer, used + 1)
    return buffer[used]


@_guarded
def unpack_dequantize(codes: Tensor, meta: Tensor, bits: int, block: int, numel: int,
                      dtype: torch.dtype) -> Tensor:
    """The flat dequantized tensor (numel values of `dtype`) from Packed's codes and meta."""
    out = torch.empty(numel, dtype=dtype, device=codes.device)
    if numel:
        nblocks, g = meta.shape[0], _per_program(block)
        _unpack_dequantize_kernel[(triton.cdiv(nblocks, g),)](
            codes, meta, out, numel, nblocks, math.ceil(numel / 8),
            BITS=bits, BLOCK=block, G=g, OUT_BF16=dtype == torch.bfloat16, **_NO_FMA)
    return out


def _mask_grid(numel: int) -> tuple[int]:
    return (triton.cdiv(math.ceil(numel / 8), MASK_GROUPS),)


@_guarded
def clamp_with_mask(x: Tensor, cap: float | None, inplace: bool = False) -> tuple[Tensor, Tensor]:
    """(x.clamp(0[, cap]), pack_bits(mask, 1)) of a contiguous x in one launch (`inplace`: written over x,
    each value loaded before its place is stored)."""
    numel = x.numel()
    y = x if inplace else torch.empty_like(x, memory_format=torch.contiguous_format)
    codes = torch.empty(math.ceil(numel / 8), dtype=torch.uint8, device=x.device)
    if numel:
        has_cap, cap = cap is not None, 0.0 if cap is None else float(cap)
        cap_x = float(torch.tensor(cap, dtype=x.dtype))  # host-side: as torch compares x < cap
        _clamp_mask_kernel[_mask_grid(numel)](
            x, y, codes, numel, codes.numel(), cap, cap_x, HAS_CAP=has_cap,
            GROUPS=MASK_GROUPS, OUT_BF16=x.dtype == torch.bfloat16, **_NO_FMA)
    return y, codes


@_guarded
def masked_grad(grad_out: Tensor, codes: Tensor) -> Tensor:
    """grad_out * mask (mask from :func:`clamp_with_mask`'s codes) in one launch."""
    g = grad_out.contiguous()
    out = torch.empty_like(g)
    if g.numel():
        _masked_grad_kernel[_mask_grid(g.numel())](
            g, codes, out, g.numel(), codes.numel(), GROUPS=MASK_GROUPS,
            OUT_BF16=g.dtype == torch.bfloat16, **_NO_FMA)
    return out


@_guarded
def pack_mask(mask: Tensor) -> Tensor:
    """pack_bits(mask, 1) of a bool tensor, in one launch."""
    src = mask.contiguous().view(-1).view(torch.uint8)
    codes = torch.empty(math.ceil(src.numel() / 8), dtype=torch.uint8, device=mask.device)
    if src.numel():
        _pack_mask_kernel[_mask_grid(src.numel())](
            src, codes, src.numel(), codes.numel(), GROUPS=MASK_GROUPS)
    return codes


@_guarded
def unpack_mask(codes: Tensor, numel: int) -> Tensor:
    """The flat bool tensor of `numel` values packed by :func:`pack_mask`, in one launch."""
    out = torch.empty(numel, dtype=torch.bool, device=codes.device)
    if numel:
        _unpack_mask_kernel[_mask_grid(numel)](
            codes, out.view(torch.uint8), numel, codes.numel(), GROUPS=MASK_GROUPS)
    return out
