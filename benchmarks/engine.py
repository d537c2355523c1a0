"""Engine benchmark: how fast the default comparison runs, and the sweep that chose the default.

    python benchmarks/engine.py                 # timing of the default compare() + default choice table
    python benchmarks/engine.py --timing-only
    python benchmarks/engine.py --seeds 0,1,2 --grid "0.5:core:4,0.5:core:2,0.25:core:4,0.5:last:4"

Prints markdown tables and the machine they ran on. Not a test.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from facto.config import count  # noqa: E402
from facto.engine.devices import machine  # noqa: E402
from facto.engine.train import RunConfig, StepEvent, SummaryEvent, compare  # noqa: E402


def timing(config: RunConfig) -> dict:
    """Wall time of compare(), time to the first step event, steps/s, share outside model compute."""
    start = time.perf_counter()
    first_step = None
    step_time: dict[str, float] = {}
    steps: dict[str, int] = {}
    summary = None
    for event in compare(config):
        if isinstance(event, StepEvent):
            if first_step is None:
                first_step = time.perf_counter() - start
            step_time[event.variant] = step_time.get(event.variant, 0.0) + event.step_seconds
            steps[event.variant] = steps.get(event.variant, 0) + 1
        elif isinstance(event, SummaryEvent):
            summary = event
    wall = time.perf_counter() - start
    compute = sum(step_time.values())
    return dict(wall=wall, first_step=first_step, summary=summary,
                steps_per_s={v: steps[v] / step_time[v] for v in steps},
                outside=1 - compute / wall)


def choose_default(seeds: list[int], grid: list[tuple], epochs: int) -> list[dict]:
    """Mean test accuracy over seeds of baseline and Facto for each (rank, update, bits)."""
    rows = []
    for rank, update, bits, recompute in grid:
        accs_b, accs_f, savings = [], [], []
        for seed in seeds:
            config = RunConfig(rank=rank, update=update, bits=bits, recompute=recompute, seed=seed,
                               epochs=epochs)
            summary = [e for e in compare(config) if isinstance(e, SummaryEvent)][-1]
            accs_b.append(summary.accuracy["baseline"])
            accs_f.append(summary.accuracy["facto"])
            savings.append(summary.saving_pct)
            print(f"  rank={rank} update={update} bits={bits} recompute={recompute} seed={seed}: "
                  f"baseline {accs_b[-1]:.2f} facto {accs_f[-1]:.2f} saving {savings[-1]:.1f} %",
                  file=sys.stderr, flush=True)
        rows.append(dict(rank=rank, update=update, bits=bits, recompute=recompute,
                         baseline=statistics.mean(accs_b), facto=statistics.mean(accs_f),
                         spread=statistics.pstdev(accs_f), saving=statistics.mean(savings)))
    return rows


def parse_grid(text: str) -> list[tuple]:
    grid = []
    for item in text.split(","):
        parts = item.split(":")
        rank, update, bits = float(parts[0]), parts[1], (None if parts[2] == "none" else int(parts[2]))
        recompute = len(parts) > 3 and parts[3] in ("r", "recompute", "1")
        grid.append((rank, update, bits, recompute))
    return grid


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timing-only", action="store_true")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=RunConfig().epochs)
    p.add_argument("--grid", default="0.5:core:4,0.5:core:4:r,0.5:core:2:r,0.25:core:4,0.5:last:4,0.5:all:4")
    args = p.parse_args()
    print(f"machine: {machine()}\n")
    config = RunConfig(device="cpu" if not torch.cuda.is_available() else "auto")
    t = timing(config)
    s = t["summary"]
    print("default comparison:", {k: v for k, v in config.to_dict().items()
                                   if k in ("model", "dataset", "rank", "update", "bits", "recompute", "epochs")})
    print("| measure | value |\n|---|---|")
    print(f"| compare() wall time | {t['wall']:.1f} s |")
    print(f"| first step event after | {t['first_step']:.2f} s |")
    for v, sps in t["steps_per_s"].items():
        print(f"| steps/s {v} | {sps:.2f} |")
    print(f"| share of time outside model steps (data, eval, events) | {100 * t['outside']:.1f} % |")
    print(f"| accuracy baseline / facto | {s.accuracy['baseline']:.2f} / {s.accuracy['facto']:.2f} % |")
    print(f"| activation memory saved | {s.saving_pct:.1f} % |\n")
    if args.timing_only:
        return
    seeds = [int(x) for x in args.seeds.split(",")]
    rows = choose_default(seeds, parse_grid(args.grid), args.epochs)
    print(f"digits, simple_cnn, {count(args.epochs, 'epoch')}, mean of seeds {seeds}:\n")
    print("| rank | update | bits | recompute | baseline acc % | Facto acc % (spread) | delta | saving % |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rank']} | {r['update']} | {r['bits']} | {'yes' if r['recompute'] else 'no'} | "
              f"{r['baseline']:.2f} | {r['facto']:.2f} ({r['spread']:.2f}) | {r['facto'] - r['baseline']:+.2f} | "
              f"{r['saving']:.1f} |")


if __name__ == "__main__":
    main()
