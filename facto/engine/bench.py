"""Method comparison: dense, checkpointing, compression only (ActNN-style), Facto, Facto + recompute.

Same model, data and seeds for every method (each a `Variant`), in one process; `facto bench`
prints `bench_model`'s rows. Memory is measured as everywhere in Facto (stored bytes
for backward, once per storage, compressed size incl. metadata); step time by alternating
the methods on one batch (`facto.engine.step.train_step`, the step every run trains with) (median of several rounds); accuracy by the short training.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import nn

from ..config import RunConfig
from ..memory.meter import measure_activations
from ..memory.process import ResidentPeak, big_buffers_returned, resident_bytes
from .build import Variant, dense_model
from .data import load_data
from .step import train_step
from .train import train_model

# ----------------------------------------------------------------------------- methods

def methods(rank: float | int | str = 0.5) -> list[Variant]:
    """The methods compared, the dense fp32 baseline first."""
    paper = RunConfig(rank=rank, update="last", recompute=False)
    core = RunConfig(rank=rank, recompute=False)
    recompute = RunConfig(rank=rank, update="core", recompute=True)
    return [
        Variant("dense fp32", "dense"),
        Variant("checkpointing (per stage)", "checkpoint"),
        Variant("compression only 4-bit (ActNN-style)", "compress", RunConfig(bits=4)),
        Variant("compression only 2-bit (ActNN-style)", "compress", RunConfig(bits=2)),
        Variant(f"Facto paper (rank {rank}, last, 4-bit)", "facto", paper),
        Variant(f"Facto (rank {rank}, core, 4-bit)", "facto", core),
        Variant(f"Facto + recompute (rank {rank}, core, 4-bit)", "facto", recompute),
        Variant(f"Facto + recompute (rank {rank}, core, 2-bit)", "facto", recompute.replace(bits=2)),
        Variant(f"Facto + recompute + cycle (rank {rank}, 4-bit)", "facto", recompute.replace(update="cycle")),
    ]


# ----------------------------------------------------------------------------- measurements

@dataclass
class Row:
    """One method's measured numbers on one model."""

    model: str
    method: str
    bits: int | None
    stored_mb: float
    saving_pct: float
    peak_cuda_mb: float | None
    step_time_rel: float
    step_seconds: float
    accuracy_mean: float | None
    accuracy_std: float | None
    accuracies: list[float]
    process_step_mb: float | None = None  # CPU under Linux: resident memory one step added to the process


def stored_bytes(model: nn.Module, x: torch.Tensor, bits: int | None) -> int:
    return measure_activations(model, x, bits).bytes


def peak_cuda(model: nn.Module, x, y, bits) -> float | None:
    """Allocator peak (MB) of one training step above what the model, batch and gradients already hold."""
    if x.device.type != "cuda":
        return None
    train_step(model, x, y, bits=bits)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    train_step(model, x, y, bits=bits)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 1e6


def process_step(model: nn.Module, x, y, bits) -> float | None:
    """What the machine gave the process for one training step on the CPU (MB): its resident peak
    during the step above its resident memory before it. None on a GPU, without Linux's /proc, and
    unless big buffers are returned (FACTO_RETURN_MEMORY=1): otherwise the heap keeps what earlier
    steps freed, the resident memory before the step already holds it, and the step reads as 0."""
    peak = ResidentPeak()
    if x.device.type != "cpu" or not peak.available or not big_buffers_returned():
        return None
    train_step(model, x, y, bits=bits)
    before = resident_bytes()
    peak.reset()
    train_step(model, x, y, bits=bits)
    return (peak.read() - before) / 1e6


def step_times(models: Sequence[nn.Module], bits: Sequence, x, y, rounds: int = 7) -> list[float]:
    """Median seconds per forward+backward, the methods alternating round by round."""
    times: list[list[float]] = [[] for _ in models]
    for m, b in zip(models, bits):  # warm-up
        train_step(m, x, y, bits=b)
    for _ in range(rounds):
        for i, (m, b) in enumerate(zip(models, bits)):
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            train_step(m, x, y, bits=b)
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            times[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def train_accuracy(method: Variant, model_name: str, seed: int, epochs: int, device: torch.device,
                   dataset: str = "digits") -> float:
    """Test accuracy (%) after the short training of `method` from the seed's dense init."""
    config = RunConfig(model=model_name, dataset=dataset, seed=seed, epochs=epochs, device=str(device.type))
    data = load_data(dataset, batch_size=config.batch_size, seed=seed)
    dense = dense_model(config, data.info.num_classes, data.info.in_channels)
    model = method.build(dense).to(device)
    return train_model(model, method, config, data, device)


def bench_model(model_name: str, seeds: Sequence[int], epochs: int, batch: int, device: torch.device,
                rank: float | int | str = 0.5, train: bool = True, log=print) -> list[Row]:
    """All methods on one model: memory, peak, step time, accuracy over seeds."""
    dense = dense_model(RunConfig(model=model_name, seed=0), 10, 1, device)
    built = [(m, m.build(dense).to(device)) for m in methods(rank)]
    x = torch.randn(batch, 1, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    mem = [stored_bytes(model, x, m.bits) for m, model in built]
    times = step_times([model for _, model in built], [m.bits for m, _ in built], x, y)
    rows = []
    for (m, model), b, t in zip(built, mem, times):
        accs = []
        if train:
            for seed in seeds:
                accs.append(train_accuracy(m, model_name, seed, epochs, device))
                log(f"  {model_name} | {m.name} | seed {seed}: {accs[-1]:.2f} %")
        rows.append(Row(model=model_name, method=m.name, bits=m.bits, stored_mb=b / 1e6,
                        saving_pct=100 * (1 - b / mem[0]), peak_cuda_mb=peak_cuda(model, x, y, m.bits),
                        process_step_mb=process_step(model, x, y, m.bits),
                        step_time_rel=t / times[0], step_seconds=t,
                        accuracy_mean=statistics.mean(accs) if accs else None,
                        accuracy_std=statistics.pstdev(accs) if accs else None, accuracies=accs))
    return rows


def markdown(rows: Sequence[Row]) -> str:
    lines = ["| model | method | stored MB | saving % | peak CUDA MB | process step MB | step time vs dense "
             "| test acc % (mean ± sd) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = "-" if r.accuracy_mean is None else f"{r.accuracy_mean:.2f} ± {r.accuracy_std:.2f}"
        peak = "n/a" if r.peak_cuda_mb is None else f"{r.peak_cuda_mb:.1f}"
        process = "n/a" if r.process_step_mb is None else f"{r.process_step_mb:.1f}"
        lines.append(f"| {r.model} | {r.method} | {r.stored_mb:.2f} | {r.saving_pct:.1f} | {peak} | {process} | "
                     f"{r.step_time_rel:.2f}x | {acc} |")
    return "\n".join(lines)


def chart(rows: Sequence[Row]):
    """Saving vs accuracy change, every method of every model as a point."""
    from ..plots import methods_figure

    return methods_figure([asdict(r) for r in rows])
