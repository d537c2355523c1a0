"""One training step, the only one: what trains, what is benchmarked and what is planned run through it.

`train_step` runs the forward under autocast and the meter's hooks (`saved_activations`: what
autograd saves is compressed and counted), the loss outside the hooks, zero_grad, backward and,
given an optimizer, the update (with a GradScaler for fp16 on CUDA). With `check_finite` it reads
the loss, the gradient norm and the correct count in one host sync and refuses to update with a
non-finite loss or gradient.
"""
from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import PRECISIONS
from ..memory.meter import ActivationMeter, saved_activations

PRECISION_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
BACKWARD_MARK = "facto.engine.step.backward"  # the profiler's name for a step's backward


def autocast(device: torch.device | str, precision: str) -> AbstractContextManager:
    """torch.autocast for bf16/fp16 on the device's type, a no-op context for fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not allowed: choose one of {', '.join(PRECISIONS)}")
    dtype = PRECISION_DTYPES[precision]
    return nullcontext() if dtype is None else torch.autocast(torch.device(device).type, dtype=dtype)


class NonFiniteError(ArithmeticError):
    """A step produced a non-finite loss or gradient."""


@dataclass
class StepOutput:
    """What one step measured. The numbers are read (one host sync) only with `check_finite`."""

    meter: ActivationMeter  # what the forward stored for backward
    loss: float | None = None
    correct: int | None = None  # samples whose top score is their label
    grad_norm: float | None = None
    skipped: bool = False  # fp16: the scaler skipped a non-finite update and lowered its scale


def forward_loss(model: nn.Module, x: Tensor, y: Tensor, bits: int | None = None, block: int = 64,
                 precision: str = "fp32", generator: torch.Generator | None = None
                 ) -> tuple[Tensor, Tensor, ActivationMeter]:
    """(loss, logits, meter) of one training-mode forward under autocast and the meter's hooks.

    The loss is outside the hooks: its saved softmax is the model's output, not an activation map,
    and compressing it would bend every gradient.
    """
    model.train()
    with autocast(x.device, precision):
        with saved_activations(bits, block, model=model, generator=generator) as meter:
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
    return loss, out, meter


def train_step(model: nn.Module, x: Tensor, y: Tensor, *, bits: int | None = None, block: int = 64,
               precision: str = "fp32", optimizer: torch.optim.Optimizer | None = None,
               scaler: torch.amp.GradScaler | None = None, generator: torch.Generator | None = None,
               check_finite: bool = False, before_backward: Callable[[], None] | None = None) -> StepOutput:
    """One training step of `model` on the batch (x, y).

    Args:
        bits, block: how the saved maps are stored (see `saved_activations`).
        precision: fp32, or bf16/fp16 autocast.
        optimizer: updated after backward; None leaves the gradients in place (a measurement).
        scaler: fp16's GradScaler (the loss is scaled, the gradients unscaled before the update).
        generator: the stochastic rounding's random source.
        check_finite: read loss, gradient norm and correct count (one host sync); a non-finite loss
            or gradient raises NonFiniteError with the gradients cleared and the weights untouched
            (with a scaler: the update is skipped and the scale lowered instead).
        before_backward: called after zero_grad, just before backward (a measurement's hook).

    Backward runs inside `torch.profiler.record_function(BACKWARD_MARK)`.
    """
    loss, out, meter = forward_loss(model, x, y, bits, block, precision, generator)
    zero_grad = optimizer.zero_grad if optimizer is not None else model.zero_grad
    zero_grad(set_to_none=True)
    if before_backward is not None:
        before_backward()
    with torch.profiler.record_function(BACKWARD_MARK):
        (scaler.scale(loss) if scaler is not None else loss).backward()
    result = StepOutput(meter)
    if scaler is not None and optimizer is not None:
        scaler.unscale_(optimizer)
    if check_finite:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else loss.new_zeros(())
        correct = (out.detach().argmax(1) == y).sum()
        loss_value, norm_value, correct_value = torch.stack(
            [loss.detach().float(), norm.float(), correct.float()]).tolist()  # the step's one sync
        result.loss, result.grad_norm, result.correct = loss_value, norm_value, int(correct_value)
        if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
            zero_grad(set_to_none=True)
            if scaler is None:
                raise NonFiniteError(f"non-finite {'loss' if not math.isfinite(loss_value) else 'gradient'}")
            scaler.update()
            result.skipped = True
            return result
    if optimizer is not None:
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
    return result
