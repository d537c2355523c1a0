"""Activation memory of dense, compression-only and Facto training: a markdown table.

Usage::

    python benchmarks/memory.py                      # torchvision ResNet-18, batch 64, 32x32
    python benchmarks/memory.py --model facto:resnet20 --batch 128
    python benchmarks/memory.py --json results.json  # also write the rows as JSON ('-': stdout only)

What is measured: bytes autograd keeps for backward after one training-mode forward
(`facto.saved_activations`, each storage once, compressed size incl. block metadata,
parameters and buffers excluded), on a batch of random N(0, 1) images drawn with a fixed
seed (3 channels). On CUDA also the allocator's peak (`torch.cuda.max_memory_allocated`)
over forward + backward. The factorize time is the median of 3 `facto.method.factorize` calls.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import facto  # noqa: E402
from facto import FactoConv2d, FactoLinear, factorize, saved_activations, with_relu_masks  # noqa: E402
from facto.engine.devices import cpu_name  # noqa: E402
from facto.engine.models import create_model  # noqa: E402

BITS = (None, 8, 4, 2)
RANKS = (0.25, 0.5)
UPDATES = ("first", "core", "last", "all")


def build_model(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """'facto:<name>' from facto's registry, else a torchvision model by name (random weights)."""
    if name.startswith("facto:"):
        try:
            return create_model(name[len("facto:"):], num_classes=num_classes, in_channels=in_channels)
        except ValueError as error:
            raise SystemExit(f"--model={name!r}: {error}") from None
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise SystemExit(f"--model={name!r} is not a torchvision model; use 'facto:<name>' for "
                         f"facto's registry ({', '.join(facto.engine.models.list_models())})")
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if in_channels != 3:
        facto.engine.models.replace_first_conv(model, in_channels)
    return model


def machine_info(device: torch.device) -> dict:
    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        info["device"] = f"cuda ({torch.cuda.get_device_name(device)})"
    return info


def set_update(model: nn.Module, update: str) -> nn.Module:
    """A copy of a factorized model training `update`'s factor (same factors, no re-decomposition)."""
    new = copy.deepcopy(model)
    for m in new.modules():
        if isinstance(m, (FactoConv2d, FactoLinear)):
            m.set_update(update)
    return new


def measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bits: int | None) -> tuple[int, float | None]:
    """(stored activation bytes after one forward, peak CUDA bytes over forward+backward or None)."""
    model.train()
    cuda = x.is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with torch.enable_grad(), saved_activations(bits, model=model) as meter:
        out = model(x)
    stored = meter.bytes
    peak = None
    if cuda:
        F.cross_entropy(out, y).backward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    del out
    model.zero_grad(set_to_none=True)
    return stored, peak


def timed_factorize(model: nn.Module, repeats: int, **kwargs) -> tuple[nn.Module, float]:
    times, new = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        new = factorize(model, **kwargs)
        times.append(time.perf_counter() - start)
    return new, statistics.median(times)


def run(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    dense = build_model(args.model, args.classes, 3).to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, args.classes, (args.batch,), device=device)

    rows: list[dict] = []

    def add(variant: str, model: nn.Module, bits, rank=None, update=None, seconds=None, **extra):
        stored, peak = measure(model, x, y, bits)
        rows.append(dict(variant=variant, rank=rank, update=update, bits=bits, stored_bytes=stored,
                         factorize_s=seconds, peak_cuda_bytes=peak, **extra))
        if args.verbose:
            print(f"  {variant:<18} rank={rank} update={update} bits={bits}: {stored / 1e6:.2f} MB",
                  file=sys.stderr)

    add("dense fp32", dense, None)
    masked = with_relu_masks(dense)
    for bits in BITS:
        add("compression only" if bits else "ReLU masks only", masked, bits)
    del masked
    for rank in RANKS:
        base, seconds = timed_factorize(dense, args.repeats, rank=rank, update="core", recompute=False)
        for update in UPDATES:
            model = set_update(base, update)
            for bits in BITS:
                add("facto", model, bits, rank, update, seconds)
            del model
        for update in ("core", "last"):
            model, rc_seconds = timed_factorize(dense, args.repeats, rank=rank, update=update, recompute=True)
            for bits in BITS:
                add("facto + recompute", model, bits, rank, update, rc_seconds)
            del model
    reference = rows[0]["stored_bytes"]
    for row in rows:
        row["saving_pct"] = 100.0 * (1.0 - row["stored_bytes"] / reference)
    info = machine_info(device)
    info.update(model=args.model, batch=args.batch, repeats=args.repeats, classes=args.classes, size=args.size,
                data=f"random N(0,1), seed {args.seed}")
    return info, rows


def markdown(info: dict, rows: list[dict]) -> str:
    lines = [
        f"Activation memory, {info['model']} (num_classes={info['classes']}), training mode, batch {info['batch']} "
        f"x 3 x {info['size']} x {info['size']} ({info['data']})",
        "",
        f"Machine: {info['cpu']}; {info['cores']} cores (torch threads {info['torch_threads']}); "
        f"torch {info['torch']}, torchvision {info['torchvision']}, Python {info['python']}; "
        f"device {info['device']}",
        "",
        f"| variant | rank | update | bits | stored MB | saving % vs dense fp32 "
        f"| factorize s (median of {info['repeats']}) "
        "| peak CUDA MB (fwd+bwd) |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        bits = "fp32" if r["bits"] is None else str(r["bits"])
        seconds = "" if r["factorize_s"] is None else f"{r['factorize_s']:.2f}"
        peak = "n/a" if r["peak_cuda_bytes"] is None else f"{r['peak_cuda_bytes'] / 1e6:.1f}"
        lines.append(f"| {r['variant']} | {r['rank'] if r['rank'] is not None else ''} | {r['update'] or ''} "
                     f"| {bits} | {r['stored_bytes'] / 1e6:.2f} | {r['saving_pct']:.1f} | {seconds} | {peak} |")
    lines += ["", "MB = 10^6 bytes. 'compression only' = ReLUs keep 1-bit masks "
              "+ block-wise quantization (block 64) of the other saved tensors. Facto rows keep 1-bit "
              "ReLU masks too; first conv and the classifier stay dense.",
              "Masks alone can store more than dense: an in-place ReLU's output is the storage the next "
              "conv saves anyway, while a mask is extra unless the next layer stops saving its input."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18",
                   help="a torchvision model name, or 'facto:<name>' for facto.engine.models (default resnet18)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32, help="image height and width (default 32)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3, help="factorize timings per rank (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                   help="write machine info and rows as JSON to PATH ('-' or no PATH: stdout, no table)")
    p.add_argument("--verbose", action="store_true", help="progress on stderr")
    args = p.parse_args(argv)
    for field in ("batch", "size", "classes", "repeats"):
        if getattr(args, field) < 1:
            p.error(f"--{field}={getattr(args, field)} must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    info, rows = run(args)
    if args.json == "-":
        print(json.dumps({"machine": info, "rows": rows}, indent=2))
        return 0
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    print(markdown(info, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
