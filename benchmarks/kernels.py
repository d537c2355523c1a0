"""Throughput of activation compression: compress and restore of an fp32 feature map.

Usage::

    python benchmarks/kernels.py                   # CUDA: 206, 51 and 13 MB maps; CPU: 13 and 3 MB
    python benchmarks/kernels.py --mb 206 --bits 2,4,8 --repeats 20
    python benchmarks/kernels.py --deterministic   # round to nearest instead of stochastic
    python benchmarks/kernels.py --channels-last   # maps in channels_last memory format

What is measured, per map size and bit width: the median wall time of `facto.compress`
(quantize + pack) and of `.restore()` (unpack + dequantize) over `--repeats` runs after
one warm-up (CUDA: CUDA events around each call; CPU: `time.perf_counter`), shown as ms
and as GB/s of fp32 input (map bytes / time). Rows: the PyTorch reference path and, on
CUDA, the Triton path; on the CPU the numba kernels on one thread and on PyTorch's intra-op
threads (a large map's call is split between them); plus a `clone` of the map as a
memory-bandwidth yardstick. On CUDA
also the CUDA operations (kernels, memcpy, memset) one call launches, counted with
torch.profiler, and the host syncs it makes (torch.cuda sync debug mode). Maps are
(n, 64, 112, 112) fp32 N(0, 1) tensors, n from --mb (206 MB: n = 64).
Cells that were not measured say "-".
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from facto import compress as C  # noqa: E402
from facto.compress.backend import path_name  # noqa: E402
from facto.engine.devices import machine  # noqa: E402

MAP = (64, 112, 112)  # channels, height, width of one image's map
IMAGE_MB = 4 * 64 * 112 * 112 / 1e6


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mb", default=None,
                   help="comma-separated map sizes in MB (default: 206,51,13 on CUDA, 13,3 on CPU)")
    p.add_argument("--bits", default="2,4,8")
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--repeats", type=int, default=None, help="timed runs (default 20 CUDA, 3 CPU)")
    p.add_argument("--deterministic", action="store_true", help="round to nearest (default stochastic)")
    p.add_argument("--cpu", action="store_true", help="use the CPU even when CUDA is available")
    p.add_argument("--channels-last", action="store_true",
                   help="maps in channels_last memory format (stored in memory order, restored with their strides)")
    return p.parse_args(argv)


def median_seconds(fn: Callable[[], object], repeats: int, cuda: bool) -> float:
    """Median wall time of fn() over `repeats` runs after one warm-up (compiles kernels)."""
    fn()
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cuda_ops(fn: Callable[[], object]) -> int:
    """CUDA operations (kernels, memcpy, memset) one call of fn launches, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def host_syncs(fn: Callable[[], object]) -> int:
    """Synchronizing CUDA calls fn makes, as reported by torch.cuda's sync debug mode."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def measure(x: torch.Tensor, bits: int, args, repeats: int, cuda: bool) -> dict:
    """Times (and on CUDA launches and syncs) of compress and restore for one path."""
    stochastic = not args.deterministic

    def pack():
        return C.compress(x, bits, args.block, stochastic=stochastic)

    packed = pack()
    row = {"compress": median_seconds(pack, repeats, cuda),
           "restore": median_seconds(packed.restore, repeats, cuda),
           "stored_mb": packed.nbytes / 1e6}
    if cuda:
        row["ops"] = (cuda_ops(pack), cuda_ops(packed.restore))
        row["syncs"] = (host_syncs(pack), host_syncs(packed.restore))
    return row


def fmt_row(path: str, mb: float, bits: int | str, row: dict, fp32_bytes: int) -> str:
    def cell(key: str) -> str:
        s = row.get(key)
        return "- | -" if s is None else f"{s * 1e3:.2f} | {fp32_bytes / s / 1e9:.2f}"

    ops = row.get("ops")
    syncs = row.get("syncs")
    stored = row.get("stored_mb")
    return (f"| {path} | {mb:.0f} | {bits} | {'-' if stored is None else f'{stored:.1f}'} | "
            f"{cell('compress')} | {cell('restore')} | "
            f"{'-' if ops is None else f'{ops[0]} / {ops[1]}'} | "
            f"{'-' if syncs is None else f'{syncs[0]} / {syncs[1]}'} |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    sizes = [float(s) for s in (args.mb or ("206,51,13" if cuda else "13,3")).split(",")]
    bits_list = [int(b) for b in args.bits.split(",")]
    repeats = args.repeats or (20 if cuda else 3)
    from facto.compress import kernels

    triton_ok = cuda and kernels.available(device)
    threads = torch.get_num_threads()
    numba_ok = not cuda and path_name(device) == "numba kernels"
    print(machine())
    rounding = "deterministic" if args.deterministic else "stochastic"
    why_not = "no CUDA" if not cuda else "triton unavailable"
    layout = "channels_last" if args.channels_last else "contiguous"
    print(f"device {device}; {layout} maps; block {args.block}; {rounding} rounding; median of {repeats} runs; "
          f"Triton path: {'measured' if triton_ok else f'not measured ({why_not})'}")
    print()
    print("| path | map MB | bits | stored MB | compress ms | compress GB/s | restore ms | restore GB/s "
          "| CUDA ops compress / restore | host syncs compress / restore |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    gen = torch.Generator(device=device).manual_seed(0)
    for mb in sizes:
        n = max(1, round(mb / IMAGE_MB))
        x = torch.randn((n, *MAP), generator=gen, device=device)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        fp32_bytes = x.numel() * 4
        real_mb = fp32_bytes / 1e6
        clone = {"compress": median_seconds(x.clone, repeats, cuda)}
        print(fmt_row("clone (yardstick)", real_mb, "-", clone, fp32_bytes))
        for bits in bits_list:
            with kernels.reference_only():
                print(fmt_row("reference", real_mb, bits, measure(x, bits, args, repeats, cuda), fp32_bytes),
                      flush=True)
            if triton_ok:
                print(fmt_row("triton", real_mb, bits, measure(x, bits, args, repeats, cuda), fp32_bytes),
                      flush=True)
            for n_threads in sorted({1, threads}) if numba_ok else ():
                torch.set_num_threads(n_threads)  # the kernels split a call over at most this many threads
                try:
                    row = measure(x, bits, args, repeats, cuda)
                finally:
                    torch.set_num_threads(threads)
                label = f"numba kernels, {n_threads} thread{'s' if n_threads > 1 else ''}"
                print(fmt_row(label, real_mb, bits, row, fp32_bytes), flush=True)
        del x
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
