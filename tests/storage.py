"""An independent count of what a stored container holds: every tensor reachable from its fields,
each storage once and whole. Shares no code with facto's `nbytes` or the meter."""
from __future__ import annotations

import dataclasses

import torch


def reachable_bytes(obj: object) -> int:
    """Bytes of the storages behind every tensor reachable from `obj` (a tensor, or a dataclass whose
    fields hold tensors or such dataclasses), each storage counted once and whole."""
    seen: dict[tuple, int] = {}

    def visit(value: object) -> None:
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            seen[(value.device, storage.data_ptr())] = storage.nbytes()
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                visit(getattr(value, f.name))
        elif isinstance(value, (tuple, list)):
            for item in value:
                visit(item)

    visit(obj)
    return sum(seen.values())
