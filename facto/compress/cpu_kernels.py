"""CPU kernels for facto.compress, compiled by Numba: quantize+pack and unpack+dequantize of a map in
one pass over its blocks, and the ReLU's clamp with its 1-bit mask (and that mask's backward).

Same format and formulas as the PyTorch reference (and the Triton kernels): deterministic codes and
metadata are bit-identical to the reference, every width 1..8, any block that is a multiple of 8.
Stochastic rounding draws its noise from a counter-based hash of each value's position and a key
per map (murmur3's 32-bit finaliser: 16 bits per value, no state, no generator pass), so the
codes differ from the reference's and the Triton kernels' for the same seed, not in distribution.
Bit planes are packed eight values at a time by a multiply that gathers one bit of each byte.

Used for float32, float16 and bfloat16 maps on the CPU (16-bit ones through a float32 copy, as the
reference computes them) when numba imports and a first small call agrees with values known
by hand (:func:`available`). The first call on a machine compiles the kernels (about 15 s on 2
cores); later processes load them from numba's on-disk cache. Where numba is missing or a kernel
fails, facto.compress runs its PyTorch reference.

A call over a large map is split into equal ranges run at once by numba's thread pool, as many as
PyTorch's intra-op threads (`torch.set_num_threads` limits both), with the same results as one thread:
quantize, restore, the ReLU's clamp and mask, and its gradient. Smaller maps, a pool that is not safe
to call from several threads (numba's 'workqueue' layer) and a process forked after the pool started
run on the calling thread.
"""
from __future__ import annotations

import functools
import math
import os
import threading
import warnings

import numpy as np
import torch
from torch import Tensor

from .failures import KernelFailed, guarded
from .format import FP16_META_LIMIT, NAN_BITS, WIDE_FLAG
from .seeds import kernel_seed, mix64
from .switches import reference_only, reference_only_now

try:
    import numba
    from numba import njit
except Exception:  # missing or broken: the reference takes over
    numba = None

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

KERNELS = ("_quantize_blocks", "_dequantize_blocks", "_clamp_mask_groups", "_masked_grad_groups",
           "_pack_mask_groups", "_unpack_mask_groups")  # the compiled functions, for tests
_works: dict[str, bool] = {}


def supports_block(block: int) -> bool:
    """Whether the kernels take this block size: a multiple of 8 (blocks then hold whole bytes)."""
    return block >= 8 and block % 8 == 0


def available(device: torch.device | str = "cpu") -> bool:
    """True for the CPU where numba imports and a first small quantize and mask agree with values
    known by hand (checked once); False inside :func:`reference_only`."""
    if numba is None or reference_only_now() or torch.device(device).type != "cpu":
        return False
    if "cpu" not in _works:
        _works["cpu"] = _probe()
    return _works["cpu"]


def _probe() -> bool:
    """Run a quantize and a mask once and compare them with values known by hand."""
    try:
        x = torch.tensor([-1.0] * 8 + [2.0] * 8)
        y, mask = clamp_with_mask(x, None)
        codes, meta, special = quantize_pack(torch.arange(16.0), 4, 16, False, 0)
        want_mask = torch.tensor([0, 255], dtype=torch.uint8)
        # 0..15 at lo 0, scale 1: code k is k; bit-plane j of values 0..7 and 8..15
        want_codes = torch.tensor([0xAA, 0xCC, 0xF0, 0x00, 0xAA, 0xCC, 0xF0, 0xFF], dtype=torch.uint8)
        return bool(torch.equal(y, x.clamp(min=0)) and torch.equal(mask, want_mask)
                    and torch.equal(codes, want_codes) and meta[0, 0].item() == 0 and special is False)
    except Exception as err:  # a compiler problem: use the reference
        warnings.warn(f"facto: CPU kernels disabled ({err!r})", stacklevel=3)
        return False


_guarded = guarded(lambda: _works, "CPU kernels")


def _float32(x: Tensor) -> Tensor:
    """x flat and contiguous in float32 (x itself where it is already)."""
    return x.detach().contiguous().view(-1).float()


def _np(t: Tensor) -> np.ndarray:
    """The numpy view of a CPU tensor (same memory)."""
    return t.detach().numpy()


# ---------------------------------------------------------------- kernels

if numba is not None:
    _jit = functools.partial(njit, cache=True, nogil=True, error_model="numpy")
    _ONES = np.uint64(0x0101010101010101)  # bit 0 of every byte
    _GATHER = np.uint64(0x0102040810204080)  # (w & _ONES) * _GATHER >> 56: bit 0 of byte k -> bit k
    _SPREAD = np.uint64(0x8040201008040201)  # (p * _ONES) & _SPREAD: bit k of p alone in byte k
    _HIGH = np.uint64(0x7F7F7F7F7F7F7F7F)  # + _HIGH >> 7: a non-zero byte -> 1

    @_jit
    def _f16_bits(v):
        """float16 bit pattern (0..65535) of float32 v, rounded to nearest even (as torch casts)."""
        u = np.int64(np.float32(v).view(np.uint32))
        sign = (u >> 16) & 0x8000
        a = u & 0x7FFFFFFF
        if a > 0x7F800000:  # NaN
            return sign | 0x7E00
        if a >= 0x477FF000:  # rounds to inf (65520 and above)
            return sign | 0x7C00
        if a < 0x38800000:  # below float16's smallest normal: subnormal or zero
            if a < 0x33000000:  # below 2**-25 (2**-25 itself is a tie to 0)
                return sign
            e = a >> 23
            m = (a & 0x7FFFFF) | 0x800000
            shift = 126 - e
            q = m >> shift
            rem = m & ((1 << shift) - 1)
            half = 1 << (shift - 1)
            if rem > half or (rem == half and (q & 1) == 1):
                q += 1
            return sign | q
        r = a + 0xFFF + ((a >> 13) & 1)
        return sign | ((r - 0x38000000) >> 13)

    @_jit
    def _bf16_bits(v):
        """bfloat16 bit pattern of float32 v, rounded to nearest even."""
        u = np.int64(np.float32(v).view(np.uint32))
        if (u & 0x7FFFFFFF) > 0x7F800000:
            return ((u >> 16) & 0x8000) | 0x7FC0
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF

    @_jit
    def _value16(b, wide, f16):
        """float32 value of the 16-bit pattern b (0..65535): bfloat16 where wide, else float16."""
        if wide:
            return np.uint32(b << 16).view(np.float32)
        return f16[b]

    @_jit
    def _signed(b):
        return b - 65536 if b >= 32768 else b

    @_jit
    def _floor16(v, wide, f16):
        """Bits of the largest float16 (bfloat16 if wide) value <= v."""
        b = _bf16_bits(v) if wide else _f16_bits(v)
        if _value16(b, wide, f16) > v:
            s = _signed(b)
            s = s - 1 if s > 0 else (-32767 if s == 0 else s + 1)
            b = s & 0xFFFF
        return b

    @_jit
    def _ceil16(v, wide, f16):
        """Bits of the smallest float16 (bfloat16 if wide) value >= v (v >= 0)."""
        b = _bf16_bits(v) if wide else _f16_bits(v)
        if _value16(b, wide, f16) < v:
            b += 1
        return b

    @_jit
    def _noise(index, key):
        """Uniform [-1/2, 1/2) in steps of 2**-16 for value `index` of a map: the top 16 bits of
        murmur3's 32-bit finaliser of index * golden ratio + key (a counter-based source)."""
        h = np.uint32(np.uint32(np.uint32(index) * np.uint32(0x9E3779B1)) + key)
        h = np.uint32(h ^ (h >> np.uint32(16)))
        h = np.uint32(h * np.uint32(0x85EBCA6B))
        h = np.uint32(h ^ (h >> np.uint32(13)))
        h = np.uint32(h * np.uint32(0xC2B2AE35))
        h = np.uint32(h ^ (h >> np.uint32(16)))
        return np.float32(np.int32(h >> np.uint32(16))) * np.float32(1.0 / 65536.0) - np.float32(0.5)

    @_jit
    def _block_meta(lo, hi, levels, out_max, f16):
        """(lo bits, scale bits, lo, 1/scale) of one block as stored (facto.compress.lossy._encode_meta;
        a special block: NAN_BITS metadata, NaN lo and 1/scale)."""
        flevels = np.float32(levels)
        has_nan = lo != lo or hi != hi
        wide = not (abs(lo) <= FP16_META_LIMIT and (hi - lo) <= np.float32(FP16_META_LIMIT * levels))
        if lo == 0:  # +-0 (a ReLU's output): +0 in either width
            lo_bits = 0
            lo_m = np.float32(0.0)
        else:
            lo_bits = _floor16(lo, wide, f16)
            lo_m = _value16(lo_bits, wide, f16)
        span = np.float32(hi - lo_m)
        if not span > 0:
            span = np.float32(0.0)
        sc_bits = _ceil16(np.float32(span / flevels), wide, f16)
        scale_m = _value16(sc_bits, wide, f16)
        top = np.float32(np.float32(scale_m * flevels) + lo_m)
        ok = (not has_nan and abs(span) < np.inf and abs(lo_m) < np.inf and abs(scale_m) < np.inf
              and top <= out_max and lo_m >= -out_max)
        if not ok:
            return NAN_BITS, NAN_BITS | WIDE_FLAG, np.float32(np.nan), np.float32(np.nan)
        inv = np.float32(np.float32(1.0) / scale_m) if scale_m > 0 else np.float32(0.0)
        return _signed(lo_bits), (_signed(sc_bits) | WIDE_FLAG) if wide else _signed(sc_bits), lo_m, inv

    @_jit
    def _block_codes(xs, lo, inv, first, key, stochastic, levels, out):
        """out[i] = the code of xs[i]: (xs[i] - lo) * inv + 1/2 (+ the noise of value first + i),
        clamped to [0, levels], truncated (xs, lo and inv finite: a block that is not special)."""
        half = np.float32(0.5)
        zero = np.float32(0.0)
        if stochastic:
            k = np.uint32(key)
            for i in range(xs.shape[0]):
                v = np.float32(np.float32(np.float32(xs[i] - lo) * inv) + half) + _noise(first + i, k)
                out[i] = np.uint8(np.int32(min(max(v, zero), levels)))
        else:
            for i in range(xs.shape[0]):
                v = np.float32(np.float32(xs[i] - lo) * inv) + half
                out[i] = np.uint8(np.int32(min(max(v, zero), levels)))

    TILE = 4096  # values the quantize kernel codes before it packs them (whole blocks)

    @_jit
    def _planes(w, bits):
        """Byte j = bit plane j of the 8 codes in the bytes of w: bit k of byte j is bit j of byte k."""
        out = np.uint64(0)
        for j in range(bits):
            out |= ((((w >> np.uint64(j)) & _ONES) * _GATHER) >> np.uint64(56)) << np.uint64(8 * j)
        return out

    @_jit
    def _pack_planes(small, codes, first_group, groups, bits):
        """The bit planes of groups * 8 codes (small) into codes, from group first_group on: one store
        per group for 1, 2, 4 and 8 bits."""
        words = small.view(np.uint64)
        if bits == 8:
            out8 = codes.view(np.uint64)
            for r in range(groups):
                out8[first_group + r] = _planes(words[r], 8)
        elif bits == 4:
            out4 = codes.view(np.uint32)
            for r in range(groups):
                out4[first_group + r] = np.uint32(_planes(words[r], 4))
        elif bits == 2:
            out2 = codes.view(np.uint16)
            for r in range(groups):
                out2[first_group + r] = np.uint16(_planes(words[r], 2))
        else:
            for r in range(groups):
                p = _planes(words[r], bits)
                for j in range(bits):
                    codes[(first_group + r) * bits + j] = np.uint8((p >> np.uint64(8 * j)) & np.uint64(0xFF))

    @_jit
    def _quantize_blocks(x, codes, meta, lo_in, hi_in, bits, block, stochastic, key, out_max, f16, scratch, b0, b1):
        """Blocks b0..b1-1 of x: their metadata into meta, their codes' bit planes into codes (lo_in,
        hi_in: the whole blocks' minimum and maximum, NaN where a block holds one). Returns how many of
        them are special."""
        numel = x.shape[0]
        special = 0
        levels = (1 << bits) - 1
        flevels = np.float32(levels)
        per_tile = max(1, TILE // block)
        small = scratch[:per_tile * block]
        for t0 in range(b0, b1, per_tile):
            t1 = min(t0 + per_tile, b1)
            for b in range(t0, t1):
                first = b * block
                n = min(block, numel - first)
                if b < lo_in.shape[0]:
                    lo = lo_in[b]
                    hi = hi_in[b]
                else:  # the short last block
                    lo = x[first]
                    hi = x[first]
                    for i in range(first, first + n):
                        v = x[i]
                        if v != v:
                            lo = v
                            hi = v
                            break
                        lo = min(lo, v)
                        hi = max(hi, v)
                lo_bits, sc_bits, lo_m, inv = _block_meta(lo, hi, levels, out_max, f16)
                meta[b, 0] = lo_bits
                meta[b, 1] = sc_bits
                at = (b - t0) * block
                if lo_m == lo_m:  # a special block's codes are 0 (its values are kept apart)
                    high = (key + (first >> 32) * 0x9E3779B9) & 0xFFFFFFFF  # maps beyond 2**32 values
                    _block_codes(x[first:first + n], lo_m, inv, first & 0xFFFFFFFF, high, stochastic, flevels,
                                 small[at:at + n])
                else:
                    small[at:at + n] = 0
                    special += 1
            values = min(t1 * block, numel) - t0 * block
            groups = (values + 7) // 8
            small[values:groups * 8] = 0
            _pack_planes(small, codes, t0 * block // 8, groups, bits)
        return special

    @_jit
    def _codes_of(p, bits):
        """The 8 codes (one per byte) whose bit planes are the bytes of p (the inverse of _planes)."""
        w = np.uint64(0)
        for j in range(bits):
            plane = (p >> np.uint64(8 * j)) & np.uint64(0xFF)
            w |= (((((plane * _ONES) & _SPREAD) + _HIGH) >> np.uint64(7)) & _ONES) << np.uint64(j)
        return w

    @_jit
    def _unpack_planes(codes, first_group, groups, bits, small):
        """The codes of groups groups from first_group on into small (one byte each)."""
        words = small.view(np.uint64)
        if bits == 8:
            in8 = codes.view(np.uint64)
            for r in range(groups):
                words[r] = _codes_of(in8[first_group + r], 8)
        elif bits == 4:
            in4 = codes.view(np.uint32)
            for r in range(groups):
                words[r] = _codes_of(np.uint64(in4[first_group + r]), 4)
        elif bits == 2:
            in2 = codes.view(np.uint16)
            for r in range(groups):
                words[r] = _codes_of(np.uint64(in2[first_group + r]), 2)
        else:
            for r in range(groups):
                p = np.uint64(0)
                for j in range(bits):
                    p |= np.uint64(codes[(first_group + r) * bits + j]) << np.uint64(8 * j)
                words[r] = _codes_of(p, bits)

    @_jit
    def _dequantize_blocks(codes, meta, out, bits, block, f16, scratch, b0, b1):
        """The values of blocks b0..b1-1, lo + code * scale, into out."""
        numel = out.shape[0]
        per_tile = max(1, TILE // block)
        small = scratch[:per_tile * block]
        for t0 in range(b0, b1, per_tile):
            t1 = min(t0 + per_tile, b1)
            values = min(t1 * block, numel) - t0 * block
            _unpack_planes(codes, t0 * block // 8, (values + 7) // 8, bits, small)
            for b in range(t0, t1):
                sc = np.int64(meta[b, 1])
                wide = sc < 0
                lo = _value16(np.int64(meta[b, 0]) & 0xFFFF, wide, f16)
                scale = _value16(sc & 0x7FFF, wide, f16)
                first = b * block
                n = min(block, numel - first)
                at = (b - t0) * block
                codes_b = small[at:at + n]
                outs = out[first:first + n]
                for i in range(n):
                    outs[i] = lo + np.float32(np.float32(codes_b[i]) * scale)

    CHUNK = 1024  # values the mask kernels treat at a time (whole groups)

    @_jit
    def _pack_chunk(keep, codes, first_group, n):
        """codes[first_group + r] = the bits of keep[8r .. 8r + 7] (0/1 bytes), for n values."""
        words = keep.view(np.uint64)
        for i in range(n, (n + 7) // 8 * 8):
            keep[i] = 0
        for r in range((n + 7) // 8):
            codes[first_group + r] = np.uint8(((words[r] & _ONES) * _GATHER) >> np.uint64(56))

    @_jit
    def _unpack_chunk(codes, first_group, n, bits):
        """bits[8r + k] = bit k of codes[first_group + r] (0/1 bytes), for n values."""
        words = bits.view(np.uint64)
        for r in range((n + 7) // 8):
            spread = (np.uint64(codes[first_group + r]) * _ONES) & _SPREAD
            words[r] = ((spread + _HIGH) >> np.uint64(7)) & _ONES

    @_jit
    def _clamp_mask_groups(x, y, codes, numel, has_cap, cap, cap_x, scratch, g_start, g_stop):
        """y = x clamped, and the mask's bits into codes, for the groups of 8 values g_start..g_stop-1."""
        keep = scratch[:CHUNK]
        zero = np.float32(0.0)
        for g0 in range(g_start, g_stop, CHUNK // 8):
            first = g0 * 8
            n = min(CHUNK, numel - first, (g_stop - g0) * 8)
            xs = x[first:first + n]
            ys = y[first:first + n]
            if has_cap:  # NaN stays NaN in y (max and min keep a NaN first argument)
                for i in range(n):
                    v = xs[i]
                    ys[i] = min(max(v, zero), cap)
                    keep[i] = (v > zero) & (v < cap_x)
            else:
                for i in range(n):
                    v = xs[i]
                    ys[i] = max(v, zero)
                    keep[i] = v > zero
            _pack_chunk(keep, codes, g0, n)

    @_jit
    def _masked_grad_groups(g_in, codes, out, numel, scratch, g_start, g_stop):
        """out = g_in where the mask's bit is set, else 0, for the groups of 8 values g_start..g_stop-1."""
        bits = scratch[:CHUNK]
        for g0 in range(g_start, g_stop, CHUNK // 8):
            first = g0 * 8
            n = min(CHUNK, numel - first, (g_stop - g0) * 8)
            _unpack_chunk(codes, g0, n, bits)
            gs = g_in[first:first + n]
            outs = out[first:first + n]
            for i in range(n):
                outs[i] = gs[i] * np.float32(bits[i])

    @_jit
    def _pack_mask_groups(src, codes, numel, scratch):
        keep = scratch[:CHUNK]
        for g0 in range(0, codes.shape[0], CHUNK // 8):
            first = g0 * 8
            n = min(CHUNK, numel - first)
            for i in range(n):
                keep[i] = src[first + i] != 0
            _pack_chunk(keep, codes, g0, n)

    @_jit
    def _unpack_mask_groups(codes, dst, numel, scratch):
        bits = scratch[:CHUNK]
        for g0 in range(0, codes.shape[0], CHUNK // 8):
            first = g0 * 8
            n = min(CHUNK, numel - first)
            _unpack_chunk(codes, g0, n, bits)
            for i in range(n):
                dst[first + i] = bits[i]

    # The same kernels over `parts` equal ranges at once, one per thread of numba's pool (each range
    # with its own row of scratch). The ranges split the blocks or groups a one-thread call walks, so
    # the results are bit-identical to it, stochastic codes included (their noise hashes positions).
    _split = functools.partial(njit, cache=True, nogil=True, error_model="numpy", parallel=True)

    @_jit
    def _part(n, parts, p):
        """(start, stop) of range p when n blocks or groups are split into `parts` equal ranges."""
        per = (n + parts - 1) // parts
        return min(n, p * per), min(n, (p + 1) * per)

    @_split
    def _quantize_split(x, codes, meta, lo_in, hi_in, bits, block, stochastic, key, out_max, f16, scratch, parts):
        special = np.zeros(parts, dtype=np.int64)
        for p in numba.prange(parts):
            b0, b1 = _part(meta.shape[0], parts, p)
            special[p] = _quantize_blocks(x, codes, meta, lo_in, hi_in, bits, block, stochastic, key, out_max,
                                          f16, scratch[p], b0, b1)
        return special.sum()

    @_split
    def _dequantize_split(codes, meta, out, bits, block, f16, scratch, parts):
        for p in numba.prange(parts):
            b0, b1 = _part(meta.shape[0], parts, p)
            _dequantize_blocks(codes, meta, out, bits, block, f16, scratch[p], b0, b1)

    @_split
    def _clamp_mask_split(x, y, codes, numel, has_cap, cap, cap_x, scratch, parts):
        for p in numba.prange(parts):
            g0, g1 = _part(codes.shape[0], parts, p)
            _clamp_mask_groups(x, y, codes, numel, has_cap, cap, cap_x, scratch[p], g0, g1)

    @_split
    def _masked_grad_split(g_in, codes, out, numel, scratch, parts):
        for p in numba.prange(parts):
            g0, g1 = _part(codes.shape[0], parts, p)
            _masked_grad_groups(g_in, codes, out, numel, scratch[p], g0, g1)


SCRATCH = 4096  # bytes of work space a kernel call needs (a tile of codes, a chunk of mask bits)
PART = 32768  # values per thread below which splitting a call costs more than it saves (a launch: ~5-10 us)


class _Scratch(threading.local):
    """One work buffer per calling thread, reused by every kernel call: a row per part (grown for more
    parts, or for a block over 4,096 bytes)."""

    buffer: np.ndarray = np.zeros((0, 0), dtype=np.uint8)


_scratch_buffers = _Scratch()


def _scratch(block: int = 0, parts: int = 1) -> np.ndarray:
    """This thread's work buffer, `parts` rows of at least SCRATCH and `block` bytes (contents overwritten)."""
    size = max(SCRATCH, block)
    rows, width = _scratch_buffers.buffer.shape
    if rows < parts or width < size:
        _scratch_buffers.buffer = np.zeros((max(rows, parts), max(width, size)), dtype=np.uint8)
    return _scratch_buffers.buffer[:parts]


_pool: dict[str, int] = {}  # "threads": numba's pool serves split calls (0: it does not); "pid": where it was checked
_pool_lock = threading.Lock()


def _safe_pool() -> bool:
    """Whether numba's thread pool may take calls from several threads at once: its OpenMP or TBB layer
    (its 'workqueue' layer aborts the process on concurrent calls). Launches one split call to see
    which layer numba picks, under a lock (the first launch chooses it for the process)."""
    if str(numba.config.THREADING_LAYER).lower() == "workqueue":
        return False
    try:
        _clamp_mask_split(np.zeros(16, np.float32), np.zeros(16, np.float32), np.zeros(2, np.uint8), 16,
                          False, np.float32(0), np.float32(0), _scratch(0, 2), 2)
        return numba.threading_layer() in ("omp", "tbb")
    except Exception as err:  # no thread pool loads: one thread per call
        warnings.warn(f"facto: CPU kernels run on one thread ({err!r})", stacklevel=3)
        return False


def _parts(numel: int) -> int:
    """How many threads of numba's pool one call over `numel` values takes: up to PyTorch's intra-op
    threads (torch.set_num_threads limits both), one per PART values at least; 1 where the pool is not
    safe to share, and in a process forked from the one that started it (GNU OpenMP does not survive a
    fork)."""
    if numel < 2 * PART:
        return 1
    if _pool.get("pid") != os.getpid():
        with _pool_lock:
            if _pool.get("pid") != os.getpid():
                started = "pid" in _pool
                _pool["threads"] = 0 if started or not _safe_pool() else 1
                _pool["pid"] = os.getpid()
    if not _pool["threads"]:
        return 1
    return max(1, min(numel // PART, torch.get_num_threads(), numba.get_num_threads()))


def _launch(one, split, args: tuple, numel: int, ranges: int, block: int = 0):
    """`one(*args, scratch, 0, ranges)` on the calling thread, or `split(*args, scratches, parts)` over
    numba's pool where :func:`_parts` splits a call over `numel` values (`ranges`: the blocks or
    groups of 8 values the call walks)."""
    parts = _parts(numel)
    if parts > 1:
        return split(*args, _scratch(block, parts), parts)
    return one(*args, _scratch(block)[0], 0, ranges)


@functools.cache
def _f16_table() -> np.ndarray:
    """float32 value of every float16 bit pattern, indexed by the pattern (0..65535)."""
    return torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.float16).float().numpy()


# ---------------------------------------------------------------- launchers


def _map_key(seed: int) -> int:
    """The 32-bit key of one map's noise, from a kernel seed (all its bits mixed in)."""
    return mix64(seed) & 0xFFFFFFFF


@_guarded
def quantize_pack(x: Tensor, bits: int, block: int, stochastic: bool, seed: int) -> tuple[Tensor, Tensor, bool]:
    """(codes, meta, special) of facto.compress.Packed for x (special blocks: NAN_BITS metadata;
    facto.compress.lossy keeps their values apart; special: whether there is one); seed from
    :func:`kernel_seed`. A float16/bfloat16 x is quantized from its float32 copy, as the reference
    does."""
    flat = _float32(x)
    numel = flat.numel()
    codes = torch.empty(math.ceil(numel / 8) * bits, dtype=torch.uint8)
    meta = torch.empty((math.ceil(numel / block), 2), dtype=torch.int16)
    if not numel:
        return codes, meta, False
    whole = flat[: numel // block * block].view(-1, block)
    lo, hi = whole.amin(dim=1), whole.amax(dim=1)  # NaN where a block holds one
    args = (_np(flat), _np(codes), _np(meta), _np(lo), _np(hi), bits, block, bool(stochastic), _map_key(seed),
            float(torch.finfo(x.dtype).max), _f16_table())
    special = _launch(_quantize_blocks, _quantize_split, args, numel, meta.shape[0], block)
    return codes, meta, special > 0


@_guarded
def unpack_dequantize(codes: Tensor, meta: Tensor, bits: int, block: int, numel: int,
                      dtype: torch.dtype) -> Tensor:
    """The flat dequantized tensor (numel values of `dtype`) from Packed's codes and meta: computed in
    float32, then rounded to a 16-bit `dtype` as the reference rounds it."""
    out = torch.empty(numel, dtype=torch.float32)
    if numel:
        args = (_np(codes), _np(meta), _np(out), bits, block, _f16_table())
        _launch(_dequantize_blocks, _dequantize_split, args, numel, meta.shape[0], block)
    return out.to(dtype)


@_guarded
def clamp_with_mask(x: Tensor, cap: float | None, inplace: bool = False) -> tuple[Tensor, Tensor]:
    """(x.clamp(0[, cap]), pack_bits(mask, 1)) of x in one pass (a 16-bit x through a float32 copy:
    clamped there, compared with the cap rounded to x's dtype, as torch does); `inplace`: the clamp
    is written over x (a contiguous x), which is returned."""
    flat = _float32(x)
    y = flat if inplace else torch.empty_like(flat)
    codes = torch.empty(math.ceil(flat.numel() / 8), dtype=torch.uint8)
    if flat.numel():
        has_cap, cap_f = cap is not None, 0.0 if cap is None else float(cap)
        cap_x = float(torch.tensor(cap_f, dtype=x.dtype))  # as torch compares x < cap
        args = (_np(flat), _np(y), _np(codes), flat.numel(), has_cap, np.float32(cap_f), np.float32(cap_x))
        _launch(_clamp_mask_groups, _clamp_mask_split, args, flat.numel(), codes.shape[0])
    if inplace:
        if y.data_ptr() != x.data_ptr():  # a 16-bit x: its float32 copy was clamped
            x.copy_(y.view(x.shape))
        return x, codes
    return y.to(x.dtype).view(x.shape), codes


@_guarded
def masked_grad(grad_out: Tensor, codes: Tensor) -> Tensor:
    """grad_out * mask (mask from :func:`clamp_with_mask`'s codes) in one pass (exact in any dtype:
    a value or 0)."""
    g = _float32(grad_out)
    out = torch.empty_like(g)
    if g.numel():
        args = (_np(g), _np(codes), _np(out), g.numel())
        _launch(_masked_grad_groups, _masked_grad_split, args, g.numel(), codes.shape[0])
    return out.to(grad_out.dtype).view(grad_out.shape)


@_guarded
def pack_mask(mask: Tensor) -> Tensor:
    """pack_bits(mask, 1) of a bool tensor, in one pass."""
    src = mask.contiguous().view(-1).view(torch.uint8)
    codes = torch.empty(math.ceil(src.numel() / 8), dtype=torch.uint8)
    if src.numel():
        _pack_mask_groups(_np(src), _np(codes), src.numel(), _scratch()[0])
    return codes


@_guarded
def unpack_mask(codes: Tensor, numel: int) -> Tensor:
    """The flat bool tensor of `numel` values packed by :func:`pack_mask`, in one pass."""
    out = torch.empty(numel, dtype=torch.bool)
    if numel:
        _unpack_mask_groups(_np(codes), _np(out.view(torch.uint8)), numel, _scratch()[0])
    return out
