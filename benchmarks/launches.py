"""Kernel launches per training step on the CUDA path, counted without a GPU.

    python benchmarks/launches.py [--models resnet20,tv:resnet18] [--batch 2]

One training step (forward, backward, SGD with momentum) of each variant runs on the CPU with the
Triton kernels active under Triton's interpreter (this script sets TRITON_INTERPRET=1 before triton
loads), so the same code path as on CUDA decides what runs. Counted, per step:

- every PyTorch operator that would launch a GPU kernel (seen by a TorchDispatchMode; views,
  allocations and detach launch nothing and are left out; a foreach operator counts once),
- every Triton kernel launch,
- the host reads of a tensor value (`item`, `bool`: a sync on CUDA).

Host-side work inside the Triton launchers (their output allocations, a seed drawn on the CPU, a
cap rounded on the CPU) is not counted: on CUDA it launches nothing. On a GPU, `facto gpu-bench`
counts the real launches with the profiler (cuDNN may launch more than one kernel for one
convolution). Prints a markdown table.
"""
from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (by facto.compress.kernels)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from facto.compress import kernels  # noqa: E402
from facto.engine.build import fresh_model  # noqa: E402
from facto.engine.gpu_bench import VARIANTS  # noqa: E402
from facto.engine.step import train_step  # noqa: E402

NO_KERNEL = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "detach", "alias",
             "lift_fresh", "set_", "_local_scalar_dense", "is_nonzero", "sym_size", "sym_stride"}
LAUNCHERS = ("kernel_seed", "quantize_pack", "unpack_dequantize", "clamp_with_mask", "masked_grad", "pack_mask",
             "unpack_mask")
SHAPES = {"resnet20": (1, 32, 32), "simple_cnn": (1, 32, 32), "tv:resnet18": (3, 64, 64)}


class LaunchCount(TorchDispatchMode):
    """Counts operators that would launch a GPU kernel, and host reads of tensor values."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in ("_local_scalar_dense", "is_nonzero"):
            self.reads += 1
        elif not (func.is_view or name in NO_KERNEL):
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


class _Counted:
    """A Triton kernel whose launches are counted; the launch runs outside the operator count."""

    def __init__(self, jit, name: str, counter: Counter) -> None:
        self.jit, self.name, self.counter = jit, name, counter

    def __getitem__(self, grid):
        launch = self.jit[grid]

        def run(*args, **kwargs):
            self.counter[self.name] += 1
            with _disable_current_modes():
                return launch(*args, **kwargs)
        return run


@contextlib.contextmanager
def triton_launches(counter: Counter):
    """Count each Triton kernel launch (facto.compress.kernels.KERNELS) while inside."""
    originals = {name: getattr(kernels, name) for name in kernels.KERNELS}
    for name, jit in originals.items():
        setattr(kernels, name, _Counted(jit, name, counter))
    try:
        yield
    finally:
        for name, jit in originals.items():
            setattr(kernels, name, jit)


def host_side(fn):
    """fn run outside the count (host work of a launcher: a seed drawn on the CPU)."""
    def run(*args, **kwargs):
        with _disable_current_modes():
            return fn(*args, **kwargs)
    return run


def count_step(model: torch.nn.Module, x, y, variant) -> tuple[int, int, int]:
    """(operators, Triton launches, host reads) of one training step, after a warm-up step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train_step(model, x, y, bits=variant.bits, precision=variant.precision, optimizer=opt)
    launches: Counter[str] = Counter()
    with triton_launches(launches), LaunchCount() as mode:
        train_step(model, x, y, bits=variant.bits, precision=variant.precision, optimizer=opt)
    return sum(mode.ops.values()), sum(launches.values()), mode.reads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,tv:resnet18", help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--batch", type=int, default=2, help="batch size (launch counts do not depend on it)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # numpy, inside the interpreter
    if not kernels.available("cpu"):
        print("The Triton kernels do not run under the interpreter here (is triton installed?)")
        return 1
    for name in LAUNCHERS:  # their allocations and host-side values launch nothing on CUDA
        setattr(kernels, name, host_side(getattr(kernels, name)))
    print(f"Machine: {platform.machine()}, torch {torch.__version__}, Triton interpreter on the CPU\n")
    print("| model | variant | operators | Triton launches | launches per step | vs dense | host reads |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        shape = SHAPES[name]
        torch.manual_seed(0)
        dense = fresh_model(name, 10, shape[0])
        x, y = torch.randn(args.batch, *shape), torch.randint(0, 10, (args.batch,))
        base = None
        for variant in [v for v in VARIANTS if v.precision == "fp32"]:
            ops, triton, reads = count_step(variant.build(dense), x, y, variant)
            total = ops + triton
            base = base or total
            print(f"| {name} | {variant.name} | {ops} | {triton} | {total} | {total / base:.2f}x | {reads} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
