"""Independent checks of the meter: what autograd really keeps, measured two other ways.

- `storage_walk`: our own `saved_tensors_hooks` keep every saved tensor as is; each storage is
  counted once and whole (`untyped_storage().nbytes()`), parameters and buffers excluded,
  integer tensors at the narrowest integer width that holds their values. It shares no code
  with `facto.activations`.
- `rss_growth`: a fresh process runs forwards of a model and reports how much its resident
  memory grew while the graph was kept (glibc returns freed blocks above
  MALLOC_MMAP_THRESHOLD_ to the system, so what stays resident is what autograd holds).

`python -m facto.audit` prints both next to the meter for every registered model.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import torch
from torch import nn

_INT_WIDTHS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def storage_walk(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes one training forward of `x` keeps for backward, counted without the meter."""
    excluded = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    kept: list[torch.Tensor] = []

    def pack(t):
        kept.append(t)
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    seen, total = set(), 0
    for t in kept:
        ptr = t.untyped_storage().data_ptr()
        if ptr in excluded or ptr in seen:
            continue
        seen.add(ptr)
        size = t.untyped_storage().nbytes()
        if t.dtype in (torch.int16, torch.int32, torch.int64) and t.numel():
            lo, hi = int(t.min()), int(t.max())
            width = next(torch.empty(0, dtype=d).element_size() for d in _INT_WIDTHS
                         if torch.iinfo(d).min <= lo and hi <= torch.iinfo(d).max)
            size = size // t.element_size() * width
        total += size
    return total


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _probe(name: str, variant: str, bits: int | None, batch: int, rounds: int = 6) -> dict:
    """In this (fresh) process: RSS growth over forwards with the graph kept, and the meter."""
    import gc

    from .activations import saved_activations
    from .factorize import factorize, with_relu_masks
    from .models import create_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    dense = create_model(name, 10, 1)
    model = {"dense": lambda m: m, "masks": with_relu_masks,
             "facto": lambda m: factorize(m, 0.5, "core", recompute=True)}[variant](dense)
    model.train()
    x = torch.randn(batch, 1, 32, 32)
    growths, metered = [], 0
    for i in range(rounds):  # the first forward warms up (thread pools, lazy init) and is not counted
        gc.collect()
        before = _rss()
        with saved_activations(bits, model=model) as meter:
            out = model(x)
        after = _rss()
        if i:
            growths.append(after - before)
        metered = meter.bytes
        del out, meter
    return {"metered": metered, "rss_growth": statistics.median(growths), "growths": growths}


def rss_growth(name: str, variant: str, bits: int | None, batch: int = 256) -> dict:
    """Run `_probe` in a fresh Python process (so earlier allocations don't blur it)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "OMP_NUM_THREADS": "1"}
    code = (f"import json, facto.audit as a; "
            f"print(json.dumps(a._probe({name!r}, {variant!r}, {bits!r}, {batch})))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """`python -m facto.audit`: both checks for every registered model (a few minutes on a CPU)."""
    from .usage import OneLineParser, UsageError

    try:
        OneLineParser(prog="python -m facto.audit", description=__doc__.split("\n\n")[0]).parse_args(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from .activations import measure_activations
    from .factorize import factorize
    from .machine import machine
    from .models import create_model, list_models

    print(f"machine: {machine()}\n")
    print("Meter vs an independent walk of the storages autograd keeps (bits=None, batch 8, 3x32x32, "
          "rank 0.5, core, recompute):\n")
    print("| model | meter MB | storage walk MB | difference |\n|---|---|---|---|")
    for name in list_models():
        torch.manual_seed(0)
        model = factorize(create_model(name, 10, 3), rank=0.5, update="core", recompute=True)
        x = torch.randn(8, 3, 32, 32)
        metered, walked = measure_activations(model, x).bytes, storage_walk(model, x)
        print(f"| {name} | {metered / 1e6:.3f} | {walked / 1e6:.3f} | {100 * (metered - walked) / walked:+.2f} % |")
    print("\nMeter vs process memory (RSS growth over one forward, graph kept; resnet20, batch 256, 1x32x32, "
          "median of 5 forwards in a fresh process):\n")
    print("| variant | meter MB | RSS growth MB | meter / RSS |\n|---|---|---|---|")
    for variant, bits, label in (("dense", None, "dense fp32"), ("masks", 4, "compression only 4-bit"),
                                 ("facto", 4, "Facto + recompute 4-bit"), ("facto", None, "Facto + recompute, fp32")):
        r = rss_growth("resnet20", variant, bits)
        print(f"| {label} | {r['metered'] / 1e6:.2f} | {r['rss_growth'] / 1e6:.2f} | "
              f"{r['metered'] / r['rss_growth']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
