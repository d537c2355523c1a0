"""`saved_activations()`: compress what autograd saves for backward, and count it honestly.

One `saved_tensors_hooks` pair does both jobs (only the innermost pair applies, so two
nested context managers could not). Rules:
- what is counted is the memory really held: every storage behind a stored object, whole
  (a view keeps its whole base alive), once per forward;
- each stored object is counted once: a tensor saved by two ops is packed once and the
  second op gets the same packed copy; the cache is keyed on a live weak reference to the
  original, never on its address alone (a freed address is reused by later tensors);
- parameters and buffers are never compressed nor counted;
- floating tensors are quantized to `bits`; integer tensors are narrowed losslessly, bool
  tensors bit-packed losslessly.
"""
from __future__ import annotations

import sys
import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from ..compress import compress, container_name, validate_block
from ..config import validate_bits


@dataclass
class SavedRecord:
    """One object held for backward."""

    module: str
    shape: tuple[int, ...]
    dtype: str
    raw_bytes: int
    stored_bytes: int
    stored_as: str  # "tensor" | "Packed" | "HalfPacked" | "PackedMask" | "NarrowInt" (inside a Relaid too)


@dataclass
class ActivationMeter:
    """What one forward pass left for backward: stored bytes, raw bytes, per module.

    `by_module` keys are the names of the innermost module running when autograd saved the
    tensor; what the model's own `forward` saves (functional calls such as `F.relu`) counts
    under "<model>", and with no `model` given everything counts under "".
    """

    bits: int | None = None
    block: int = 64
    bytes: int = 0
    raw_bytes: int = 0
    by_module: dict[str, int] = field(default_factory=dict)
    raw_by_module: dict[str, int] = field(default_factory=dict)
    records: list[SavedRecord] = field(default_factory=list)
    peak_cuda: int | None = None

    @property
    def saving(self) -> float:
        """Fraction of raw bytes not stored (0 when nothing was saved)."""
        return 1.0 - self.bytes / self.raw_bytes if self.raw_bytes else 0.0

    def add(self, record: SavedRecord) -> None:
        self.records.append(record)
        self.bytes += record.stored_bytes
        self.raw_bytes += record.raw_bytes
        self.by_module[record.module] = self.by_module.get(record.module, 0) + record.stored_bytes
        self.raw_by_module[record.module] = self.raw_by_module.get(record.module, 0) + record.raw_bytes


def _storage_key(x: Tensor) -> tuple:
    return (x.device, x.untyped_storage().data_ptr())


def _view_key(x: Tensor) -> tuple:
    return (*_storage_key(x), x.storage_offset(), tuple(x.shape), tuple(x.stride()), x.dtype)


class _Packer:
    """The pack/unpack pair plus its per-forward cache and the module stack."""

    def __init__(self, meter: ActivationMeter, stochastic: bool, min_numel: int,
                 model: nn.Module | None, generator: torch.Generator | None = None):
        self.meter, self.stochastic, self.min_numel = meter, stochastic, min_numel
        self.generator = generator
        self.excluded = set()
        self.has_model = model is not None
        if model is not None:
            for t in [*model.parameters(), *model.buffers()]:
                self.excluded.add(_storage_key(t))
        self.views: dict[tuple, tuple[weakref.ref, object]] = {}
        self.storages: dict[tuple, weakref.ref] = {}
        self.stack: list[str] = []

    def is_parameter(self, x: Tensor) -> bool:
        if _storage_key(x) in self.excluded:
            return True
        if self.has_model:
            return False
        base = x._base if x._base is not None else x  # no model given: recognise parameters
        return isinstance(base, nn.Parameter) or (base.is_leaf and base.requires_grad)

    def pack(self, x: Tensor):
        if self.is_parameter(x):
            return x
        key = _view_key(x)
        hit = self.views.get(key)
        if hit is not None and hit[0]() is x:
            return hit[1]  # the same tensor saved by a second op: stored (and counted) once
        stored = self.store(x)
        self.views[key] = (weakref.ref(x), stored)
        kept_as_is = isinstance(stored, Tensor)
        held = (stored,) if kept_as_is else stored.tensors()
        stored_bytes = self.count_new_storages(held)
        # raw: what dense fp32 training would hold for this tensor (its storage, once)
        raw = stored_bytes if kept_as_is else x.numel() * x.element_size()
        module = self.stack[-1] if self.stack else ""
        self.meter.add(SavedRecord(module, tuple(x.shape), str(x.dtype).replace("torch.", ""),
                                   raw, stored_bytes, container_name(stored)))
        return stored

    def count_new_storages(self, tensors) -> int:
        """Bytes of the storages behind `tensors` not counted yet in this forward (each storage once).

        Whole storages are counted, so a view that keeps a larger buffer alive is counted
        at what it really holds. A storage is remembered with a weak reference: once freed,
        its address may be reused by another tensor, which is then counted anew.
        """
        total = 0
        for t in tensors:
            skey = _storage_key(t)
            ref = self.storages.get(skey)
            if ref is not None and ref() is not None:
                continue
            self.storages[skey] = weakref.ref(t)
            total += t.untyped_storage().nbytes()
        return total

    def store(self, x: Tensor):
        """The object to hold for backward: `x` detached when kept as is (its storage, without its
        autograd history: an op's output saved as itself would hold its own node, a cycle that keeps
        a forward's maps alive when no backward follows), else a compressed container."""
        if x.is_complex() or (x.is_floating_point() and (
                self.meter.bits is None or x.dim() < 2 or x.numel() < self.min_numel)):
            return x.detach()
        generator = self.generator
        if generator is not None and generator.device.type != x.device.type:
            generator = None  # a generator draws on its own device only
        return compress(x.detach(), self.meter.bits, self.meter.block, self.stochastic, generator=generator)

    def hold(self, x: Tensor) -> None:
        """Count a tensor kept alive outside autograd's saved tensors (e.g. a checkpoint input)."""
        if self.is_parameter(x):
            return
        size = self.count_new_storages((x,))
        if size:
            module = self.stack[-1] if self.stack else ""
            self.meter.add(SavedRecord(module, tuple(x.shape), str(x.dtype).replace("torch.", ""),
                                       size, size, "held"))

    @staticmethod
    def unpack(stored):
        return stored if isinstance(stored, Tensor) else stored.restore()

    def enter_module(self, name: str):
        def hook(module, args):
            self.stack.append(name)
        return hook

    def leave_module(self, module, args, output):
        if self.stack:
            self.stack.pop()


_ACTIVE: ContextVar[_Packer | None] = ContextVar("facto_active_packer", default=None)


def hold(x: Tensor) -> None:
    """Inside `saved_activations`: count `x` as kept for backward by other means (checkpointing)."""
    packer = _ACTIVE.get()
    if packer is not None:
        packer.hold(x)


def _check_kinds(stochastic: object, model: object, min_numel: object, generator: object) -> None:
    """ValueError naming the first argument of saved_activations that has the wrong kind."""
    if not isinstance(stochastic, bool):
        raise ValueError(f"stochastic={stochastic!r} is not allowed: use True or False")
    if model is not None and not isinstance(model, nn.Module):
        raise ValueError(f"model={type(model).__name__} is not allowed: use None or a torch.nn.Module")
    if isinstance(min_numel, bool) or not isinstance(min_numel, int) or min_numel < 0:
        raise ValueError(f"min_numel={min_numel!r} is not allowed: use an integer >= 0")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator={generator!r} is not allowed: use None or a torch.Generator")


@contextmanager
def saved_activations(bits: int | None = None, block: int = 64, stochastic: bool = True,
                      model: nn.Module | None = None, min_numel: int = 256,
                      generator: torch.Generator | None = None) -> Iterator[ActivationMeter]:
    """Compress and count every tensor autograd saves inside the block; yields the meter.

    Args:
        bits: None (keep as is, count only), 1..8 (block-wise quantization), 16 (half).
        block: values per quantization block (min and scale are stored per block).
        stochastic: stochastic rounding (unbiased gradients) instead of round-to-nearest.
        model: excludes its parameters/buffers by storage and fills `meter.by_module`.
        min_numel: floating tensors smaller than this (or 1-D, e.g. BatchNorm statistics)
            are kept exact.
        generator: the stochastic rounding's random source (a run owns one, so other
            threads using torch's global generator don't change its draws).
    """
    validate_bits(bits)
    validate_block(block)
    _check_kinds(stochastic, model, min_numel, generator)
    meter = ActivationMeter(bits=bits, block=block)
    packer = _Packer(meter, stochastic, min_numel, model, generator)
    handles = []
    if model is not None:
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(packer.enter_module(name or "<model>")))
            handles.append(module.register_forward_hook(packer.leave_module))
    cuda = torch.cuda.is_available() and _on_cuda(model)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    token = _ACTIVE.set(packer)
    try:
        with torch.autograd.graph.saved_tensors_hooks(*_outside_compiled_graphs(packer.pack, packer.unpack)):
            yield meter
    finally:
        _ACTIVE.reset(token)
        for h in handles:
            h.remove()
        packer.views.clear()
        packer.storages.clear()
        if cuda:
            meter.peak_cuda = torch.cuda.max_memory_allocated()


def _outside_compiled_graphs(*hooks: Callable) -> tuple[Callable, ...]:
    """The hooks are bookkeeping in Python: torch.compile leaves them out of its graphs (it would
    otherwise compile them anew for each kind of tensor, up to its limit). Only where torch.compile
    has been called (it loads torch._dynamo): marking them loads the compiler, seconds of start-up."""
    if "torch._dynamo" not in sys.modules:
        return hooks
    return tuple(torch.compiler.disable(h) for h in hooks)


def _on_cuda(model: nn.Module | None) -> bool:
    if model is None:
        return True
    p = next(iter(model.parameters()), None)
    return p is not None and p.is_cuda


def measure_activations(model: nn.Module, x: Tensor, bits: int | None = None, block: int = 64,
                        stochastic: bool = True) -> ActivationMeter:
    """One training-mode forward of `x` under `saved_activations`; returns the meter."""
    was_training = model.training
    model.train()
    try:
        with torch.enable_grad(), saved_activations(bits, block, stochastic, model=model) as meter:
            out = model(x)
        del out
    finally:
        model.train(was_training)
    return meter
