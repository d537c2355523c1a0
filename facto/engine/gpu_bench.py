"""What a GPU user feels: step time vs dense, kernel launches per step, peak memory, the largest
batch under a memory cap, the meter against the allocator, compress/restore throughput.

`facto gpu-bench` prints this module's tables (also written under --out); `python benchmarks/gpu.py`
adds the compress/restore throughput of benchmarks/kernels.py.
Every number is measured on the machine it prints; on a machine without CUDA the CUDA-only
columns say so ("n/a") and the suite runs small.

Rows per model: dense fp32, compression only 4-bit (ActNN-style), Facto rank 0.5 core without
compression, Facto + recompute 4-bit (the default), and the dense and default Facto under bf16
autocast.
"""
from __future__ import annotations

import gc
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from ..config import RunConfig
from ..memory.meter import saved_activations
from .build import Variant, fresh_model
from .step import autocast, train_step

GB = 1e9
MB = 1e6


VARIANTS = (
    Variant("dense fp32", "dense"),
    Variant("compression only 4-bit", "compress", RunConfig(bits=4)),
    Variant("Facto rank 0.5 core, no compression", "facto", RunConfig(recompute=False, bits=None)),
    Variant("Facto + recompute 4-bit", "facto", RunConfig()),
    Variant("dense, bf16 autocast", "dense", RunConfig(precision="bf16")),
    Variant("Facto + recompute 4-bit, bf16 autocast", "facto", RunConfig(precision="bf16")),
)
CASES = (("resnet20", (1, 32, 32), 256), ("tv:resnet18", (3, 224, 224), 64), ("tv:resnet50", (3, 224, 224), 32))
SMALL_CASES = (("resnet20", (1, 32, 32), 32), ("simple_cnn", (1, 32, 32), 32))


def run_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, variant: Variant,
             opt: torch.optim.Optimizer | None = None) -> int:
    """One training step of `variant` (`facto.engine.step.train_step`); returns the meter's stored bytes."""
    return train_step(model, x, y, bits=variant.bits, precision=variant.precision, optimizer=opt).meter.bytes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class StepRow:
    """One variant of one model: time, launches, memory."""

    model: str
    batch: int
    variant: str
    step_ms: float
    vs_dense: float
    launches: int | None
    launches_vs_dense: float | None
    stored_mb: float
    peak_above_resident_mb: float | None
    forward_growth_mb: float | None
    meter_vs_allocator: float | None


def step_seconds(models: Sequence[nn.Module], variants: Sequence[Variant], x, y, rounds: int) -> list[float]:
    """Median seconds per step, the variants alternating round by round (after a warm-up)."""
    times: list[list[float]] = [[] for _ in models]
    for m, v in zip(models, variants):
        run_step(m, x, y, v)
    for _ in range(rounds):
        for i, (m, v) in enumerate(zip(models, variants)):
            _sync(x.device)
            start = time.perf_counter()
            run_step(m, x, y, v)
            _sync(x.device)
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def kernel_launches(model: nn.Module, x, y, variant: Variant) -> int | None:
    """CUDA kernels one training step launches (torch.profiler), None without CUDA."""
    if x.device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    run_step(model, x, y, variant)
    _sync(x.device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run_step(model, x, y, variant)
        _sync(x.device)
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and not e.name.startswith(("Memcpy", "Memset")))


def peak_above_resident(model: nn.Module, x, y, variant: Variant) -> float | None:
    """Allocator peak (MB) of one step above what model, batch and gradients already hold."""
    if x.device.type != "cuda":
        return None
    run_step(model, x, y, variant)
    _sync(x.device)
    base = torch.cuda.memory_allocated(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    run_step(model, x, y, variant)
    _sync(x.device)
    return (torch.cuda.max_memory_allocated(x.device) - base) / MB


def forward_growth(model: nn.Module, x, variant: Variant) -> tuple[float | None, int]:
    """(allocator growth over one forward with the graph kept, MB; the meter's bytes)."""
    model.train()
    cuda = x.device.type == "cuda"
    if cuda:
        _sync(x.device)
        gc.collect()
        before = torch.cuda.memory_allocated(x.device)
    with autocast(x.device, variant.precision), saved_activations(variant.bits, model=model) as meter:
        out = model(x)
    growth = None
    if cuda:
        _sync(x.device)
        growth = (torch.cuda.memory_allocated(x.device) - before - out.untyped_storage().nbytes()) / MB
    del out
    return growth, meter.bytes


def step_table(cases=CASES, variants: Sequence[Variant] = VARIANTS, device: torch.device | None = None,
               rounds: int = 10, log: Callable[[str], None] = print) -> list[StepRow]:
    """Every variant of every case: step time vs dense, launches, peak, meter vs allocator."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for name, shape, batch in cases:
        dense = fresh_model(name, 10, shape[0]).to(device)
        x = torch.randn(batch, *shape, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        models = [v.build(dense).to(device) for v in variants]
        secs = step_seconds(models, variants, x, y, rounds)
        launches = [kernel_launches(m, x, y, v) for m, v in zip(models, variants)]
        for m, v, t, n in zip(models, variants, secs, launches):
            growth, metered = forward_growth(m, x, v)
            rows.append(StepRow(
                model=name, batch=batch, variant=v.name, step_ms=1e3 * t, vs_dense=t / secs[0], launches=n,
                launches_vs_dense=None if n is None or not launches[0] else n / launches[0],
                stored_mb=metered / MB, peak_above_resident_mb=peak_above_resident(m, x, y, v),
                forward_growth_mb=growth,
                meter_vs_allocator=None if growth is None or growth <= 0 else metered / MB / growth))
            log(f"  {name} b{batch} | {v.name}: {1e3 * t:.1f} ms ({t / secs[0]:.2f}x dense)")
        del models, dense, x, y
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


@dataclass
class BatchRow:
    """The largest batch that trains under a memory cap: measured, and what `facto plan` predicted."""

    model: str
    cap_gb: float
    variant: str
    max_batch: int | None
    vs_dense: float | None
    predicted: int | None
    prediction_error_pct: float | None
    note: str = ""


PLAN_VARIANTS = ("dense", "compress-4", "paper", "balanced")


def max_batch_table(cap_gb: float, cases=(("tv:resnet18", "3x224x224"), ("tv:resnet50", "3x224x224")),
                    variants: Sequence[str] = PLAN_VARIANTS, optimizer: str = "sgd",
                    log: Callable[[str], None] = print) -> list[BatchRow]:
    """For each case: `facto plan`'s prediction, then the real largest batch (2 SGD steps per try,
    binary search under torch.cuda.set_per_process_memory_fraction(cap / total)); needs CUDA."""
    from ..memory.plan import plan
    from ..memory.verify import verify

    if not torch.cuda.is_available():
        return [BatchRow(name, cap_gb, v, None, None, None, None, "needs CUDA") for name, _ in cases for v in variants]
    rows = []
    for name, shape in cases:
        result = plan(name, shape, 10, int(cap_gb * GB), optimizer, variants=list(variants), device="cuda", log=log)
        checks = verify(result, log=log)
        dense = next((c.measured for c in checks if c.variant == "dense"), None)
        for c in checks:
            error = None if not c.measured else 100.0 * (c.predicted - c.measured) / c.measured
            rows.append(BatchRow(name, cap_gb, c.variant, c.measured,
                                 c.measured / dense if c.measured and dense else None, c.predicted, error,
                                 c.error or ""))
    return rows


def app_default_seconds(device: str = "auto") -> float:
    """Wall time of the app's default comparison (compare(RunConfig()) to the end)."""
    from .train import compare, consume

    start = time.perf_counter()
    consume(compare(RunConfig(device=device)))
    return time.perf_counter() - start


def markdown(rows: Sequence, columns: Sequence[str] | None = None) -> str:
    """A list of dataclass rows as a markdown table (None -> n/a, floats to 2-3 digits)."""
    if not rows:
        return "(no rows)"
    data = [asdict(r) for r in rows]
    columns = list(columns or data[0])

    def cell(v) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(d[c]) for c in columns) + " |" for d in data]
    return "\n".join(lines)
