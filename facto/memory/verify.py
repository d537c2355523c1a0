"""Check a plan on a real GPU: the largest batch that trains under the plan's budget, measured.

Each batch is tried by real training steps (`facto.engine.step.train_step` with the plan's optimizer)
under torch.cuda.set_per_process_memory_fraction(budget / total memory); the search starts at the
predicted batch. Raises GPURequiredError where CUDA is absent.
"""
from __future__ import annotations

import copy
import gc
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from ..config import RunConfig
from ..engine.build import fresh_model
from ..engine.optim import make_optimizer
from ..engine.step import train_step
from .plan import PlanResult, PlanRow, largest_fitting, variant_spec


class GPURequiredError(RuntimeError):
    """verify() was asked for where no CUDA device exists."""


def require_gpu() -> None:
    """Raise GPURequiredError unless CUDA is available."""
    if not torch.cuda.is_available():
        raise GPURequiredError("verify needs a GPU: CUDA is not available on this machine "
                               "(the plan itself runs anywhere; run --verify where the GPU is)")


@dataclass
class VerifyRow:
    """Predicted against measured largest batch, and the allocator's peak at the measured one."""

    variant: str
    predicted: int
    measured: int | None  # None when training failed for another reason than memory (see error)
    peak_allocated: int | None  # torch.cuda.max_memory_allocated at the measured batch
    peak_reserved: int | None  # torch.cuda.max_memory_reserved there
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _train_steps(model: nn.Module, bits: int | None, batch: int, input_shape: tuple[int, int, int],
                 num_classes: int, optimizer: str, precision: str, device: torch.device,
                 block: int, steps: int) -> None:
    """`steps` training steps (`facto.engine.step.train_step`) at `batch` (raises on OOM)."""
    config = RunConfig(optimizer=optimizer, schedule="constant")
    opt, _ = make_optimizer(config, model, steps)
    for _ in range(steps):
        x = torch.randn(batch, *input_shape, device=device)
        y = torch.randint(0, num_classes, (batch,), device=device)
        train_step(model, x, y, bits=bits, block=block, precision=precision, optimizer=opt)
        del x, y
    torch.cuda.synchronize(device)


def gpu_fits(build: Callable[[], nn.Module], bits: int | None, batch: int, input_shape: tuple[int, int, int],
             num_classes: int, optimizer: str, precision: str, device: torch.device, block: int = 64,
             steps: int = 2, peaks: dict | None = None) -> bool:
    """True when `steps` real training steps at `batch` run without torch.OutOfMemoryError.

    A fresh model (and optimizer) per try; the cache is emptied after every try, so one
    failure leaves nothing behind. `peaks[batch]` gets (max allocated, max reserved).
    """
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    ok = True
    try:
        model = build().to(device)
        _train_steps(model, bits, batch, input_shape, num_classes, optimizer, precision, device, block, steps)
    except torch.OutOfMemoryError:
        ok = False
    except RuntimeError as exc:  # cuDNN/cuBLAS report a failed workspace allocation in their own words
        if not any(k in str(exc) for k in ("out of memory", "NOT_ENOUGH_MEMORY", "ALLOC_FAILED")):
            raise
        ok = False
    finally:
        model = None  # noqa: F841  (drop the reference before emptying the cache)
    if ok and peaks is not None:
        peaks[batch] = (torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device))
    gc.collect()
    torch.cuda.empty_cache()
    return ok


def verify(result: PlanResult, device: str = "cuda", steps: int = 2, block: int = 64,
           log: Callable[[str], None] | None = None) -> list[VerifyRow]:
    """Measure the real largest batch of each planned variant on this GPU, under the plan's budget.

    The budget is enforced with torch.cuda.set_per_process_memory_fraction(budget / total memory)
    (the caching allocator's limit; the CUDA context is outside it), and each batch is tried by
    `steps` real training steps; the search (`largest_fitting`) starts at the predicted batch.
    Raises GPURequiredError where CUDA is absent.
    """
    require_gpu()
    dev = torch.device(device if str(device).startswith("cuda") else "cuda")
    total = torch.cuda.get_device_properties(dev).total_memory
    if result.budget > total:
        raise ValueError(f"budget={result.budget} bytes is more than this GPU has ({total} bytes): "
                         "verify needs a budget the device can hold")
    say = log or (lambda msg: None)
    dense = fresh_model(result.model, result.num_classes, result.input_shape[0])
    torch.cuda.set_per_process_memory_fraction(result.budget / total, dev)
    try:
        return [_verify_row(result, row, variant_spec(row.variant).build(dense), dev, steps, block, say)
                for row in result.rows]
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, dev)
        gc.collect()
        torch.cuda.empty_cache()


def _verify_row(result: PlanResult, row: PlanRow, template: nn.Module, device: torch.device, steps: int,
                block: int, say: Callable[[str], None]) -> VerifyRow:
    """Search the largest batch of one variant with real steps, starting at the predicted one."""
    spec = variant_spec(row.variant)
    peaks: dict[int, tuple[int, int]] = {}

    def fits(batch: int) -> bool:
        ok = gpu_fits(lambda: copy.deepcopy(template), spec.bits, batch, result.input_shape,
                      result.num_classes, result.optimizer, result.precision, device, block, steps, peaks)
        say(f"verify {spec.name}: batch {batch} {'fits' if ok else 'out of memory'}")
        return ok

    try:
        measured = largest_fitting(fits, hint=max(row.max_batch, 1))
    except RuntimeError as exc:  # not a memory error (e.g. an op that fails under autocast): report it
        message = str(exc).splitlines()[0]
        say(f"verify {spec.name}: {message}")
        return VerifyRow(spec.name, row.max_batch, None, None, None, message)
    allocated, reserved = peaks.get(measured, (None, None))
    return VerifyRow(spec.name, row.max_batch, measured, allocated, reserved)
