"""What the machine gives a training process: the resident peak per variant, against the kernel's
own account of the process (getrusage's ru_maxrss, read by the parent), and glibc's malloc
returning big buffers once freed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from facto.memory.process import ResidentPeak

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not ResidentPeak().available,
                                reason="the resident peak is read from Linux's /proc/self")

FREED = textwrap.dedent("""
    import sys, torch
    from facto.memory.process import resident_bytes, return_big_buffers
    if sys.argv[1] == "returned":
        assert return_big_buffers()
    big = torch.ones(8 * 2**20 // 4); del big  # one big free: glibc raises its threshold to 8 MB
    buffers, kept = [], []
    for _ in range(100):  # 100 buffers of 2 MB, each followed by a small one that stays
        buffers.append(torch.ones(2**19))
        kept.append(torch.ones(2**14))
    before = resident_bytes(); del buffers
    print(before - resident_bytes())
""")


@pytest.mark.parametrize("setting", ["default", "returned"])
def test_freed_big_buffers_go_back_to_the_system_only_when_returned(setting):
    out = subprocess.run([sys.executable, "-c", FREED, setting], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")})
    assert out.returncode == 0, out.stderr
    released = int(out.stdout) / 2**20
    if setting == "returned":
        assert released > 180, released  # the 200 MB freed left the process
    else:
        assert released < 20, released  # glibc kept them in its heap


def _maxrss(*args: str) -> tuple[dict, int]:
    """`facto train ... --json` in a child process: (its summary, its ru_maxrss in bytes as the kernel
    reports it to the parent)."""
    proc = subprocess.Popen([sys.executable, "-m", "facto", "train", "--no-store", "--json", "--quiet",
                             "--epochs", "1", "--max-steps", "2", "--max-test", "64", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, err.decode()
    summary = json.loads(out)
    return summary.get("summary", summary), usage.ru_maxrss * 1024


@pytest.mark.slow
def test_each_variants_process_peak_agrees_with_the_kernels_maxrss_of_a_run_of_it_alone():
    """Alone in its process, a variant's peak is the process's: getrusage's ru_maxrss, as the kernel
    reports it to the parent, agrees. In a comparison the peak is reset before each variant's step:
    each gets its own, about what it reaches alone (the other model is held beside it), Facto's lower."""
    model = ("--model", "resnet20", "--batch-size", "128", "--preset", "balanced")
    compared, _ = _maxrss(*model)
    for variant in ("baseline", "facto"):
        alone, maxrss = _maxrss("--variants", variant, *model)
        assert abs(alone["process_peak"][variant] - maxrss) <= 0.10 * maxrss, (variant, alone["process_peak"], maxrss)
        assert abs(compared["process_peak"][variant] - maxrss) <= 0.15 * maxrss, (variant, compared, maxrss)
    assert compared["process_peak"]["facto"] < compared["process_peak"]["baseline"]
