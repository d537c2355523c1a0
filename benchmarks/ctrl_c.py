"""Ctrl-C at a random moment of `facto train`'s first seconds, many times: how each run ended.

    python benchmarks/ctrl_c.py                 # 40 runs, Ctrl-C at a uniform moment in [0.1, 3] s
    python benchmarks/ctrl_c.py --runs 100 --latest 5

Each run is `python -m facto train` (resnet18, a tiny subset, CPU) in a fresh FACTO_HOME, started
with SIGINT's default action (as from a terminal), sent one SIGINT. Outcomes: "clean" (exit 130,
one line, no traceback), "killed" (ended by SIGINT, exit -2), "traceback" (a traceback on stderr),
"lost" (trained to the end, or still running 10 s later and killed by the script). Prints a table
and the machine; each run that did not end clean is listed on stderr with the last line it printed.
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facto.engine.devices import machine  # noqa: E402

TINY = ["--epochs", "1", "--max-train", "64", "--max-test", "32", "--device", "cpu", "--model", "resnet18"]


def one_run(after_s: float) -> tuple[str, str]:
    """The outcome of one Ctrl-C `after_s` seconds into `facto train`, and the last line on stderr."""
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "FACTO_HOME": home, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "facto", "train", *TINY], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(after_s)
        proc.send_signal(signal.SIGINT)
        try:
            err = proc.communicate(timeout=10)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return "lost", "still running 10 s later"
    last = err.strip().splitlines()[-1] if err.strip() else ""
    if "Traceback" in err:
        return "traceback", last
    if proc.returncode == -signal.SIGINT:
        return "killed", last
    if proc.returncode == 0:
        return "lost", last
    return ("clean" if proc.returncode == 130 and "interrupted" in err else f"exit {proc.returncode}"), last


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=40)
    p.add_argument("--earliest", type=float, default=0.1, help="seconds (default 0.1)")
    p.add_argument("--latest", type=float, default=3.0, help="seconds (default 3)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    moments = random.Random(args.seed)
    outcomes = collections.Counter()
    for i in range(args.runs):
        after = moments.uniform(args.earliest, args.latest)
        outcome, last = one_run(after)
        outcomes[outcome] += 1
        if outcome != "clean":
            print(f"run {i}: Ctrl-C at {after:.2f} s -> {outcome}: {last[:160]}", file=sys.stderr)
    print(f"machine: {machine()}\n")
    print(f"{args.runs} runs of `python -m facto train`, one Ctrl-C each at a uniform moment in "
          f"[{args.earliest:g}, {args.latest:g}] s\n")
    print("| outcome | runs |\n|---|---|")
    for outcome in ("clean", "killed", "traceback", "lost"):
        print(f"| {outcome} | {outcomes.pop(outcome, 0)} |")
    for outcome, n in outcomes.items():
        print(f"| {outcome} | {n} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
