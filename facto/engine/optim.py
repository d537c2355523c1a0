"""Optimizers and learning-rate schedules by name (the names are facto.config's OPTIMIZERS and SCHEDULES).

The optimizers are torch.optim's Adam, AdamW and SGD, with the same update, stepped without the
guards torch.optim puts around it for torch.compile: those guards import torch._dynamo on an
optimizer's construction and first step, about 150 MB of resident memory for a process that never
compiles. A run's steps are not compiled, so the guards have nothing to do there.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..config import RunConfig


@dataclass(frozen=True)
class OptimizerSpec:
    """How an optimizer is made, and what it keeps (for memory planning)."""

    make: Callable[[list, float, float], torch.optim.Optimizer]  # (params, lr, weight_decay)
    state_per_weight: int  # values it keeps per trained weight (momentum, Adam's two moments)


def _unguarded(method: Callable) -> Callable:
    """The function inside a torch.optim method's wrappers (its torch.compile guard, and the profiler
    hook torch.optim adds to a class's step): the method itself where this PyTorch wraps nothing."""
    return inspect.unwrap(method)


class _Eager:
    """Mixin for a torch.optim optimizer: the same methods, called without the torch.compile guards
    (`torch._disable_dynamo`, `_use_grad_for_differentiable`) that import torch._dynamo."""

    def add_param_group(self, param_group: dict) -> None:
        _unguarded(torch.optim.Optimizer.add_param_group)(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        _unguarded(torch.optim.Optimizer.zero_grad)(self, set_to_none)

    def step(self, closure: Callable | None = None):
        step = _unguarded(super().step)  # the optimizer's own update, as its guard calls it
        with torch.no_grad():  # the guard's grad mode for a non-differentiable optimizer
            return step(self, closure)


class EagerAdam(_Eager, torch.optim.Adam):
    """torch.optim.Adam stepped without importing torch._dynamo."""


class EagerAdamW(_Eager, torch.optim.AdamW):
    """torch.optim.AdamW stepped without importing torch._dynamo."""


class EagerSGD(_Eager, torch.optim.SGD):
    """torch.optim.SGD stepped without importing torch._dynamo."""


OPTIMIZER_SPECS: dict[str, OptimizerSpec] = {
    "adam": OptimizerSpec(lambda p, lr, wd: EagerAdam(p, lr=lr, weight_decay=wd), 2),
    "adamw": OptimizerSpec(lambda p, lr, wd: EagerAdamW(p, lr=lr, weight_decay=wd), 2),
    "sgd": OptimizerSpec(lambda p, lr, wd: EagerSGD(p, lr=lr, momentum=0.9, weight_decay=wd, nesterov=True), 1),
}


def _one_cycle(opt, lr: float, total: int):
    if total < 8:  # shorter: OneCycleLR has no room to warm up
        return _cosine(opt, lr, total)
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.25)


def _cosine(opt, lr: float, total: int):
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total, 1))


def _constant(opt, lr: float, total: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


SCHEDULE_MAKERS: dict[str, Callable] = {"onecycle": _one_cycle, "cosine": _cosine, "constant": _constant}


def make_optimizer(config: RunConfig, model: nn.Module, total_steps: int):
    """The config's optimizer over the model's parameters (frozen factors get no gradient, so they
    never move) and its learning-rate schedule."""
    opt = OPTIMIZER_SPECS[config.optimizer].make(list(model.parameters()), config.lr, config.weight_decay)
    return opt, SCHEDULE_MAKERS[config.schedule](opt, config.lr, total_steps)
