"""Independent checks of the meter: what autograd really keeps, measured two other ways.

- `storage_walk`: our own `saved_tensors_hooks` keep every saved tensor as is; each storage is
  counted once and whole (`untyped_storage().nbytes()`), parameters and buffers excluded,
  integer tensors at the narrowest integer width that holds their values. It shares no code
  with `facto.memory.meter`.
- `rss_growth`: a fresh process runs forwards of a model and reports how much its resident
  memory grew while the graph was kept (glibc returns freed blocks above
  MALLOC_MMAP_THRESHOLD_ to the system, so what stays resident is what autograd holds).

`facto audit` prints both next to the meter for every registered model.
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

    from ..engine.models import create_model
    from ..method.factorize import factorize, with_relu_masks
    from .meter import saved_activations

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


def rss_growth(name: str, variant: str, bits: int | None, batch: int = 256, rounds: int = 6) -> dict:
    """Run `_probe` in a fresh Python process (so earlier allocations don't blur it); `rounds` forwards,
    the first not counted."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "OMP_NUM_THREADS": "1"}
    code = (f"import json, facto.memory.audit as a; "
            f"print(json.dumps(a._probe({name!r}, {variant!r}, {bits!r}, {batch}, {rounds})))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def meter_vs_walk(batch: int = 8) -> list[dict]:
    """For every registered model (Facto rank 0.5, core, recompute, bits None, 3x32x32): the meter's
    bytes and the storage walk's for one forward."""
    from ..engine.models import create_model, list_models
    from ..method.factorize import factorize
    from .meter import measure_activations

    rows = []
    for name in list_models():
        torch.manual_seed(0)
        model = factorize(create_model(name, 10, 3), rank=0.5, update="core", recompute=True)
        x = torch.randn(batch, 3, 32, 32)
        rows.append({"model": name, "meter_bytes": measure_activations(model, x).bytes,
                     "walk_bytes": storage_walk(model, x)})
    return rows


RSS_VARIANTS = (("dense", None, "dense fp32"), ("masks", 4, "compression only 4-bit"),
                ("facto", 4, "Facto + recompute 4-bit"), ("facto", None, "Facto + recompute, fp32"))


def meter_vs_rss(model: str = "resnet20", batch: int = 256) -> list[dict]:
    """For each of RSS_VARIANTS: the meter's bytes and the RSS growth of a fresh process (`rss_growth`)."""
    return [{"variant": label, **rss_growth(model, variant, bits, batch)} for variant, bits, label in RSS_VARIANTS]
