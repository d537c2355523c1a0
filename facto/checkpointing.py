"""Activation checkpointing as a baseline method: each stage keeps only its input."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .activations import hold


class Checkpointed(nn.Module):
    """Runs `module` under torch.utils.checkpoint (non-reentrant); only its input is kept."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        if not (torch.is_grad_enabled() and self.training):
            return self.module(x)
        hold(x)  # checkpoint keeps the segment input alive: count it
        return checkpoint(self.module, x, use_reentrant=False)


def with_checkpointing(model: nn.Module, segments: int = 3) -> nn.Module:
    """A copy with each stage checkpointed: top-level Sequentials of blocks as a whole,
    a flat Sequential of layers (e.g. `features`) split into `segments` pieces at pooling layers."""
    new = copy.deepcopy(model)
    for name, child in list(new.named_children()):
        if not isinstance(child, nn.Sequential) or not any(True for _ in child.parameters()):
            continue
        flat = all(not isinstance(c, nn.Sequential) and len(list(c.children())) == 0 for c in child)
        if flat:
            setattr(new, name, nn.Sequential(*[Checkpointed(s) for s in _split(child, segments)]))
        else:
            setattr(new, name, Checkpointed(child))
    return new


def _split(seq: nn.Sequential, segments: int) -> list[nn.Sequential]:
    """Split at pooling layers when there are some, else into equal pieces."""
    cuts = [i for i, m in enumerate(seq) if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))]
    bounds = [0, *cuts, len(seq)] if cuts else [round(i * len(seq) / segments) for i in range(segments + 1)]
    return [nn.Sequential(*list(seq)[a:b]) for a, b in zip(bounds, bounds[1:]) if b > a]
