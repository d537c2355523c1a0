"""Swapping one submodule of a model for another, by its dotted name."""
from __future__ import annotations

from torch import nn


def aliases(root: nn.Module, module: nn.Module) -> list[str]:
    """Every dotted name under which `module` is registered in `root` (one, unless it is shared)."""
    return [n for n, m in root.named_modules(remove_duplicate=False) if m is module and n]


def replace_module(root: nn.Module, name: str, new: nn.Module, names: list[str] | None = None) -> None:
    """Put `new` where `root.get_submodule(name)` was (name like 'layer1.0.conv1'), under every
    name that module goes by: a layer registered twice (shared weights) stays one layer.
    `names`: those names, when the caller has them already (from `aliases`)."""
    for alias in names or aliases(root, root.get_submodule(name)) or [name]:
        parent_name, _, child = alias.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        setattr(parent, child, new)
