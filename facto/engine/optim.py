"""Optimizers and learning-rate schedules by name (the names are facto.config's OPTIMIZERS and SCHEDULES)."""
from __future__ import annotations

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


OPTIMIZER_SPECS: dict[str, OptimizerSpec] = {
    "adam": OptimizerSpec(lambda p, lr, wd: torch.optim.Adam(p, lr=lr, weight_decay=wd), 2),
    "adamw": OptimizerSpec(lambda p, lr, wd: torch.optim.AdamW(p, lr=lr, weight_decay=wd), 2),
    "sgd": OptimizerSpec(lambda p, lr, wd: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=wd,
                                                           nesterov=True), 1),
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
