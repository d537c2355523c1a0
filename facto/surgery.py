"""Swapping one submodule of a model for another, by its dotted name."""
from __future__ import annotations

from torch import nn


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where `root.get_submodule(name)` was (name like 'layer1.0.conv1')."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
