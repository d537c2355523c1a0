"""Method comparison: dense, checkpointing, compression only (ActNN-style), Facto, Facto + recompute.

Same model, data and seeds for every method, in one process. `python -m facto bench` and
`benchmarks/compare.py` run `main`. Memory is measured as everywhere in Facto (stored bytes
for backward, once per storage, compressed size incl. metadata); step time by alternating
the methods on one batch (median of several rounds); accuracy by the short training.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .activations import measure_activations, saved_activations
from .build import Recipe, dense_model
from .config import RunConfig
from .data import load_data
from .machine import machine
from .train import train_model
from .usage import OneLineParser, UsageError, check_output_path, count


# ----------------------------------------------------------------------------- methods

Method = Recipe  # a method of the comparison: name, build method, bits, config, cycle


def methods(rank: float | int | str = 0.5) -> list[Method]:
    """The methods compared, the dense fp32 baseline first."""
    paper, core = RunConfig(rank=rank, update="last", recompute=False), RunConfig(rank=rank, recompute=False)
    recompute = RunConfig(rank=rank, update="core", recompute=True)
    return [
        Method("dense fp32", "dense", None),
        Method("checkpointing (per stage)", "checkpoint", None),
        Method("compression only 4-bit (ActNN-style)", "compress", 4),
        Method("compression only 2-bit (ActNN-style)", "compress", 2),
        Method(f"Facto paper (rank {rank}, last, 4-bit)", "facto", 4, paper),
        Method(f"Facto (rank {rank}, core, 4-bit)", "facto", 4, core),
        Method(f"Facto + recompute (rank {rank}, core, 4-bit)", "facto", 4, recompute),
        Method(f"Facto + recompute (rank {rank}, core, 2-bit)", "facto", 2, recompute),
        Method(f"Facto + recompute + cycle (rank {rank}, 4-bit)", "facto", 4, recompute, cycle=("core", "last")),
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


def stored_bytes(model: nn.Module, x: torch.Tensor, bits: int | None) -> int:
    return measure_activations(model, x, bits).bytes


def _step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bits: int | None) -> None:
    model.train()
    with saved_activations(bits, model=model):
        out = model(x)
    F.cross_entropy(out, y).backward()
    model.zero_grad(set_to_none=True)


def peak_cuda(model: nn.Module, x, y, bits) -> float | None:
    """Allocator peak (MB) of one training step above what the model and batch already hold."""
    if x.device.type != "cuda":
        return None
    _step(model, x, y, bits)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    _step(model, x, y, bits)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 1e6


def step_times(models: Sequence[nn.Module], bits: Sequence, x, y, rounds: int = 7) -> list[float]:
    """Median seconds per forward+backward, the methods alternating round by round."""
    times: list[list[float]] = [[] for _ in models]
    for m, b in zip(models, bits):  # warm-up
        _step(m, x, y, b)
    for _ in range(rounds):
        for i, (m, b) in enumerate(zip(models, bits)):
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            _step(m, x, y, b)
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            times[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def train_accuracy(method: Method, model_name: str, seed: int, epochs: int, device: torch.device,
                   dataset: str = "digits") -> float:
    """Test accuracy (%) after the short training of `method` from the seed's dense init."""
    config = RunConfig(model=model_name, dataset=dataset, seed=seed, epochs=epochs, device=str(device.type))
    data = load_data(dataset, batch_size=config.batch_size, seed=seed)
    dense = dense_model(config, data.info.num_classes, data.info.in_channels)
    model = method.build(dense).to(device)
    return train_model(model, config, data, device, bits=method.bits, cycle=method.cycle)


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
                        step_time_rel=t / times[0], step_seconds=t,
                        accuracy_mean=statistics.mean(accs) if accs else None,
                        accuracy_std=statistics.pstdev(accs) if accs else None, accuracies=accs))
    return rows


def markdown(rows: Sequence[Row]) -> str:
    lines = ["| model | method | stored MB | saving % | peak CUDA MB | step time vs dense | test acc % (mean ± sd) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = "-" if r.accuracy_mean is None else f"{r.accuracy_mean:.2f} ± {r.accuracy_std:.2f}"
        peak = "n/a" if r.peak_cuda_mb is None else f"{r.peak_cuda_mb:.1f}"
        lines.append(f"| {r.model} | {r.method} | {r.stored_mb:.2f} | {r.saving_pct:.1f} | {peak} | "
                     f"{r.step_time_rel:.2f}x | {acc} |")
    return "\n".join(lines)


def chart(rows: Sequence[Row]):
    """Saving vs accuracy change, every method of every model as a point."""
    from .plots import methods_figure

    return methods_figure([asdict(r) for r in rows])


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m facto bench", description=__doc__)
    default = " (default: %(default)s)"
    p.add_argument("--models", default="simple_cnn,resnet20", help="comma list of models" + default)
    p.add_argument("--seeds", default="0,1,2", help="comma list of training seeds" + default)
    p.add_argument("--epochs", type=int, default=RunConfig().epochs, help="training epochs per seed" + default)
    p.add_argument("--batch", type=int, default=64, help="batch for memory and step time" + default)
    p.add_argument("--rank", default="0.5", help="rank of the Facto methods, as in facto train" + default)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps" + default)
    p.add_argument("--no-train", action="store_true", help="memory and speed only")
    p.add_argument("--json", action="store_true", help="print only a JSON document on stdout")
    p.add_argument("--html", help="write the saving-vs-accuracy chart here")
    p.add_argument("--max-batch-gb", type=float, default=None,
                   help="also measure the largest batch that trains under this memory cap (GB; needs CUDA): "
                        "torchvision resnet18 and resnet50 at 3x224x224")
    return p


@dataclass
class BenchArgs:
    """The command line, checked: every value a user can get wrong is refused before any work."""

    models: list[str]
    seeds: list[int]
    rank: float | int | str
    device: torch.device


def check_args(args: argparse.Namespace) -> BenchArgs:
    """ValueError naming the value and what is allowed, for the first bad one."""
    from .train import resolve_device

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        raise ValueError(f"--models={args.models!r} is not allowed: name one model or more, comma separated")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise ValueError(f"--seeds={args.seeds!r} is not allowed: use integers, comma separated, e.g. 0,1,2") from None
    for model in models:  # RunConfig checks each model, the rank, epochs, batch and device as facto train does
        RunConfig(model=model, rank=args.rank, epochs=args.epochs, batch_size=args.batch, device=args.device)
    if args.html:
        check_output_path(args.html, "--html")
    if args.max_batch_gb is not None:
        if not args.max_batch_gb > 0:
            raise ValueError(f"--max-batch-gb={args.max_batch_gb:g} is not allowed: use a number of GB > 0")
        if not torch.cuda.is_available():
            raise ValueError("--max-batch-gb needs a CUDA GPU and this machine has none: leave it out")
    return BenchArgs(models, seeds, args.rank, resolve_device(args.device))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m facto bench ...`; returns the exit code (2 for a user mistake, printed as one line)."""
    args = build_parser().parse_args(argv)
    try:
        checked = check_args(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    device, seeds = checked.device, checked.seeds
    log = (lambda *a: None) if args.json else (lambda msg: print(msg, flush=True))
    log(f"machine: {machine()}; device {device}; digits, {count(args.epochs, 'epoch')}, seeds {seeds}, "
        f"batch {args.batch}")
    rows = []
    for name in checked.models:
        rows += bench_model(name, seeds, args.epochs, args.batch, device, checked.rank, not args.no_train, log)
    capped = []
    if args.max_batch_gb:
        from .gpubench import max_batch_table

        capped = max_batch_table(args.max_batch_gb, log=log)
    if args.json:
        document = {"machine": machine(), "rows": [asdict(r) for r in rows]}
        if args.max_batch_gb:
            document["max_batch"] = [asdict(r) for r in capped]
        print(json.dumps(document, indent=2))
    else:
        print(markdown(rows))
    if args.html:
        chart(rows).write_html(args.html, include_plotlyjs=True)
    if args.max_batch_gb and not args.json:
        from .gpubench import markdown as table

        print(f"\nlargest batch that trains in {args.max_batch_gb:g} GB (SGD, 2 steps per try):")
        print(table(capped))
    return 0
