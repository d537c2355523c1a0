"""What the machine gives a training process on the CPU: each variant's resident peak, from
`facto train` processes (the code path the command line and the app's runs take), with glibc's
malloc as configured by default and with big buffers returned to the system.

    python benchmarks/process_memory.py [--steps 3]

One fresh process per (case, variant, allocator): `facto train --variants V --max-steps N --json`.
"returned" is the `facto` program with FACTO_RETURN_MEMORY=1 (it calls facto.return_big_buffers at
start), "default" the same program without it. Each process also times its steps (the median
step_seconds of the JSON). Each row: the process's resident memory before any model (its data
loaded, and for a compressed variant the CPU kernels, which a run loads first), the step peak above
it (the JSON's process_peak minus process_before_model; weights, gradients, optimizer state and the
step's buffers), the stored bytes, and the outside check: the kernel's ru_maxrss of the process (a
one-variant run never resets its peak) against the reported peak; "whole below dense" compares the
ru_maxrss of the two processes.
Prints a markdown table and the machine it ran on.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {  # name -> facto train flags (digits: offline, 1x32x32)
    "resnet18, 1x32x32, batch 171, SGD": ["--model", "resnet18", "--batch-size", "171", "--optimizer", "sgd"],
    "resnet20, 1x32x32, batch 512, Adam": ["--model", "resnet20", "--batch-size", "512", "--optimizer", "adam"],
}
VARIANTS = {"dense": ("baseline", []), "Facto + recompute 4-bit (balanced)": ("facto", ["--preset", "balanced"])}


def run(flags: list[str], variant: str, returned: bool, steps: int) -> dict:
    """One `facto train` process: its summary and the kernel's ru_maxrss (bytes)."""
    args = ["train", "--variants", variant, "--epochs", "1", "--max-steps", str(steps), "--max-test", "64",
            "--no-store", "--json", "--quiet", *flags]
    command = [sys.executable, "-m", "facto", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "FACTO_RETURN"))}
    if returned:
        env["FACTO_RETURN_MEMORY"] = "1"
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env)
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"facto train failed: {err.decode()[-2000:]}")
    summary = json.loads(out)
    summary["maxrss"] = usage.ru_maxrss * 1024
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="training steps per process (default 3)")
    args = parser.parse_args(argv)
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {platform.platform()}\n")
    print("| case | allocator | variant | stored MB | process before model MB | step peak above it MB | "
          "below dense | step s | reported peak MB | ru_maxrss MB | reported vs ru_maxrss | whole below dense |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for case, flags in CASES.items():
        for returned in (False, True):
            dense = whole = None
            for name, (variant, extra) in VARIANTS.items():
                s = run(flags + extra, variant, returned, args.steps)
                peak, before = s["process_peak"][variant], s["process_before_model"]
                above = peak - before
                if variant == "baseline":
                    dense, whole, below, below_whole = above, s["maxrss"], "", ""
                else:
                    below = f"{100 * (1 - above / dense):.0f} %"
                    below_whole = f"{100 * (1 - s['maxrss'] / whole):.0f} %"
                print(f"| {case} | {'big buffers returned' if returned else 'glibc default'} | {name} | "
                      f"{s['act_bytes'][variant] / 1e6:,.0f} | {before / 1e6:,.0f} | {above / 1e6:,.0f} | {below} | "
                      f"{s['step_seconds'][variant]:.2f} | {peak / 1e6:,.0f} | "
                      f"{s['maxrss'] / 1e6:,.0f} | {100 * (peak / s['maxrss'] - 1):+.1f} % | {below_whole} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
