"""The fused kernels against the PyTorch reference of facto.compress: the tests marked `kernel` run
against whichever kernels serve their device.

- In a plain pytest run on the CPU: the Numba kernels (facto.compress.cpu_kernels), float32.
- In a child process with TRITON_INTERPRET=1 (which must be set before triton is imported: triton
  decides at decoration time), spawned by the parent: the Triton kernels on the CPU, every dtype.
- On a CUDA machine: the real Triton kernels.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from facto import compress as C
from facto.compress.backend import kernels_for
from facto.compress.format import NAN_BITS

ROOT = Path(__file__).resolve().parents[2]
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
TRITON = INTERPRET or torch.cuda.is_available()
ALL_BITS = list(range(1, 9))

if TRITON:
    from facto.compress import kernels as K

    DEVICE = "cpu" if INTERPRET else "cuda"
    DTYPES = [torch.float32, torch.float16, torch.bfloat16]
    # numpy (the interpreter) warns about the overflow/NaN its unused branches compute
    pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
else:
    from facto.compress import cpu_kernels as K

    DEVICE = "cpu" if K.available() else None
    DTYPES = [torch.float32, torch.float16, torch.bfloat16]

kernel = pytest.mark.skipif(DEVICE is None, reason="numba is missing: no CPU kernels to check")
parent = pytest.mark.skipif(INTERPRET, reason="runs in the parent process only")
numba_only = pytest.mark.skipif(TRITON or DEVICE is None, reason="checks the Numba kernels")


def cuda(test):
    """A test of the kernels on a real GPU (marked gpu; skips without CUDA)."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET, reason="needs CUDA")(test))


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    env.pop("PYTEST_ADDOPTS", None)
    return env


# ---------------------------------------------------------------- parent: spawn the checks


@pytest.mark.slow
@parent
def test_kernels_under_the_triton_interpreter():
    """Run this file's kernel tests in a child with TRITON_INTERPRET=1 (before triton loads)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    run = subprocess.run(cmd, cwd=ROOT, env=_env(TRITON_INTERPRET="1"), capture_output=True,
                         text=True, timeout=600)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    print("child:", summary)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert " passed" in summary and "skipped" in summary  # the parent-only tests skip there


@parent
def test_fallback_when_triton_cannot_be_imported(monkeypatch):
    """A missing/broken triton: no error, the reference runs (even under TRITON_INTERPRET=1). The
    kernels module is loaded afresh, under its own name, with `import triton` raising."""
    import importlib.util

    import facto.compress

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now raises ImportError
    path = Path(facto.compress.__file__).with_name("kernels.py")
    spec = importlib.util.spec_from_file_location("facto.compress._kernels_without_triton", path)
    K = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(K)
    assert K.triton is None and K.INTERPRETED and not K.available("cpu")
    monkeypatch.setitem(sys.modules, "facto.compress.kernels", K)
    monkeypatch.setattr(facto.compress, "kernels", K, raising=False)
    assert kernels_for(torch.device("cpu"), torch.float32, 64) is None
    x = torch.randn(1001)
    p = C.quantize(x, 3, 64, stochastic=True)
    assert ((p.dequantize() - x).abs() <= p.scale.repeat_interleave(64)[:1001] * (1 + 1e-5)).all()
    y, codes = C.clamp_with_mask(x, 6.0)
    assert torch.equal(y, x.clamp(0, 6)) and torch.equal(C.pack_mask(x > 0).unpack(), x > 0)
    assert torch.equal(C.masked_grad(x, codes), x * ((x > 0) & (x < 6)))


@parent
def test_cpu_takes_the_numba_kernels_but_for_float64(monkeypatch):
    from facto.compress import backend, cpu_kernels, kernels

    assert not kernels.available("cpu")  # Triton on the CPU: only under its interpreter
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert kernels_for(torch.device("cpu"), dtype, 64) is (cpu_kernels if cpu_kernels.available() else None)
    assert kernels_for(torch.device("cpu"), torch.float64, 64) is None
    assert kernels_for(torch.device("cpu"), torch.float32, 100) is None  # not a multiple of 8
    with backend.reference_only():
        assert kernels_for(torch.device("cpu"), torch.float32, 64) is None
    monkeypatch.setattr(backend, "CPU_KERNELS", False)  # FACTO_CPU_KERNELS=0
    assert kernels_for(torch.device("cpu"), torch.float32, 64) is None


@parent
def test_fallback_when_numba_cannot_be_imported(monkeypatch):
    """Without numba the CPU runs the reference, silently."""
    from facto.compress import cpu_kernels

    monkeypatch.setattr(cpu_kernels, "numba", None)
    monkeypatch.setattr(cpu_kernels, "_works", {})
    assert kernels_for(torch.device("cpu"), torch.float32, 64) is None
    x = torch.randn(1001)
    p = C.quantize(x, 3, 64, stochastic=False)
    assert ((p.dequantize() - x).abs() <= p.scale.repeat_interleave(64)[:1001] / 2 * (1 + 1e-5)).all()


# ---------------------------------------------------------------- helpers


def reference(fn, *args, **kwargs):
    """Call a facto.compress function with the kernels switched off."""
    with K.reference_only():
        return fn(*args, **kwargs)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values and NaN positions (dtype and shape too)."""
    return (a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.isnan(), b.isnan())
            and torch.equal(a.nan_to_num(), b.nan_to_num()))


def hard_input(n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Blocks of 64 that each exercise one case, then random values up to n."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(max(n, 640), generator=g) * 2 + 0.5
    x[64:128] += 3e4  # fits float16 metadata (|lo| <= 60000)
    x[128:192] = 1e5 + x[128:192] * 10  # |lo| > 60000: bfloat16 metadata
    x[192:256] *= 4e4  # wide range: bfloat16 at low bits
    x[256:320] = 2.5  # constant: scale 0, exact
    x[320:384] = 3.3  # constant, not a float16 value: lo rounds down
    x[384:448] = torch.where(torch.arange(64) % 2 == 0, 0.0, -0.0)  # +-0: min is either
    x[450], x[520], x[600] = math.nan, math.inf, -math.inf
    x[603:605] = torch.tensor([-3e38, 3e38])  # the range overflows float32: a special block
    return x[:n].to(dtype).to(DEVICE)


def check_exact(x: torch.Tensor, bits: int, block: int) -> None:
    """Kernel and reference: identical codes, meta and dequantized values (deterministic)."""
    assert kernels_for(x.device, x.dtype, block) is K
    p = C.quantize(x, bits, block, stochastic=False)
    r = reference(C.quantize, x, bits, block, stochastic=False)
    where = f"bits={bits} block={block} dtype={x.dtype} n={x.numel()}"
    assert torch.equal(p.meta, r.meta), where
    assert torch.equal(p.codes, r.codes), where
    assert (p.exact is None) == (r.exact is None) and (p.exact is None or same(p.exact, r.exact)), where
    assert same(p.dequantize(), reference(r.dequantize)), where
    if x.device.type != "cpu":  # the CUDA reference agrees with the CPU one too
        cpu = reference(C.quantize, x.cpu(), bits, block, stochastic=False)
        assert torch.equal(p.meta.cpu(), cpu.meta) and torch.equal(p.codes.cpu(), cpu.codes), where


# ---------------------------------------------------------------- deterministic: bit-exact


@kernel
@pytest.mark.parametrize("dtype", DTYPES)
def test_deterministic_bit_exact(dtype):
    x = hard_input(1001, dtype)  # 1001: not a multiple of the block nor of 8
    blocks = [b for b in (8, 24, 64, 256) if K.supports_block(b)]  # Numba: 24 too
    for bits in ALL_BITS:
        for block in blocks:
            check_exact(x, bits, block)


@kernel
@pytest.mark.parametrize("n", [1, 7, 9, 63, 65, 130])
def test_small_and_odd_sizes_bit_exact(n):
    for dtype in DTYPES:
        check_exact(hard_input(n, dtype, seed=n), 3, 64)
        check_exact(hard_input(n, dtype, seed=n), 8, 16)


@kernel
def test_special_blocks_decode_as_documented():
    x = hard_input(640, torch.float32)
    p = C.quantize(x, 4, 64, stochastic=False)
    assert p.bfloat16_blocks[:4].tolist() == [False, False, True, True]
    out = p.dequantize().cpu()
    assert torch.equal(out[256:320], x[256:320].cpu())  # constant block: exact
    assert (p.scale[4] == 0).item() and (p.scale[5] > 0).item()  # 2.5 exact, 3.3 not
    assert torch.equal(out[384:448], torch.zeros(64))
    assert torch.isfinite(out[:448]).all() and p.lo[7:].isnan().all()  # NaN/inf/overflow blocks: special
    assert same(out[448:640], x[448:640].cpu())  # ... and kept exactly, inf with its sign


SPECIAL_CASES = {  # position in block 1 -> value
    "inf": {5: math.inf},
    "nan": {5: math.nan},
    "both": {5: math.inf, 40: math.nan},
    "-inf": {63: -math.inf},
    "overflow": {5: -3e38, 40: 3e38},  # finite in float32 and bfloat16, but hi - lo = inf
}


@kernel
@pytest.mark.parametrize("dtype", DTYPES)
def test_special_blocks_are_kept_by_the_kernels(dtype):
    """Kernel and reference agree on blocks holding inf/NaN or spanning +-3e38 (odd blocks, one case
    each), which come back as they were (every finite value too); the blocks between them keep the
    width's bound."""
    x = torch.randn(64 * 11, generator=torch.Generator().manual_seed(5))
    for k, case in enumerate(SPECIAL_CASES.values()):
        for pos, value in case.items():
            x[64 * (2 * k + 1) + pos] = value
    x = x.to(dtype).to(DEVICE)  # float16: +-3e38 is +-inf there, still special
    special = torch.arange(11).repeat_interleave(64) % 2 == 1
    rest = x.cpu()[~special].double().view(-1, 64)
    lo, hi = rest.amin(1, keepdim=True), rest.amax(1, keepdim=True)
    for bits in (1, 3, 4, 8):  # every width's packing is checked by test_deterministic_bit_exact
        check_exact(x, bits, 64)
        bound = (hi - lo) / (2**bits - 1) * 1.01 + lo.abs() * 2**-7 + 1e-3
        for stochastic in (False, True):
            out = C.quantize(x, bits, 64, stochastic=stochastic, seed=bits).dequantize().cpu()
            assert same(out[special], x.cpu()[special]), (bits, stochastic)
            err = (out[~special].double().view(-1, 64) - rest).abs()
            assert (err <= bound).all(), (bits, stochastic)


@kernel
@pytest.mark.parametrize("dtype", DTYPES)
def test_blocks_at_the_top_of_the_dtype_range_match_and_stay_finite(dtype):
    """0 and the dtype's largest value in one block: lo + levels * scale would round beyond it, so the
    kernel marks the block special as the reference does, and it comes back exactly."""
    x = torch.zeros(128, dtype=dtype)
    x[1:64:2] = torch.finfo(dtype).max
    x[64:] = torch.linspace(-1, 1, 64, dtype=dtype)
    x = x.to(DEVICE)
    for bits in (1, 2, 8):  # the top rounds beyond the dtype at low widths
        check_exact(x, bits, 64)
        out = C.quantize(x, bits, 64, stochastic=False).dequantize()
        assert torch.isfinite(out).all() and torch.equal(out[:64], x[:64]), bits


@kernel
def test_the_kernel_says_whether_a_block_is_special(monkeypatch):
    """quantize_pack's third value (the Triton kernel raises a flag on the device, the Numba one counts)
    agrees with the metadata, map after map, also past the end of a buffer of Triton's flags."""
    if TRITON:
        monkeypatch.setattr(K, "FLAG_SLOTS", 3)
    finite = hard_input(448, torch.float32)  # blocks 0..6: no special block
    special = hard_input(640, torch.float32)  # NaN, inf, and a range overflowing float32
    for x in [finite, special, special, finite, finite, special, finite]:
        codes, meta, flag = K.quantize_pack(x, 4, 64, True, K.kernel_seed(1))
        assert bool(flag) == bool((meta[:, 0] == NAN_BITS).any()) == (x is special)
    assert K.quantize_pack(torch.empty(0, device=DEVICE), 4, 64, False, 0)[2] is False


@kernel
def test_empty_scalar_and_non_contiguous():
    e = torch.empty(0, 3, device=DEVICE)
    p = C.quantize(e, 4)
    assert p.codes.numel() == 0 and p.meta.shape == (0, 2) and p.dequantize().shape == (0, 3)
    s = torch.tensor(1.75, device=DEVICE)
    assert C.quantize(s, 3).dequantize().item() == 1.75
    xt = hard_input(640, torch.float32).view(40, 16).t()
    assert not xt.is_contiguous()
    p, r = C.quantize(xt, 5, 32, stochastic=False), reference(C.quantize, xt, 5, 32, stochastic=False)
    assert torch.equal(p.codes, r.codes) and torch.equal(p.meta, r.meta)
    assert p.dequantize().shape == xt.shape


@kernel
def test_unsupported_cases_take_the_reference(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("kernel called")

    monkeypatch.setattr(K, "quantize_pack", boom)
    x = hard_input(300, torch.float32)
    for block in (1, 4, 100, 16388):  # not a multiple of 8 (Triton: a power of two <= 8192)
        assert not K.supports_block(block)
        C.quantize(x, 4, block, stochastic=False)
    C.quantize(x.double(), 4, 64)  # float64
    with K.reference_only():
        C.quantize(x, 4, 64)


# ---------------------------------------------------------------- stochastic


@kernel
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_stochastic_is_unbiased_and_within_one_step(bits):
    block, draws = 64, 400
    pattern = torch.randn(block, generator=torch.Generator().manual_seed(bits))
    x = pattern.repeat(draws).to(DEVICE)  # identical blocks: same lo and scale everywhere
    p = C.quantize(x, bits, block, stochastic=True, seed=1234 + bits)
    assert (p.meta == p.meta[0]).all()
    lo, scale = p.lo[0].double().item(), p.scale[0].double().item()
    out = p.dequantize().view(draws, block).double().cpu()
    # per position the code is floor(t) or floor(t) + 1 with P(+1) = frac(t): the mean of
    # `draws` Bernoulli steps has sd sigma; 5 sigma (+ the 2**-16 noise resolution) bounds it
    t = (pattern.double() - lo) / scale
    frac = t - t.floor()
    sigma = scale * (frac * (1 - frac) / draws).sqrt()
    mean_err = (out.mean(0) - pattern.double()).abs()
    assert (mean_err <= 5 * sigma + 2**-15 * scale).all()
    det = C.quantize(x, bits, block, stochastic=False).dequantize().view(draws, block).double().cpu()
    assert (det.mean(0) - pattern.double()).abs().max() > 4 * scale / math.sqrt(draws)  # power
    err = (out - pattern.double()).abs()
    assert err.max() < scale * (1 + 1e-6)  # each draw is within one step
    assert len(torch.unique(out[:, 3])) == 2 or frac[3] == 0  # it really is random


@kernel
def test_stochastic_seeds():
    x = hard_input(1001, torch.float32)[:448]  # finite blocks
    run = lambda **kw: C.quantize(x, 3, 64, **kw).codes  # noqa: E731
    assert torch.equal(run(seed=7), run(seed=7))
    assert not torch.equal(run(seed=7), run(seed=8))
    assert not torch.equal(run(), run())  # seed drawn from torch's default CPU generator
    torch.manual_seed(3)
    a = run()
    torch.manual_seed(3)
    assert torch.equal(a, run())
    g = torch.Generator().manual_seed(11)
    a = run(generator=g)
    assert not torch.equal(a, run(generator=g))  # the generator advances
    assert torch.equal(a, run(generator=torch.Generator().manual_seed(11)))
    assert torch.equal(run(seed=7, stochastic=False), run(seed=8, stochastic=False))


def test_kernel_seed_is_one_int64_type():
    from facto.compress import kernels

    for s in (0, 1, 2**31, 2**62 + 5, 2**70):
        assert 2**62 <= kernels.kernel_seed(s) < 2**63
    assert kernels.kernel_seed(5) != kernels.kernel_seed(6)
    g = torch.Generator().manual_seed(0)
    assert kernels.kernel_seed(None, g) != kernels.kernel_seed(None, g)

    class FakeCudaGenerator:  # host-side state only: nothing is drawn on the device
        device = torch.device("cuda")

        def __init__(self, seed):
            self.seed, self.offset = seed, 0

        def initial_seed(self):
            return self.seed

        def get_offset(self):
            return self.offset

        def set_offset(self, offset):
            self.offset = offset

    a, b = FakeCudaGenerator(1), FakeCudaGenerator(1)
    keys = [kernels.kernel_seed(None, a) for _ in range(3)]
    assert len(set(keys)) == 3 and a.offset == 12  # advances like a Philox offset
    assert keys == [kernels.kernel_seed(None, b) for _ in range(3)]  # and repeats from a seed
    assert kernels.kernel_seed(None, FakeCudaGenerator(2)) != keys[0]


# ---------------------------------------------------------------- 1-bit masks


@kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cap", [None, 6.0, 6.099])
def test_fused_relu_mask_matches_relu_exactly(dtype, cap):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 5, 7, 9, generator=g) * 5)
    x.view(-1)[:6] = torch.tensor([0.0, -0.0, 6.0, 6.099, 6.09765625, -6.0])
    x = x.to(dtype).to(DEVICE).requires_grad_()
    assert kernels_for(x.device, dtype) is K
    y, codes = C.clamp_with_mask(x.detach(), cap)
    y_ref, codes_ref = reference(C.clamp_with_mask, x.detach(), cap)
    assert torch.equal(codes, codes_ref) and torch.equal(y, y_ref)
    over = x.detach().clone()
    y_over, codes_over = C.clamp_with_mask(over, cap, inplace=True)  # written over its input
    assert y_over.data_ptr() == over.data_ptr() and torch.equal(y_over, y_ref) and torch.equal(codes_over, codes_ref)
    from facto.method.layers import MaskReLU

    out = MaskReLU(cap)(x)
    want = F.relu(x) if cap is None else F.hardtanh(x, 0.0, cap)
    assert torch.equal(out, want)
    grad = torch.randn(x.shape, generator=g).to(dtype).to(DEVICE)
    (got,) = torch.autograd.grad(out, x, grad)
    (expected,) = torch.autograd.grad(want, x, grad)
    if cap is None or cap == 6.0:  # PyTorch's own gradient; at a cap it cannot hold exactly
        assert torch.equal(got, expected)
    assert torch.equal(got, reference(C.masked_grad, grad, codes))


@kernel
@pytest.mark.parametrize("shape", [(0,), (1,), (9,), (3, 5, 7), (2, 1001)])
def test_mask_pack_kernels(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(1)) > 0.5
    mask = mask.to(DEVICE)
    pm = C.pack_mask(mask)
    assert torch.equal(pm.codes, reference(C.pack_mask, mask).codes)
    assert torch.equal(pm.codes.cpu(), C.pack_bits(mask.reshape(-1).cpu().to(torch.uint8), 1))
    assert torch.equal(pm.unpack(), mask) and pm.unpack().dtype == torch.bool
    assert pm.nbytes == math.ceil(mask.numel() / 8)


# ---------------------------------------------------------------- availability


@kernel
def test_available_probe_failure_falls_back(monkeypatch):
    assert K.available(DEVICE)
    with K.reference_only():
        assert not K.available(DEVICE)

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(K, "_works", {})
    monkeypatch.setattr(K, "clamp_with_mask", broken)
    with pytest.warns(UserWarning, match="disabled"):
        assert not K.available(DEVICE)
    x = hard_input(100, torch.float32)
    assert C.quantize(x, 4).dequantize().shape == x.shape  # the reference, silently
    if TRITON:  # the interpreter's kernels serve the CPU only while TRITON_INTERPRET=1
        monkeypatch.setattr(K, "_works", {})
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        assert not K.available("cpu")


class _Unbuildable:
    """Stands in for a kernel whose first launch fails (as a compiler error would): a Triton kernel
    is launched as kernel[grid](...), a Numba one called."""

    def __init__(self, error: Exception):
        self.error = error

    def __call__(self, *args, **kwargs):
        raise self.error

    def __getitem__(self, grid):
        return self


@kernel
@pytest.mark.parametrize("kernel_name", K.KERNELS)
def test_a_kernel_that_fails_later_hands_over_to_the_reference(monkeypatch, kernel_name):
    """The probe passed, then one kernel cannot be built: that call and every later one give the
    reference's result, with one warning, and the kernels stay off for the device."""
    x = hard_input(1000, torch.float32).view(10, 100)
    with K.reference_only():
        want_codes = C.quantize(x, 3, 64, stochastic=False).codes
        want_y, want_mask = C.clamp_with_mask(x, 6.0)
        want_grad = C.masked_grad(x, want_mask)
    packed = C.quantize(x, 3, 64, stochastic=False)  # built by the kernels, before the failure
    monkeypatch.setattr(K, "_works", {})
    assert K.available(DEVICE)
    monkeypatch.setattr(K, kernel_name, _Unbuildable(RuntimeError("PTXAS error: cannot build")))
    same = functools.partial(torch.testing.assert_close, rtol=0, atol=0, equal_nan=True)
    with pytest.warns(UserWarning, match="disabled") as warned:
        same(C.quantize(x, 3, 64, stochastic=False).codes, want_codes)
        same(packed.dequantize(), packed._dequantize_reference())
        y, mask = C.clamp_with_mask(x, 6.0)
        same(y, want_y)
        same(mask, want_mask)
        same(C.masked_grad(x, mask), want_grad)
        same(C.pack_mask(x > 0).unpack(), x > 0)
    assert len([w for w in warned if "disabled" in str(w.message)]) == 1
    assert not K.available(DEVICE)


@kernel
def test_out_of_memory_in_a_kernel_is_not_a_kernel_failure(monkeypatch):
    """Running out of memory propagates (the trainer reports it) and leaves the kernels on."""
    monkeypatch.setattr(K, "_works", {})
    assert K.available(DEVICE)
    monkeypatch.setattr(K, K.KERNELS[0], _Unbuildable(torch.OutOfMemoryError("out of memory")))
    with pytest.raises(torch.OutOfMemoryError):
        C.quantize(hard_input(1000, torch.float32), 4, 64)
    assert K.available(DEVICE)


# ---------------------------------------------------------------- CUDA: launches and syncs


@cuda
def test_cuda_one_launch_each_way_and_no_sync():
    from torch.profiler import ProfilerActivity, profile

    from facto.compress import kernels

    assert kernels.available("cuda")
    x = torch.randn(4, 64, 56, 56, device="cuda")
    C.compress(x, 4).restore()  # compile outside the count
    torch.cuda.synchronize()

    def launches(fn) -> list[str]:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        return [e.name for e in prof.events() if e.device_type.name == "CUDA"]

    packed = C.compress(x, 4)
    done = launches(lambda: C.compress(x, 4))
    # the kernel (it raises the map's special-block flag itself) and the flag's copy to the host
    assert sum("_quantize_pack_kernel" in name for name in done) == 1 and len(done) <= 2, done
    assert len(launches(packed.restore)) == 1
    stored = [C.compress(x, bits) for bits in (1, 4, 8)]  # quantize reads one flag: its one sync
    stored += [C.compress(x.double(), bits, stochastic=False) for bits in (1, 4, 8)]  # reference on CUDA
    torch.cuda.set_sync_debug_mode("error")
    try:
        for packed in stored:
            packed.restore()  # no special block: no sync
        C.compress(x, 16).restore()
        C.compress(x > 0, 4).restore()
        y, codes = C.clamp_with_mask(x, 6.0)
        C.masked_grad(y, codes)
        C.narrow_int(torch.arange(300, device="cuda"), upper_bound=299).restore()
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ---------------------------------------------------------------- Numba: conversions and noise


def _numba_map(fn, values):
    """fn applied to each value, compiled (the kernels' helpers are only callable from Numba code)."""
    import numba
    import numpy as np

    @numba.njit
    def run(vals, out):
        for i in range(vals.shape[0]):
            out[i] = fn(vals[i])

    out = np.empty(values.shape[0], dtype=np.int64 if values.dtype == np.float32 else np.float32)
    run(values, out)
    return out


@numba_only
def test_numba_16_bit_casts_round_as_torch():
    """The kernels' float32 -> float16/bfloat16 casts, bit for bit as torch's (round to nearest even),
    on random bit patterns and every boundary: subnormals, ties, overflow to inf, NaN."""
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(-(2**31), 2**31 - 1, (200_000,), generator=g, dtype=torch.int64).to(torch.int32)
    edges = torch.tensor([0.0, -0.0, 65504.0, 65519.99, 65520.0, -65520.0, 2.0**-24, 2.0**-25, 3 * 2.0**-26,
                          2.0**-14, 2.0**-14 * (1 - 2.0**-11), 1 + 2.0**-11, 1 + 3 * 2.0**-11, 3.3e38,
                          math.inf, -math.inf, math.nan])
    values = torch.cat([bits.view(torch.float32), edges, torch.randn(50_000, generator=g) * 1e-5])
    got16 = torch.from_numpy(_numba_map(K._f16_bits, values.numpy()))
    want16 = values.to(torch.float16).view(torch.int16).to(torch.int64) & 0xFFFF
    finite = ~values.isnan()
    assert torch.equal(got16[finite], want16[finite])
    assert (got16[~finite] & 0x7C00 == 0x7C00).all() and (got16[~finite] & 0x3FF != 0).all()  # a NaN
    gotb = torch.from_numpy(_numba_map(K._bf16_bits, values.numpy()))
    wantb = values.to(torch.bfloat16).view(torch.int16).to(torch.int64) & 0xFFFF
    assert torch.equal(gotb[finite], wantb[finite])


@numba_only
def test_numba_noise_is_uniform_and_independent():
    """The counter-based noise: uniform on [-1/2, 1/2) in 2**-16 steps, neighbours uncorrelated, and a
    different stream per key."""
    import numba
    import numpy as np

    @numba.njit
    def draw(n, key, out):
        for i in range(n):
            out[i] = K._noise(i, np.uint32(key))

    n = 1 << 20
    a, b = np.empty(n, np.float32), np.empty(n, np.float32)
    draw(n, 12345, a)
    draw(n, 12346, b)
    assert a.min() >= -0.5 and a.max() < 0.5 and np.all((a + 0.5) * 65536 == np.round((a + 0.5) * 65536))
    assert abs(a.mean()) < 5 * (1 / 12) ** 0.5 / n**0.5  # 5 sigma
    assert abs(a.var() - 1 / 12) < 0.002
    counts = np.histogram(a, bins=64, range=(-0.5, 0.5))[0]
    expected = n / 64
    assert ((counts - expected) ** 2 / expected).sum() < 63 + 5 * (2 * 63) ** 0.5  # chi-square, 5 sigma
    for lag in (1, 2, 8, 64):
        assert abs(np.corrcoef(a[:-lag], a[lag:])[0, 1]) < 5 / n**0.5
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / n**0.5


# ---------------------------------------------------------------- Triton: a real GPU build


SM90_BUILDS = {  # kernel -> (argument types, compile-time constants): one build each, as launched
    "_quantize_pack_kernel": (
        {"x_ptr": "*bf16", "codes_ptr": "*u8", "meta_ptr": "*i16", "flag_ptr": "*i32", "numel": "i64",
         "nblocks": "i64", "ngroups": "i64", "seed": "i64"},
        {"BITS": 3, "BLOCK": 64, "G": 32, "STOCHASTIC": True, "OUT_MAX": 3.3895313892515355e38}),
    "_unpack_dequantize_kernel": (
        {"codes_ptr": "*u8", "meta_ptr": "*i16", "out_ptr": "*bf16", "numel": "i64", "nblocks": "i64",
         "ngroups": "i64"},
        {"BITS": 3, "BLOCK": 64, "G": 32, "OUT_BF16": True}),
    "_clamp_mask_kernel": (
        {"x_ptr": "*fp32", "y_ptr": "*fp32", "codes_ptr": "*u8", "numel": "i64", "ngroups": "i64", "cap": "fp32",
         "cap_x": "fp32"},
        {"HAS_CAP": True, "GROUPS": 256, "OUT_BF16": False}),
    "_masked_grad_kernel": (
        {"g_ptr": "*fp16", "codes_ptr": "*u8", "out_ptr": "*fp16", "numel": "i64", "ngroups": "i64"},
        {"GROUPS": 256, "OUT_BF16": False}),
    "_pack_mask_kernel": ({"src_ptr": "*u8", "codes_ptr": "*u8", "numel": "i64", "ngroups": "i64"}, {"GROUPS": 256}),
    "_unpack_mask_kernel": ({"codes_ptr": "*u8", "dst_ptr": "*u8", "numel": "i64", "ngroups": "i64"}, {"GROUPS": 256}),
}


@pytest.mark.slow
@parent
@pytest.mark.parametrize("name", sorted(SM90_BUILDS))
def test_triton_kernels_build_for_a_real_gpu(name):
    """Each Triton kernel compiles to an sm_90 binary here, without a GPU: lowering errors the
    interpreter cannot see (an atomic, a cast, a reduction) show up."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from facto.compress import kernels

    signature, constants = SM90_BUILDS[name]
    source = ASTSource(getattr(kernels, name), {**signature, **dict.fromkeys(constants, "constexpr")},
                       constexprs=constants)
    try:
        built = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": False})
    except RuntimeError as err:  # no ptxas in this triton install: nothing to check against
        if "ptxas" in str(err).lower():
            pytest.skip(f"triton cannot build here: {err}")
        raise
    assert len(built.asm["cubin"]) > 1000


@parent
def test_both_kernel_modules_offer_the_same_interface():
    from facto.compress import cpu_kernels, kernels
    from facto.compress.backend import KERNEL_INTERFACE

    for module in (kernels, cpu_kernels):
        assert all(callable(getattr(module, name)) for name in KERNEL_INTERFACE), module.__name__
        assert len(module.KERNELS) == 6


@numba_only
def test_numba_kernels_from_several_threads_at_once():
    """The app trains its runs in threads of one process: the kernels release the GIL and share no
    state, so maps compressed from four threads at once come back as from one."""
    from concurrent.futures import ThreadPoolExecutor

    maps = [hard_input(100_000 + 8 * i, torch.float32, seed=i) for i in range(8)]
    alone = [(C.quantize(x, 3, 64, stochastic=False), C.clamp_with_mask(x, 6.0)) for x in maps]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda x: (C.quantize(x, 3, 64, stochastic=False), C.clamp_with_mask(x, 6.0)),
                                 maps))
    for (p, (y, m)), (q, (y2, m2)) in zip(alone, together):
        assert torch.equal(p.codes, q.codes) and torch.equal(p.meta, q.meta) and same(p.dequantize(), q.dequantize())
        assert same(y, y2) and torch.equal(m, m2)  # y holds the NaN of hard_input


@parent
@pytest.mark.parametrize("value, on", [("0", False), ("No", False), ("", True)])
def test_facto_cpu_kernels_switch(value, on):
    code = "from facto.compress.backend import CPU_KERNELS; print(CPU_KERNELS)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=_env(FACTO_CPU_KERNELS=value))
    assert out.stdout.strip() == str(on), out.stderr


@numba_only
@pytest.mark.parametrize("parts", [2, 3])
@pytest.mark.parametrize("stochastic", [False, True])
def test_numba_kernels_split_over_threads_give_one_threads_results(monkeypatch, parts, stochastic):
    """A large map's call split into ranges run by numba's pool writes exactly what one thread writes:
    codes (stochastic ones too: their noise hashes positions), metadata, special blocks, restored
    values, the clamp, its mask and its gradient; uneven ranges and a short last block included."""
    x = hard_input(200_003, torch.float32, seed=3)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))

    def run():
        packed = C.quantize(x, 3, 64, stochastic=stochastic, seed=11)
        y, mask = C.clamp_with_mask(x, 6.0)
        return packed, packed.dequantize(), y, mask, C.masked_grad(grad, mask)

    monkeypatch.setattr(K, "_parts", lambda numel: 1)
    alone = run()
    calls = []
    monkeypatch.setattr(K, "_parts", lambda numel: calls.append(numel) or parts)
    split = run()
    assert len(calls) == 4  # quantize, restore, clamp with mask, masked gradient
    assert torch.equal(alone[0].codes, split[0].codes) and torch.equal(alone[0].meta, split[0].meta)
    assert alone[0].exact is not None and same(alone[0].exact, split[0].exact)
    for a, b in zip(alone[1:], split[1:]):
        assert same(a, b)
    over, over_mask = C.clamp_with_mask(x.clone(), 6.0, inplace=True)  # split ranges written over the input
    assert len(calls) == 5 and same(over, alone[2]) and same(over_mask, alone[3])


@numba_only
def test_numba_kernels_take_a_thread_per_part_up_to_torchs_threads(monkeypatch):
    """Small maps stay on the calling thread; a large one takes up to torch's intra-op threads; none
    is split where numba's pool is its 'workqueue' layer (it aborts on calls from several threads)
    or in a process forked after the pool started."""
    import numba

    monkeypatch.setattr(K, "_pool", {})
    assert K._parts(K.PART) == 1
    big = 64 * K.PART
    parts = K._parts(big)
    assert K._pool["threads"] == (numba.threading_layer() in ("omp", "tbb"))  # the layer numba picked
    assert parts == (min(torch.get_num_threads(), numba.get_num_threads()) if K._pool["threads"] else 1)
    assert K._parts(2 * K.PART) == min(parts, 2)  # one part per PART values at least
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert K._parts(big) == 1
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(K, "_pool", {"pid": -1, "threads": 1})  # started by another process
    assert K._parts(big) == 1 and K._pool["threads"] == 0
    monkeypatch.setattr(K, "_pool", {})
    monkeypatch.setattr(numba.config, "THREADING_LAYER", "workqueue")
    assert K._parts(big) == 1 and K._pool["threads"] == 0
