"""Tests for facto.compress: bit packing, block quantization, lossless helpers."""

import math

import pytest
import torch

from facto.compress import (
    HalfPacked,
    Kept,
    NarrowInt,
    Packed,
    PackedMask,
    Relaid,
    clamp_with_mask,
    compress,
    container_name,
    half_pack,
    masked_grad,
    narrow_int,
    pack_bits,
    pack_mask,
    quantize,
    unpack_bits,
    validate_block,
)
from facto.config import validate_bits

from ..storage import reachable_bytes

EPS32 = torch.finfo(torch.float32).eps
ALL_BITS = list(range(1, 9))


def per_element(meta: torch.Tensor, numel: int, block: int) -> torch.Tensor:
    """Per-block metadata expanded to one value per element (float64)."""
    return meta.double().repeat_interleave(block)[:numel]


def check_bound(x: torch.Tensor, p: Packed, factor: float) -> torch.Tensor:
    """Assert |dequantize - x| <= factor * stored scale (+ float32 rounding); return errors."""
    flat = x.contiguous().view(-1).double()
    out = p.dequantize().contiguous().view(-1).double()
    scale = per_element(p.scale, flat.numel(), p.block)
    lo = per_element(p.lo, flat.numel(), p.block)
    err = (out - flat).abs()
    tol = 8 * EPS32 * (flat.abs() + lo.abs() + scale)
    worst = (err - factor * scale - tol).max().item()
    assert worst <= 0, f"error exceeds bound by {worst}"
    return err


def random_input(shape, seed=0, offset=0.0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * spread + offset


# ---------------------------------------------------------------- bit packing


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1001])
def test_pack_round_trip_and_size(bits, n):
    g = torch.Generator().manual_seed(bits * 1000 + n)
    codes = torch.randint(0, 2**bits, (n,), generator=g, dtype=torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == math.ceil(n / 8) * bits
    out = unpack_bits(packed, bits, n)
    assert out.dtype == torch.uint8 and out.shape == (n,)
    assert torch.equal(out, codes)


def test_pack_layout_is_bit_planes():
    codes = torch.tensor([1, 2, 3, 4, 5, 6, 7, 0], dtype=torch.uint8)
    # byte j holds bit j of the 8 values, value k at bit position k
    expected = [0b01010101, 0b01100110, 0b01111000]
    assert pack_bits(codes, 3).tolist() == expected


def test_pack_extreme_values():
    codes = torch.tensor([255, 0, 255, 128, 1, 127, 254, 3, 200], dtype=torch.uint8)
    assert torch.equal(unpack_bits(pack_bits(codes, 8), 8, 9), codes)
    ones = torch.ones(13, dtype=torch.uint8)
    assert torch.equal(unpack_bits(pack_bits(ones, 1), 1, 13), ones)


def test_pack_rejects_bad_input():
    with pytest.raises(ValueError, match="bits=9"):
        pack_bits(torch.zeros(8, dtype=torch.uint8), 9)
    with pytest.raises(ValueError, match="bits=0"):
        unpack_bits(torch.zeros(8, dtype=torch.uint8), 0, 8)
    with pytest.raises(ValueError, match="uint8"):
        pack_bits(torch.zeros(8, dtype=torch.int32), 2)
    with pytest.raises(ValueError, match="bytes"):
        unpack_bits(torch.zeros(5, dtype=torch.uint8), 2, 16)


# ---------------------------------------------------------------- deterministic


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("block", [1, 7, 64, 256])
def test_deterministic_error_within_half_step(bits, block):
    for shape in [(1,), (63,), (1001,), (3, 5, 7, 11)]:
        x = random_input(shape, seed=bits + block)
        p = quantize(x, bits, block, stochastic=False)
        check_bound(x, p, 0.5)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_stored_range_covers_each_block(bits):
    block = 64
    x = random_input((1000,), seed=3, offset=1000.0, spread=0.5)
    p = quantize(x, bits, block, stochastic=False)
    levels = 2**bits - 1
    xb = torch.cat([x, x[-1:].expand(24)]).view(-1, block).double()
    lo, scale = p.lo.double(), p.scale.double()
    assert p.meta.dtype == torch.int16 and p.meta.shape == (16, 2)
    assert not p.bfloat16_blocks.any()  # every block fits float16 metadata
    assert (lo <= xb.amin(1)).all()
    assert (lo + levels * scale >= xb.amax(1)).all()
    check_bound(x, p, 0.5)


def test_deterministic_large_offsets():
    for bits in ALL_BITS:
        x = random_input((2, 3, 9, 13), seed=bits, offset=1000.0, spread=3.0)
        check_bound(x, quantize(x, bits, 64, stochastic=False), 0.5)
        neg = -x
        check_bound(neg, quantize(neg, bits, 7, stochastic=False), 0.5)


def test_deterministic_error_is_not_trivially_zero():
    x = random_input((4096,), seed=5)
    p = quantize(x, 2, 64, stochastic=False)
    err = check_bound(x, p, 0.5)
    scale = per_element(p.scale, x.numel(), 64)
    assert (err / scale).max() > 0.4  # the bound is tight, not slack


def test_constant_blocks():
    exact = torch.full((130,), 2.5)  # representable in float16: scale 0, exact
    for bits in ALL_BITS:
        for stochastic in (False, True):
            p = quantize(exact, bits, 64, stochastic=stochastic)
            assert (p.scale == 0).all()
            assert torch.equal(p.dequantize(), exact)
    zeros = torch.zeros(2, 3, 4, 5)
    assert torch.equal(quantize(zeros, 3).dequantize(), zeros)
    inexact = torch.full((100,), 3.3)  # lo rounds down: tiny positive scale
    for bits in ALL_BITS:
        check_bound(inexact, quantize(inexact, bits, 64, stochastic=False), 0.5)
    mixed = torch.cat([torch.full((64,), -1.25), random_input((64,)), torch.full((10,), 7.0)])
    p = quantize(mixed, 4, 64, stochastic=False)
    out = p.dequantize()
    assert torch.equal(out[:64], mixed[:64]) and torch.equal(out[128:], mixed[128:])
    check_bound(mixed, p, 0.5)


# ---------------------------------------------------------------- stochastic


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_stochastic_is_unbiased(bits):
    block, draws = 64, 10000
    pattern = random_input((block,), seed=bits)
    x = pattern.repeat(draws)  # every block is identical: same lo and scale
    g = torch.Generator().manual_seed(123)
    p = quantize(x, bits, block, stochastic=True, generator=g)
    assert (p.scale == p.scale[0]).all() and (p.lo == p.lo[0]).all()
    lo, scale = p.lo[0].double().item(), p.scale[0].double().item()
    assert scale > 0
    out = p.dequantize().view(draws, block).double()
    mean_err = (out.mean(0) - pattern.double()).abs()
    # the code is floor(t) or floor(t) + 1 with P = frac(t): a Bernoulli mean
    t = (pattern.double() - lo) / scale
    frac = t - t.floor()
    sigma = scale * (frac * (1 - frac) / draws).sqrt()
    assert (mean_err <= 5 * sigma + 1e-4 * scale).all()
    assert mean_err.max().item() < 4 * scale / math.sqrt(draws)
    # deterministic rounding on the same data is visibly biased: the test has power
    det = quantize(x, bits, block, stochastic=False).dequantize().view(draws, block)
    det_err = (det.double().mean(0) - pattern.double()).abs()
    assert det_err.max().item() > 4 * scale / math.sqrt(draws)
    # each single draw is still within one step
    check_bound(x, p, 1.0)


@pytest.mark.parametrize("bits", ALL_BITS)
def test_stochastic_error_below_one_step(bits):
    for block in (1, 7, 64, 256):
        x = random_input((3, 5, 7, 11), seed=block, offset=50.0)
        p = quantize(x, bits, block, generator=torch.Generator().manual_seed(bits))
        check_bound(x, p, 1.0)


def test_stochastic_seeded_and_random():
    x = random_input((5000,), seed=9)

    def run(seed):
        p = quantize(x, 3, generator=torch.Generator().manual_seed(seed))
        return p.dequantize()

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


# ---------------------------------------------------------------- sizes


@pytest.mark.parametrize("bits", ALL_BITS)
def test_nbytes_is_what_the_container_holds_and_bits_per_value(bits):
    """nbytes equals the storages reachable from the container's fields (walked independently), and
    the codes really are bit-packed: `bits` bits per value (a group of 8 padded whole) + 4 bytes a block."""
    for numel in (1, 63, 65, 1000, 3 * 5 * 7 * 11):
        for block in (1, 64, 100):
            x = random_input((numel,), seed=numel)
            p = quantize(x, bits, block)
            assert p.nbytes == reachable_bytes(p)
            assert reachable_bytes(p.codes) <= (numel + 7) // 8 * bits
            assert reachable_bytes(p.meta) <= (numel + block - 1) // block * 4


def test_wide_range_uses_bfloat16_metadata():
    x = random_input((1000,), seed=1, spread=1e6)
    p = quantize(x, 4, 64, stochastic=False)
    assert p.bfloat16_blocks.all()
    assert p.lo.dtype == torch.float32 and p.scale.dtype == torch.float32  # decoded
    assert torch.equal(p.lo, p.lo.bfloat16().float())  # ... from bfloat16 values
    assert torch.equal(p.scale, p.scale.bfloat16().float())
    assert p.nbytes == 125 * 4 + 16 * 4
    check_bound(x, p, 0.5)


def test_metadata_dtype_is_chosen_per_block():
    """One block out of float16 range no longer widens the metadata of the others."""
    x = random_input((256,), seed=2)
    x[64:128] += 1e5  # |lo| > 60000: bfloat16 at any bits
    x[192:256] = torch.linspace(-1e4, 1.5e5, 64)  # range > 60000 * levels only at 1 bit
    for bits in (1, 4, 8):
        p = quantize(x, bits, 64, stochastic=False)
        assert p.bfloat16_blocks.tolist() == [False, True, False, bits == 1]
        check_bound(x, p, 0.5)
        narrow = ~p.bfloat16_blocks
        assert torch.equal(p.lo[narrow], p.lo[narrow].half().float())
        assert torch.equal(p.scale[narrow], p.scale[narrow].half().float())


def test_float64_wide_range_uses_bfloat16_metadata():
    x = random_input((1000,), seed=1, spread=1e6).double()
    p = quantize(x, 4, 64, stochastic=False)
    assert p.bfloat16_blocks.all()
    assert p.nbytes == 125 * 4 + 16 * 4
    assert p.dequantize().dtype == torch.float64
    check_bound(x, p, 0.5)
    small = quantize(x / 1e6, 4, 64)
    assert not small.bfloat16_blocks.any()


# ---------------------------------------------------------------- special blocks (NaN, inf, overflow)

F32_MAX = 3.4028234663852886e38
SPECIAL_CASES = {  # position in block 1 -> value; the other 62..63 values are finite
    "inf": {5: math.inf},
    "nan": {5: math.nan},
    "both": {5: math.inf, 40: math.nan},
    "-inf": {63: -math.inf},
    "overflow": {5: -3e38, 40: 3e38},  # finite, but hi - lo = inf in float32
}


def special_input(case: str, seed: int = 0) -> torch.Tensor:
    """Three blocks of 64 (unit normals); block 1 holds the case's values."""
    x = random_input((192,), seed=seed)
    for pos, value in SPECIAL_CASES[case].items():
        x[64 + pos] = value
    return x


def independent_bound(x: torch.Tensor, bits: int, block: int = 64) -> torch.Tensor:
    """Per value: the width's step (max - min) / (2**bits - 1) of its block, over the block's finite
    values only (float64), widened for the 16-bit rounding of the stored lo and scale."""
    flat = x.double().view(-1, block)
    finite = flat.isfinite()
    lo = torch.where(finite, flat, math.inf).amin(1)
    hi = torch.where(finite, flat, -math.inf).amax(1)
    step = (hi - lo) / (2**bits - 1)
    bound = step * (1 + 2**-7) + lo.abs() * 2**-7 + 1e-6
    return bound.repeat_interleave(block)


def check_specials_kept(x: torch.Tensor, out: torch.Tensor, bound: torch.Tensor) -> None:
    """Non-finite values back as they were (positions, sign); finite ones within `bound`."""
    x, out = x.double().view(-1), out.double().view(-1)
    assert torch.equal(out.isnan(), x.isnan())
    inf = x.isinf()
    assert torch.equal(out.isinf(), inf) and torch.equal(out[inf], x[inf])
    finite = x.isfinite()
    err = (out[finite] - x[finite]).abs()
    assert (err <= bound[finite]).all(), f"worst excess {(err - bound[finite]).max().item()}"


@pytest.mark.parametrize("case", list(SPECIAL_CASES))
@pytest.mark.parametrize("bits", ALL_BITS)
def test_special_blocks_keep_every_value(case, bits):
    """A block holding inf/NaN or spanning +-3e38 comes back with its special values as they were and
    its finite values within the width's bound (here exact); the other blocks are unaffected."""
    x = special_input(case, seed=bits)
    for stochastic in (False, True):
        p = quantize(x, bits, 64, stochastic=stochastic, seed=bits)
        out = p.dequantize()
        check_specials_kept(x, out, independent_bound(x, bits))
        assert torch.equal(out[64:128].nan_to_num(), x[64:128].nan_to_num())  # the special block: exact
        assert p.bfloat16_blocks.tolist() == [False, True, False] and p.lo[1].isnan()  # marked special


@pytest.mark.parametrize("case", list(SPECIAL_CASES))
def test_special_blocks_through_compress_layouts_and_16_bits(case):
    """The same through compress: a channels_last map (blocks in memory order) and 16 bits, where
    values far beyond float16 keep their precision next to an inf (its range comes from finite values)."""
    x = special_input(case).view(3, 4, 4, 4).contiguous(memory_format=torch.channels_last)
    out = compress(x, 3, stochastic=False).restore()
    values = lambda t: t.permute(0, 2, 3, 1).reshape(-1)  # noqa: E731 (memory order)
    check_specials_kept(values(x), values(out), independent_bound(values(x), 3))
    big = special_input(case) * 1e5
    big[0] = 1e6
    if case == "overflow":
        big[64 + 5], big[64 + 40] = -3e38, 3e38
    half = compress(big, 16).restore()
    finite = big.double().where(big.isfinite(), 0.0).abs()
    # float16's 11 bits, scaled by a power of two: relative 2**-11, and subnormals below max * 2**-30
    check_specials_kept(big, half, 2**-10 * finite + finite.max() * 2**-30)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_blocks_at_the_top_of_the_dtype_range_stay_finite(dtype):
    """A block spanning 0..(the dtype's largest value) would restore its top value beyond the dtype at
    1 bit (lo and scale rounded outwards): it is kept exactly instead of coming back as inf."""
    top = torch.finfo(dtype).max
    x = torch.zeros(128, dtype=dtype)
    x[1::2] = top
    x[64:] = torch.linspace(-1, 1, 64, dtype=dtype)
    for bits in ALL_BITS:
        out = quantize(x, bits, 64, stochastic=False).dequantize()
        assert torch.isfinite(out).all() and torch.equal(out[:64], x[:64]), bits
    huge = torch.tensor([-1e300, 1e300] * 32, dtype=torch.float64)  # beyond bfloat16 metadata
    assert torch.equal(quantize(huge, 4).dequantize(), huge)


def test_special_blocks_cost_their_exact_values_in_nbytes():
    """nbytes counts what is held: codes, 4 bytes a block and each special block's values in the
    input dtype (two special blocks of 64 here, the last one short)."""
    for dtype, itemsize in ((torch.float32, 4), (torch.float16, 2), (torch.float64, 8)):
        x = random_input((300,), seed=4).to(dtype)
        plain = quantize(x, 3, 64)
        assert plain.exact is None and plain.nbytes == 38 * 3 + 5 * 4
        x[70], x[299] = math.nan, -math.inf  # blocks 1 and 4 (44 values)
        p = quantize(x, 3, 64)
        assert p.nbytes == reachable_bytes(p) == 38 * 3 + 5 * 4 + (64 + 44) * itemsize
        assert p.exact.dtype == dtype and p.nbytes > plain.nbytes
        out = p.dequantize()
        assert torch.equal(out[64:128].nan_to_num(), x[64:128].nan_to_num()) and out[299] == -math.inf


# ---------------------------------------------------------------- dtypes, shapes


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64]
)
def test_dtype_shape_device_round_trip(dtype):
    x = random_input((2, 3, 5, 7), seed=4).to(dtype)
    for bits in (2, 8):
        p = quantize(x, bits, 64, stochastic=False)
        out = p.dequantize()
        assert out.dtype == dtype and out.shape == x.shape
        assert out.device == x.device and out.is_contiguous()
        scale = per_element(p.scale, x.numel(), 64).view(x.shape)
        ulp = torch.finfo(dtype).eps * x.double().abs()
        assert ((out.double() - x.double()).abs() <= scale / 2 + ulp + 1e-6).all()


def test_non_contiguous_input():
    base = random_input((6, 40), seed=6)
    xt = base.t()  # (40, 6), not contiguous
    assert not xt.is_contiguous()
    p = quantize(xt, 4, 16, stochastic=False)
    out = p.dequantize()
    assert out.shape == xt.shape and out.is_contiguous()
    check_bound(xt, p, 0.5)
    # blocks follow the memory order of xt.contiguous()
    ref = quantize(xt.contiguous(), 4, 16, stochastic=False)
    assert torch.equal(ref.codes, p.codes) and torch.equal(ref.lo, p.lo)


def test_scalar_and_empty_tensors():
    s = torch.tensor(1.75)
    out = quantize(s, 3).dequantize()
    assert out.shape == () and out.item() == 1.75
    e = torch.empty(0, 3)
    p = quantize(e, 4)
    assert p.nbytes == 0 and p.dequantize().shape == (0, 3)


def test_block_larger_than_tensor():
    x = random_input((10,), seed=8)
    p = quantize(x, 4, 1000, stochastic=False)
    assert p.lo.numel() == 1 and p.nbytes == 2 * 4 + 4
    check_bound(x, p, 0.5)


# ---------------------------------------------------------------- 16 bits


def test_half_packed():
    x = random_input((3, 4, 5), seed=1)
    h = half_pack(x)
    assert isinstance(h, HalfPacked) and h.data.dtype == torch.float16
    assert h.shift.item() == 0  # in float16 range: plain float16
    assert h.nbytes == x.numel() * 2 + 4  # + the int32 shift, on the device
    out = h.restore()
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.equal(out, x.half().float())


def test_half_packed_large_values_are_scaled_not_inf():
    x = random_input((100,), seed=1, spread=1e6)
    h = half_pack(x)
    assert h.data.dtype == torch.float16 and h.nbytes == 204
    assert h.shift.item() == 7  # max|x| ~ 2.5e6 < 2**22: / 2**7 brings it below 2**15
    out = h.dequantize()
    assert torch.isfinite(out).all()
    assert torch.allclose(out, x, rtol=2**-11, atol=0)  # float16 precision, not bfloat16's
    edge = torch.tensor([65504.0, 70000.0, -3e5, 0.5])
    back = half_pack(edge).restore()
    assert torch.isfinite(back).all() and torch.allclose(back, edge, rtol=2**-11)
    # the price: values far below max|x| reach float16 subnormals (kept in range, not to inf)
    assert half_pack(torch.tensor([1e30, 1.0])).restore().tolist() == [pytest.approx(1e30, rel=1e-3), 0.0]
    assert half_pack(torch.tensor([1.0, float("inf")])).restore().tolist() == [1.0, float("inf")]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_packed_is_lossless_for_16_bit_input(dtype):
    x = random_input((50,), seed=2).to(dtype)
    h = half_pack(x)
    assert torch.equal(h.restore(), x) and h.restore().dtype == dtype


def test_half_packed_non_contiguous():
    x = random_input((4, 6), seed=3).t()
    out = half_pack(x).restore()
    assert out.shape == x.shape and torch.equal(out, x.half().float())


# ---------------------------------------------------------------- masks, ints


@pytest.mark.parametrize("shape", [(1,), (9,), (3, 5, 7), (2, 0, 4), ()])
def test_packed_mask(shape):
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(shape, generator=g) > 0.5
    pm = pack_mask(mask)
    assert isinstance(pm, PackedMask)
    assert pm.nbytes == math.ceil(mask.numel() / 8)
    out = pm.unpack()
    assert out.dtype == torch.bool and out.shape == mask.shape
    assert torch.equal(out, mask) and torch.equal(pm.restore(), mask)


def test_packed_mask_non_contiguous_and_bad_dtype():
    mask = torch.rand(5, 12) > 0.3
    assert torch.equal(pack_mask(mask.t()).unpack(), mask.t())
    with pytest.raises(ValueError, match="bool"):
        pack_mask(torch.zeros(3))


@pytest.mark.parametrize(
    "lo, hi, expected",
    [
        (0, 100, torch.uint8),
        (0, 200, torch.uint8),
        (0, 255, torch.uint8),
        (-5, 5, torch.int8),
        (-128, 127, torch.int8),
        (0, 256, torch.int16),
        (-129, 0, torch.int16),
        (-32768, 32767, torch.int16),
        (0, 40000, torch.int32),
        (-(2**31), 2**31 - 1, torch.int32),
        (0, 2**31, torch.int64),
        (-(2**40), 7, torch.int64),
    ],
)
def test_narrow_int_picks_narrowest(lo, hi, expected):
    for dtype in (torch.int64, torch.int32):
        if torch.iinfo(dtype).min > lo or torch.iinfo(dtype).max < hi:
            continue
        x = torch.tensor([[lo, hi], [hi, lo], [lo, lo]], dtype=dtype)
        n = narrow_int(x)
        assert isinstance(n, NarrowInt) and n.data.dtype == expected
        assert n.nbytes == x.numel() * torch.empty(0, dtype=expected).element_size()
        out = n.restore()
        assert out.dtype == dtype and out.shape == x.shape and torch.equal(out, x)


def test_narrow_int_empty_and_small_dtypes():
    e = narrow_int(torch.empty(0, 5, dtype=torch.int64))
    assert e.data.dtype == torch.uint8 and e.nbytes == 0
    assert e.restore().dtype == torch.int64 and e.restore().shape == (0, 5)
    u = torch.tensor([0, 255], dtype=torch.uint8)
    assert narrow_int(u).data.dtype == torch.uint8
    i16 = torch.tensor([-3, 100], dtype=torch.int16)
    n = narrow_int(i16)
    assert n.data.dtype == torch.int8 and torch.equal(n.restore(), i16)
    with pytest.raises(ValueError, match="integer"):
        narrow_int(torch.zeros(3))


# ---------------------------------------------------------------- compress


def test_compress_dispatch():
    x = random_input((4, 8), seed=1)
    kept = compress(x, None)
    assert isinstance(kept, Kept) and kept.restore() is x and container_name(kept) == "tensor"
    assert isinstance(compress(x, 16), HalfPacked)
    p = compress(x, 4, block=8, stochastic=False)
    assert isinstance(p, Packed) and p.bits == 4 and p.block == 8
    assert torch.equal(p.restore(), p.dequantize())
    check_bound(x, p, 0.5)
    mask = x > 0
    for bits in (None, 4, 16):
        assert isinstance(compress(mask, bits), PackedMask)
        assert torch.equal(compress(mask, bits).restore(), mask)
    idx = torch.arange(12).view(3, 4)
    stored = compress(idx, 2)
    assert isinstance(stored, NarrowInt) and stored.data.dtype == torch.uint8
    assert torch.equal(stored.restore(), idx) and stored.nbytes == 12
    g = torch.Generator().manual_seed(0)
    a = compress(x, 2, generator=g).restore()
    g.manual_seed(0)
    assert torch.equal(a, compress(x, 2, generator=g).restore())


def test_compress_nbytes_interface():
    x = random_input((1000,), seed=1)
    for bits in ALL_BITS + [16]:
        stored = compress(x, bits)
        assert stored.nbytes < x.numel() * 4
        assert stored.restore().shape == x.shape


def test_compress_without_bits_keeps_the_tensor_in_a_container():
    """bits=None: a container like every other width, holding x itself (no copy, same strides),
    whose nbytes is the storage x keeps alive, whole (a view keeps its base)."""
    base = random_input((4, 6, 5, 4), seed=2)
    for x in (base, base.contiguous(memory_format=torch.channels_last), base[:, ::2]):
        stored = compress(x, None)
        assert stored.restore() is x
        assert stored.nbytes == reachable_bytes(stored) == base.numel() * 4
        assert stored.tensors() == (x,)


@pytest.mark.parametrize("bits", [None, 4, 16])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_tensors_are_refused_by_name(bits, dtype):
    z = torch.zeros(8, dtype=dtype)
    message = f"x={dtype} is not allowed: complex tensors are not supported (use a floating, integer or bool tensor)"
    with pytest.raises(ValueError) as info:
        compress(z, bits)
    assert str(info.value) == message
    with pytest.raises(ValueError, match="complex tensors are not supported"):
        narrow_int(z)


LAYOUTS = {
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
    "transpose": lambda t: t[0, 0].t(),
    "permuted": lambda t: t.permute(2, 0, 3, 1),
    "column slice (gaps)": lambda t: t[:, ::2],
    "one strided column": lambda t: t.reshape(-1, 8)[:, :1],  # what torch.compile's graph saved
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kind", ["4-bit", "1-bit", "16-bit", "mask", "int"])
def test_restore_keeps_shape_and_strides(layout, kind):
    """A non-contiguous saved tensor comes back with its own strides (channels_last kernels and
    torch.compile's backward read them: inductor stops on a stride it did not save), holding
    only its values, stored in memory order so that blocks follow the memory."""
    base = random_input((4, 6, 5, 4), seed=3)
    base = {"mask": base > 0, "int": (base * 50).round().to(torch.int64)}.get(kind, base)
    x = LAYOUTS[layout](base)
    bits = {"4-bit": 4, "1-bit": 1, "16-bit": 16}.get(kind, 4)
    stored = compress(x, bits, block=16, stochastic=False)
    assert isinstance(stored, Relaid)
    out = stored.restore()
    assert (out.shape, out.stride(), out.dtype) == (x.shape, x.stride(), x.dtype)
    order = sorted(range(x.dim()), key=lambda d: -x.stride(d))
    values = x.permute(order).contiguous() if stored.dense else x.contiguous()
    expected = compress(values, bits, block=16, stochastic=False)
    assert type(stored.inner) is type(expected)
    assert stored.nbytes == expected.nbytes == sum(t.untyped_storage().nbytes() for t in stored.tensors())
    restored = expected.restore()
    assert torch.equal(out.permute(order).contiguous() if stored.dense else out.contiguous(), restored)
    if kind in ("mask", "int"):
        assert torch.equal(out, x)  # lossless kinds come back exactly, in place


def test_dense_layouts_are_restored_without_a_copy_and_expanded_ones_contiguous():
    x = random_input((2, 8, 4, 4), seed=5).contiguous(memory_format=torch.channels_last)
    stored = compress(x, 4)
    assert stored.dense and stored.restore().is_contiguous(memory_format=torch.channels_last)
    assert not compress(x[:, ::2], 4).dense
    expanded = (random_input((1, 8), seed=6) > 0).expand(5, 8)  # overlaps itself: comes back contiguous
    out = compress(expanded, 4).restore()
    assert isinstance(compress(expanded, 4), PackedMask) and out.is_contiguous() and torch.equal(out, expanded)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("bits", [0, 9, 15, 17, 32, -1, True, 4.0, "4"])
def test_validate_bits_rejects(bits):
    with pytest.raises(ValueError, match=f"bits={bits!r}") as info:
        validate_bits(bits)
    assert "None" in str(info.value) and "1..8" in str(info.value)
    with pytest.raises(ValueError, match="bits="):
        compress(torch.zeros(3), bits)


def test_validate_bits_accepts():
    for bits in [None, 16] + ALL_BITS:
        assert validate_bits(bits) == bits


@pytest.mark.parametrize("block", [0, -3, 2.5, True, None])
def test_validate_block_rejects(block):
    with pytest.raises(ValueError, match=f"block={block!r}"):
        validate_block(block)
    with pytest.raises(ValueError, match=f"block={block!r}"):
        quantize(torch.zeros(3), 4, block)
    with pytest.raises(ValueError, match=f"block={block!r}"):
        compress(torch.zeros(3), 4, block)


def test_quantize_rejects_bad_arguments():
    with pytest.raises(ValueError, match="bits=16"):
        quantize(torch.zeros(3), 16)
    with pytest.raises(ValueError, match="bits=0"):
        quantize(torch.zeros(3), 0)
    with pytest.raises(ValueError, match="int64"):
        quantize(torch.zeros(3, dtype=torch.int64), 4)
    assert validate_block(1) == 1


# ---------------------------------------------------------------- no host sync


@pytest.fixture
def no_value_reads(monkeypatch):
    """Make every Python-level read of a tensor's values raise (the host syncs on CUDA)."""

    def forbidden(self, *args, **kwargs):
        raise AssertionError("a tensor value was read on the host")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)


ANY = torch.Tensor.any  # the tensor methods as they are, before no_value_reads replaces __bool__
BOOL = torch.Tensor.__bool__


def test_reference_path_reads_no_values(no_value_reads, monkeypatch):
    """quantize/dequantize and the other pack/unpack paths of float activations and masks
    decide nothing from values on the host, so on CUDA they would never sync, but for one
    flag per quantize: is any block special (it holds NaN here, in one block)."""
    import facto.compress.backend as backend
    import facto.compress.lossy as lossy

    monkeypatch.setattr(backend, "CPU_KERNELS", False)  # the PyTorch reference, as on CUDA without Triton
    flags: list[bool] = []
    monkeypatch.setattr(lossy, "_any", lambda t: flags.append(BOOL(ANY(t))) or flags[-1])
    x = random_input((2, 3, 17, 19), seed=7, offset=2.0)
    x.view(-1)[100:164] += 1e5  # a bfloat16-metadata block
    x.view(-1)[300] = float("nan")
    expected: list[bool] = []  # the flag each quantize reads
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        xd = x.to(dtype)
        for bits in (1, 4, 8):
            for stochastic in (False, True):
                compress(xd, bits, 64, stochastic=stochastic).restore()
                compress(xd[:, :, :3], bits, 64, stochastic=stochastic).restore()  # no special block
                expected += [True, False]
        compress(xd, 16).restore()
        compress(xd, 3, block=7, seed=5).restore()
        expected.append(True)
    assert flags == expected  # one flag read per quantize, none per restore
    pack_mask(x > 0).unpack()
    y, codes = clamp_with_mask(x, 6.0)
    masked_grad(y, codes)
    narrow_int(codes).restore()  # 1-byte: nothing narrower, nothing read
    with pytest.raises(AssertionError, match="read on the host"):
        narrow_int(torch.arange(5))  # the documented exception: the dtype depends on values


def test_narrow_int_upper_bound_hint():
    idx = torch.arange(1600).view(40, 40)
    n = narrow_int(idx, upper_bound=1599)
    assert n.data.dtype == torch.int16 and torch.equal(n.restore(), idx)
    assert narrow_int(idx[:2], upper_bound=255).data.dtype == torch.uint8
    with pytest.raises(ValueError, match="upper_bound=10 is wrong"):
        narrow_int(idx, upper_bound=10)  # checked on CPU, where reading values is free
    with pytest.raises(ValueError, match="upper_bound=-1"):
        narrow_int(idx, upper_bound=-1)
    i8 = torch.tensor([-3, 100], dtype=torch.int8)
    assert narrow_int(i8).data.dtype == torch.int8


def test_clamp_with_mask_reference():
    x = random_input((3, 5, 7), seed=1) * 5
    x.view(-1)[:3] = torch.tensor([0.0, 6.0, -0.0])
    for cap in (None, 6.0):
        y, codes = clamp_with_mask(x, cap)
        mask = (x > 0) if cap is None else (x > 0) & (x < cap)
        assert torch.equal(y, x.clamp(min=0) if cap is None else x.clamp(0, cap))
        assert torch.equal(codes, pack_bits(mask.reshape(-1).to(torch.uint8), 1))
        g = torch.randn_like(x)
        assert torch.equal(masked_grad(g, codes), g * mask)
    with pytest.raises(ValueError, match="floating"):
        clamp_with_mask(torch.arange(3))


# ---------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_semantics():
    dev = torch.device("cuda")
    codes = torch.randint(0, 32, (1001,), dtype=torch.uint8)
    assert torch.equal(pack_bits(codes.to(dev), 5).cpu(), pack_bits(codes, 5))
    assert torch.equal(unpack_bits(pack_bits(codes, 5).to(dev), 5, 1001).cpu(), codes)
    x = random_input((4, 8, 9, 9), seed=1, offset=3.0)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        xd = x.to(dev, dtype)
        p = quantize(xd, 4, 64, stochastic=False)
        assert p.codes.device.type == "cuda" and p.lo.device.type == "cuda"
        out = p.dequantize()
        assert out.device.type == "cuda" and out.dtype == dtype and out.shape == x.shape
        ref = quantize(x.to(dtype), 4, 64, stochastic=False)
        assert torch.equal(p.lo.cpu(), ref.lo)
        assert torch.allclose(p.scale.cpu().float(), ref.scale.float(), rtol=1e-3, atol=0)
        g = torch.Generator(device=dev).manual_seed(0)
        s = quantize(xd, 4, 64, generator=g)
        err = (s.dequantize().double() - xd.double()).abs().cpu().view(-1)
        scale = per_element(s.scale.cpu(), x.numel(), 64)
        assert (err <= scale + 1e-2 * x.abs().view(-1)).all()
    mask = torch.rand(3, 5, device=dev) > 0.5
    assert torch.equal(compress(mask, 4).restore(), mask)
    idx = torch.arange(300, device=dev)
    assert compress(idx, 4).data.dtype == torch.int16
    assert torch.equal(compress(idx, 4).restore(), idx)
    assert compress(x.to(dev), 16).restore().device.type == "cuda"


# ---------------------------------------------------------------- containers own what they count


@pytest.mark.parametrize("bits", ALL_BITS)
def test_packed_bits_own_their_buffer(bits):
    """pack_bits' result is its whole storage: a 1-bit result once was a strided view that kept
    the 8-byte-per-value work buffer alive (8x what numel says)."""
    codes = torch.randint(0, 2**bits, (1000,), dtype=torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.untyped_storage().nbytes() == packed.numel() == 125 * bits


def _views():
    base = torch.randn(4, 6, 32, 32)
    return {"slice": base[:, :3], "strided": base[:, :, ::2, ::2], "transposed": base.transpose(2, 3)}


@pytest.mark.parametrize("view", list(_views()))
@pytest.mark.parametrize("kind", ["quantize", "half", "half-of-fp16", "mask", "narrow", "narrow-int8"])
def test_every_container_holds_only_compact_buffers(view, kind):
    """Whatever view goes in, what comes out holds exactly its own compact bytes."""
    x = _views()[view]
    n = x.numel()
    if kind == "quantize":
        stored, expected = quantize(x, 3, 64), math.ceil(n / 8) * 3 + math.ceil(n / 64) * 4
    elif kind == "half":
        stored, expected = half_pack(x), n * 2 + 4
    elif kind == "half-of-fp16":
        part = x.half()[..., :7]  # a 16-bit view of a larger 16-bit buffer: kept, but compact
        stored, expected = half_pack(part), part.numel() * 2
    elif kind == "mask":
        stored, expected = pack_mask(x > 0), math.ceil(n / 8)
    elif kind == "narrow":
        stored, expected = narrow_int((x * 100).long()), n * 2
    else:
        big = (x * 10).to(torch.int8)
        stored, expected = narrow_int(big[..., :5]), big[..., :5].numel()
    held = sum(t.untyped_storage().nbytes() for t in stored.tensors())
    assert held == stored.nbytes == expected


@pytest.mark.parametrize("numel, block, bits", [(3_000_001, 64, 4), (2_100_000, 24, 3), (1_048_583, 128, 1)])
def test_big_maps_in_slices_give_the_same_bytes_as_in_one_go(numel, block, bits, monkeypatch):
    """The reference path quantizes big maps slice by slice (small work buffers): same codes,
    metadata and restored values as in one go."""
    import facto.compress.lossy as c

    x = random_input((numel,), seed=numel, offset=1.0, spread=3.0)
    sliced = quantize(x, bits, block, stochastic=False)
    monkeypatch.setattr(c, "CHUNK_VALUES", 1 << 40)
    whole = quantize(x, bits, block, stochastic=False)
    assert torch.equal(sliced.codes, whole.codes) and torch.equal(sliced.meta, whole.meta)
    assert torch.equal(sliced.dequantize(), whole.dequantize())
