"""What makes a training step's memory peak on the CPU: the buffers alive at that moment, by the
operation that allocated them.

Usage::

    python benchmarks/step_peak_parts.py                          # resnet20, batch 128, three variants
    python benchmarks/step_peak_parts.py --model simple_cnn --batch 64 --variants facto

One training step (`facto.engine.step.train_step`: forward, zero_grad, backward) per variant, after
a first step, under torch.profiler with `profile_memory=True`; the allocation and free events of the
exported trace carry their addresses, so the buffers alive at the step's highest point are known.
Each row groups them by the autograd node running when they were allocated (or the forward
operation) and the ATen operator that allocated them. "Rise" is the step's peak above what was
allocated before it (weights, gradients of the first step, the batch). Variants: dense fp32,
compression only 4-bit, Facto + recompute 4-bit (the `balanced` preset's method).
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from facto.config import RunConfig  # noqa: E402
from facto.engine.build import Variant, dense_model  # noqa: E402
from facto.engine.devices import machine  # noqa: E402
from facto.engine.step import train_step  # noqa: E402

VARIANTS = {
    "dense": Variant("dense fp32", "dense"),
    "compress": Variant("compression only 4-bit", "compress", RunConfig(bits=4)),
    "facto": Variant("Facto + recompute 4-bit", "facto", RunConfig(rank=0.5, update="core", recompute=True, bits=4)),
}
WRAPPERS = ("autograd::engine::evaluate_function", "facto.engine.step")  # spans that name no operation


def trace_events(model, variant: Variant, x, y) -> list[dict]:
    """The chrome-trace events of one profiled training step (after an unprofiled one)."""
    train_step(model, x, y, bits=variant.bits)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train_step(model, x, y, bits=variant.bits)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "trace.json"
        prof.export_chrome_trace(str(path))
        return json.loads(path.read_text())["traceEvents"]


def peak_buffers(events: list[dict]) -> tuple[int, int, list[tuple[int, float, int]]]:
    """(the step's peak above its start, the bytes and [(size, time, thread)] of the buffers allocated in
    the step and alive at that peak). The buffers can hold more than the rise: frees of blocks from
    before the step lower the rise and name no buffer of the step."""
    memory = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    alive: dict[int, tuple[int, float, int]] = {}
    level = rise = 0
    at_peak: dict[int, tuple[int, float, int]] = {}
    for e in memory:
        size, address = e["args"]["Bytes"], e["args"]["Addr"]
        if size > 0:
            alive[address] = (size, e["ts"], e["tid"])
        else:
            alive.pop(address, None)
        level += size
        if level > rise:
            rise, at_peak = level, dict(alive)
    return rise, sum(s for s, _, _ in at_peak.values()), list(at_peak.values())


def phase_peaks(events: list[dict]) -> tuple[int, int]:
    """The step's highest rise above its start during forward and during backward (from the first
    autograd engine span on), in bytes."""
    memory = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    start = min((e["ts"] for e in events if e.get("ph") == "X" and e.get("name", "").startswith(WRAPPERS[0])),
                default=float("inf"))
    level, peaks = 0, [0, 0]
    for e in memory:
        level += e["args"]["Bytes"]
        phase = int(e["ts"] >= start)
        peaks[phase] = max(peaks[phase], level)
    return peaks[0], peaks[1]


def allocated_by(events: list[dict], ts: float, tid: int) -> str:
    """'node / operator' running at time ts on thread tid: the innermost span that is not an engine
    wrapper, and the innermost ATen operator."""
    spans = sorted((e for e in events if e.get("ph") == "X" and e.get("tid") == tid
                    and e["ts"] <= ts <= e["ts"] + e.get("dur", 0)), key=lambda e: e["ts"])
    names = [e["name"] for e in spans]
    nodes = [n for n in names if not n.startswith("aten::") and not n.startswith(WRAPPERS)]
    ops = [n for n in names if n.startswith("aten::")]
    return f"{nodes[-1] if nodes else '(forward)'} / {ops[-1] if ops else '-'}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--variants", default="dense,compress,facto", help="comma list of: " + ", ".join(VARIANTS))
    p.add_argument("--rows", type=int, default=8, help="groups printed per variant")
    args = p.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant {unknown[0]!r}; allowed: {', '.join(VARIANTS)}")
    print(machine())
    print(f"{args.model}, batch {args.batch} x 1x32x32, one step on the CPU")
    torch.manual_seed(0)
    x, y = torch.randn(args.batch, 1, 32, 32), torch.randint(0, 10, (args.batch,))
    dense = dense_model(RunConfig(model=args.model, seed=0), 10, 1, torch.device("cpu"))
    for name in args.variants.split(","):
        variant = VARIANTS[name]
        events = trace_events(variant.build(dense), variant, x, y)
        rise, held, buffers = peak_buffers(events)
        groups: dict[str, list[int]] = collections.defaultdict(list)
        for size, ts, tid in buffers:
            groups[allocated_by(events, ts, tid)].append(size)
        why = " (blocks from before the step were freed)" if held > rise else ""
        forward, backward = phase_peaks(events)
        print(f"\n{variant.name}: rise at the step's peak {rise / 1e6:.1f} MB (forward {forward / 1e6:.1f}, backward "
              f"{backward / 1e6:.1f}); buffers allocated in the step and alive at it {held / 1e6:.1f} MB{why}")
        print("| allocated by (node / operator) | buffers | MB | largest MB |")
        print("|---|---|---|---|")
        for label, sizes in sorted(groups.items(), key=lambda kv: -sum(kv[1]))[:args.rows]:
            print(f"| {label} | {len(sizes)} | {sum(sizes) / 1e6:.1f} | {max(sizes) / 1e6:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
