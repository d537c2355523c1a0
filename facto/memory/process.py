"""What the machine gives a training process on the CPU: its resident peak, and the malloc setting
that lets that peak follow what training really holds.

glibc's malloc serves big buffers from its heap and keeps them there once freed (its threshold
for handing a buffer straight to the system grows with every big free, up to 32 MB), so a
process's resident memory stays near the most it ever held in short-lived buffers: Facto's
restore and recompute buffers, each freed a moment later, leave a process at twice what its
step holds. `return_big_buffers` makes every buffer of 64 KiB or more come from the system and go
back to it when freed (mallopt M_MMAP_THRESHOLD 64 KiB, M_TRIM_THRESHOLD 0: the settings of
MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0), at the cost of page faults on every new
buffer: Facto's steps of resnet18 and resnet20 took 1.6x and 2.5x as long on a 2-core machine
(docs/benchmarks.md). So the `facto` program and the app's run processes return big buffers only
when asked (`FACTO_RETURN_MEMORY=1`, `return_memory_wanted`).

`ResidentPeak` reads the process's resident peak (VmHWM of /proc/self/status) since its last
`reset` (Linux resets it through /proc/self/clear_refs): the peak of one step of one variant.
`process_setup_bytes` measures what a training process sets up whatever its batch (the planner's
CPU process peak adds it).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
BIG_BUFFER = 64 * 1024  # bytes: buffers this big or bigger come from and go back to the system
ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": str(BIG_BUFFER), "MALLOC_TRIM_THRESHOLD_": "0"}  # the same, for a new process
_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")
_set = False


def return_big_buffers() -> bool:
    """Make this process's malloc return every buffer of 64 KiB or more to the system when it is
    freed, so its resident memory follows what it holds (see the module's docstring). Call it
    before training allocates; it lasts for the process. True when set (or set before: Linux
    with glibc), False where there is no glibc mallopt (nothing changes)."""
    global _set
    if _set:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _set = mallopt(M_MMAP_THRESHOLD, BIG_BUFFER) == 1 and mallopt(M_TRIM_THRESHOLD, 0) == 1
    return _set


def return_memory_wanted() -> bool:
    """Whether FACTO_RETURN_MEMORY asks the facto program and the app's runs to `return_big_buffers`
    (1, true, yes or on)."""
    return os.environ.get("FACTO_RETURN_MEMORY", "").strip().lower() in ("1", "true", "yes", "on")


def big_buffers_returned() -> bool:
    """Whether `return_big_buffers` has been set in this process (by the call, not by the environment)."""
    return _set


def resident_bytes(field: str = "VmRSS") -> int | None:
    """A memory field of /proc/self/status in bytes (VmRSS: resident now, VmHWM: resident peak);
    None where there is no such file (not Linux)."""
    try:
        text = _STATUS.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


class ResidentPeak:
    """The process's resident peak since `reset` (Linux: VmHWM, reset through clear_refs).

    `available` is False where the peak can't be reset (not Linux, or /proc/self/clear_refs not
    writable): `read` then gives None rather than a peak of the whole process's life."""

    def __init__(self) -> None:
        self.available = resident_bytes("VmHWM") is not None and self._clear()

    @staticmethod
    def _clear() -> bool:
        try:
            _CLEAR_REFS.write_text("5")  # 5: reset the peak resident size to the resident size now
        except OSError:
            return False
        return True

    def reset(self) -> None:
        if self.available:
            self.available = self._clear()

    def read(self) -> int | None:
        """Bytes: the most this process had resident since `reset` (None when not available)."""
        return resident_bytes("VmHWM") if self.available else None


_SETUP_SCRIPT = """
import sys, torch
from facto.memory.process import ResidentPeak, resident_bytes, return_big_buffers
from facto.compress.backend import path_name
from facto.engine.build import fresh_model
from facto.engine.optim import OPTIMIZER_SPECS
from facto.engine.step import train_step
return_big_buffers()
torch.manual_seed(0)
model = fresh_model("simple_cnn", 10, 1)
x, y = torch.randn(2, 1, 32, 32), torch.randint(0, 10, (2,))
if int(sys.argv[2]):
    path_name(torch.device("cpu"))  # the kernels load before the model, as facto.engine.train loads them
peak = ResidentPeak()
before = resident_bytes()
peak.reset()
opt = OPTIMIZER_SPECS[sys.argv[1]].make(list(model.parameters()), 0.01, 0.0)
for _ in range(2):
    train_step(model, x, y, bits=int(sys.argv[2]) or None, optimizer=opt)
print(peak.read() - before if peak.available else -1)
"""


def process_setup_bytes(optimizer: str = "sgd", compress: bool = True) -> int | None:
    """What a training process on this machine sets up on its first steps whatever the batch, in
    bytes: its resident peak over two steps of a tiny model (2 images of simple_cnn) with the run's
    optimizer (a name of facto.config's OPTIMIZERS) above its resident memory before the model,
    measured in a fresh process with big buffers returned. That is PyTorch's own setup and, with
    `compress`, the CPU kernels' (numba). None where it can't be measured (not Linux, or the child
    failed). The kernels load before that reading, as a training run loads them (their memory is in
    its process_before_model)."""
    import subprocess

    command = [sys.executable, "-c", _SETUP_SCRIPT, optimizer, "4" if compress else "0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, check=True)
        value = int(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return value if value >= 0 else None
