"""The memory of one training step: what a forward stores and what is alive at its peak, modelled and measured.

The model: `trace_forward` runs one training-mode forward under Facto's meter (`saved_activations`)
and cuts it into units (leaf-module calls, and the functional ops a parent runs between its
children) with the meter's records: what each unit stored, and which maps were still referenced
when it returned (observed with weak references, not guessed). `peak_candidates` adds up the
activation bytes alive at each unit's forward and backward; the largest is `activation_peak`.
- Forward: what the unit and earlier ones stored, the maps still alive, full-width maps it
  compressed and the quantization / bit-packing work buffers (or, for a conv on PyTorch's slow CPU
  path, its im2col buffer, freed before the quantization starts).
- Backward runs the units in reverse while everything stored up to the unit is still held: its
  gradient maps (output, input, a residual block's held input gradient), its restored maps and
  their unpacking buffers, and for fused conv+BN the recomputed BN input, its gradient and BN's
  work (a fused unit restores first and frees the restore's buffers before it recomputes). Buffer
  sizes are read off facto.compress / method.layers / method.recompute (the *_WORK / RECOMPUTE_*
  constants) and PyTorch's slow_conv2d (`slow_conv_columns`).

The measurement: `measure_step_peak` runs a real step (`facto.engine.step.train_step`: forward,
zero_grad, backward) and reports its true peak: on the CPU from the profiler's allocation events,
on CUDA from max_memory_allocated. `predict_step_peak` is the model's answer (gradients plus the
activation peak); tests hold it within `TOLERANCE` of the CPU measurement (simple_cnn, resnet20:
dense, compression only, Facto). facto.memory.plan turns two traces into memory as a function of the batch.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ..engine.build import probing
from ..compress.backend import kernels_for
from ..engine.step import BACKWARD_MARK, PRECISION_DTYPES, autocast, train_step
from ..method.layers import MaskReLU, numeric_padding
from ..method.recompute import BN_SLICES, ConvBN, FactoConvBN
from .meter import SavedRecord, saved_activations

TOLERANCE = 0.10  # |model - profiler| / profiler on the CPU step peak (activations + gradients)


# ----------------------------------------------------------------------------- one forward, unit by unit

@dataclass
class Unit:
    """One leaf-module call (or the functional ops a parent runs between its children), in forward order.

    Byte counts are at the traced batch; facto.memory.plan.profile_variant turns two traces into per-batch lines.
    """

    name: str
    kind: str
    in_bytes: int = 0  # the input map (first tensor argument)
    out_bytes: int = 0  # the output map
    out_values: int = 0  # ... its number of values
    in_grad: bool = False  # a gradient map flows back into the input
    live: int = 0  # maps still referenced when the unit returns (its input and output, the block's
    #                input, locals of the enclosing forward), storages not stored as is, each once
    held_grad: int = 0  # backward: the enclosing block's input gradient, waiting for its other branch
    stored: int = 0  # bytes its records keep for backward
    quantized_values: int = 0  # values held at b bits (quantized in forward, restored in backward)
    widened_values: int = 0  # ... of them 16-bit, which quantization handles in fp32 (a wider copy)
    restored_bytes: int = 0  # full-width bytes its compressed records are restored to in backward
    inner_bytes: int = 0  # full-width saved maps that are neither its input nor its output
    mask_values: int = 0  # values behind 1-bit ReLU masks
    columns: int = 0  # a plain conv on PyTorch's slow CPU path: its im2col buffer (forward and backward)


CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
FUSED_KINDS = (FactoConvBN.__name__, ConvBN.__name__)  # units are told apart by their exact type
MASK_KINDS = (MaskReLU.__name__,)
CONV_KINDS = (nn.Conv2d.__name__,)


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype a conv computes `x` in: autocast's (CPU) for a float32 input under autocast, else x's."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return x.dtype


def slow_conv_columns(conv: nn.Module, x: Tensor | None, out: Tensor | None) -> int:
    """Bytes of the im2col buffer PyTorch's slow CPU convolution (slow_conv2d) allocates in forward, and
    again for the input gradient in backward: (C_in / groups) x kh x kw values per output position and
    sample. It serves a 2-D conv on the CPU when oneDNN does not take the dtype: 16-bit maps on a CPU
    without oneDNN's bf16/fp16 support (no AVX-512 BF16/FP16 or AMX). 0 elsewhere, and for a 1x1 conv
    with stride 1 and no padding (no columns needed)."""
    if type(conv) is not nn.Conv2d or x is None or out is None or x.device.type != "cpu" or conv.groups != 1:
        return 0
    dtype = _compute_dtype(x)
    if dtype == torch.float32 or dtype == torch.float64:
        return 0
    supported = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}
    check = getattr(torch.ops.mkldnn, supported.get(dtype, ""), None)
    if torch.backends.mkldnn.is_available() and check is not None and check():
        return 0
    kh, kw = conv.kernel_size
    if (kh, kw) == (1, 1) and tuple(conv.stride) == (1, 1) and tuple(numeric_padding(conv) or (1, 1)) == (0, 0):
        return 0
    positions = out.numel() // conv.out_channels  # samples x H_out x W_out
    return conv.in_channels * kh * kw * positions * torch.empty(0, dtype=dtype).element_size()


def _first_tensor(value) -> Tensor | None:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)):
        return next((v for v in value if isinstance(v, Tensor)), None)
    if isinstance(value, dict):
        return next((v for v in value.values() if isinstance(v, Tensor)), None)
    return None


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.untyped_storage().data_ptr()


def _nbytes(t: Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


@dataclass
class _Frame:
    name: str
    module: nn.Module
    x: Tensor | None
    start: int
    called_child: bool = False
    branches: bool = False  # a direct child took this module's own input: a block with a shortcut


class _Collector:
    """Forward hooks that cut the meter's records into units and watch which maps are still alive.

    Every map seen at a module boundary is remembered by a weak reference, so what is alive
    when a unit returns is observed, not guessed (Python frees a map when its last reference goes).
    """

    def __init__(self, meter) -> None:
        self.meter = meter
        self.stack: list[_Frame] = []
        self.units: list[Unit] = []
        self.cursor = 0  # first record not yet given to a unit
        self.saved_as_is: set[int] = set()  # storages autograd keeps uncompressed (counted in stored)
        self.maps: dict[int, tuple[weakref.ref, int]] = {}  # storage -> (weak ref, storage bytes)

    def pre(self, name: str) -> Callable:
        def hook(module: nn.Module, args) -> None:
            x = _first_tensor(args)
            self._watch(x)
            if self.stack:
                parent = self.stack[-1]
                self._gap(parent.name)
                parent.called_child = True
                if x is not None and parent.x is not None and _ptr(x) == _ptr(parent.x):
                    parent.branches = True
            self.stack.append(_Frame(name, module, x, len(self.meter.records)))
        return hook

    def post(self, module: nn.Module, args, output) -> None:
        frame = self.stack.pop()
        if frame.called_child:
            self._gap(frame.name)
        else:
            self._leaf(frame, _first_tensor(output))

    def _watch(self, t: Tensor | None) -> None:
        if t is not None and t.is_floating_point():
            self.maps[_ptr(t)] = (weakref.ref(t), t.untyped_storage().nbytes())

    def live_bytes(self) -> int:
        """Bytes of the watched maps alive now whose storage autograd does not keep as is."""
        return sum(size for p, (ref, size) in self.maps.items()
                   if ref() is not None and p not in self.saved_as_is)

    def _gap(self, name: str) -> None:
        """Records left by functional ops of `name` since the last unit become a unit of their own."""
        records = self.meter.records[self.cursor:]
        if records:
            unit = Unit(name, "functional")
            self._add_records(unit, records, None, None)
            unit.live = self.live_bytes()
            self.units.append(unit)
        self.cursor = len(self.meter.records)

    def _leaf(self, frame: _Frame, out: Tensor | None) -> None:
        x = frame.x
        unit = Unit(frame.name, type(frame.module).__name__, in_bytes=_nbytes(x), out_bytes=_nbytes(out),
                    out_values=out.numel() if out is not None else 0, in_grad=bool(x is not None and x.requires_grad))
        self._add_records(unit, self.meter.records[frame.start:], x, out)
        self.cursor = len(self.meter.records)
        self._watch(out)
        unit.live = self.live_bytes()
        if _ptr(out) == _ptr(x) and unit.stored == 0:  # identity, view: the gradient passes through
            unit.in_grad = False
        if unit.kind in MASK_KINDS and out is not None:
            unit.mask_values = out.numel()
        unit.columns = slow_conv_columns(frame.module, x, out)
        block = next((f for f in reversed(self.stack[1:])
                      if f.branches and not isinstance(f.module, CONTAINERS)), None)
        if block is not None and block.x is not None and block.x.requires_grad:
            unit.held_grad = _nbytes(block.x)
        self.units.append(unit)

    def _add_records(self, unit: Unit, records: Sequence[SavedRecord], x: Tensor | None,
                     out: Tensor | None) -> None:
        for r in records:
            unit.stored += r.stored_bytes
            same_as = [t for t in (x, out) if t is not None and tuple(t.shape) == r.shape
                       and str(t.dtype).replace("torch.", "") == r.dtype]
            if r.stored_as in ("tensor", "held"):
                self.saved_as_is.update(_ptr(t) for t in same_as)
                continue
            unit.restored_bytes += r.raw_bytes  # Packed, HalfPacked, NarrowInt, PackedMask
            if r.stored_as == "Packed":
                unit.quantized_values += math.prod(r.shape)
                if r.dtype in ("float16", "bfloat16"):
                    unit.widened_values += math.prod(r.shape)
            if not same_as:
                unit.inner_bytes += r.raw_bytes


@dataclass
class Trace:
    """One training-mode forward, unit by unit: what the meter stored and what was alive."""

    units: list[Unit]
    stored: int  # the meter's bytes
    input_live: int  # the model's input batch when autograd does not keep it as is (alive all step)
    fused: bool = False  # facto.compress's kernels served its maps (no work buffers; see Work)
    bn_forward_over_input: bool = False  # fused conv+BN units normalize over their input (CPU, float32)
    bn_backward_over_input: bool = False  # ... and run BatchNorm's backward over it (CPU)


def trace_forward(model: nn.Module, x: Tensor, bits: int | None, block: int = 64,
                  precision: str = "fp32") -> Trace:
    """One training-mode forward of `x` under the meter, cut into units (BN statistics restored after)."""
    handles: list = []  # removed by probing on the way out
    with probing(model, handles), torch.enable_grad(), autocast(x.device, precision), \
            saved_activations(bits, block, model=model) as meter:
        collector = _Collector(meter)
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(collector.pre(name or "<model>")))
            handles.append(module.register_forward_hook(collector.post))
        out = model(x)
        del out  # the graph goes with the output
    input_live = 0 if _ptr(x) in collector.saved_as_is else _nbytes(x)
    compute = PRECISION_DTYPES[precision] or x.dtype
    fused = kernels_for(x.device, compute, block) is not None
    cpu = x.device.type == "cpu"
    return Trace(collector.units, meter.bytes, input_live, fused, cpu and compute == torch.float32, cpu)


# ----------------------------------------------------------------------------- the transient model

@dataclass(frozen=True)
class Work:
    """Work buffers of compression, in bytes per value, read off the code they model (facto.compress,
    facto.method.layers) and checked against the CPU profiler (tests/memory/test_plan.py)."""

    quantize: int  # b-bit quantization in forward
    restore: int  # restore in backward
    widen: int  # a 16-bit map is quantized and restored through an fp32 copy
    mask: int  # 1-bit ReLU mask, forward and backward


# the PyTorch reference: fp32 codes + 16-bit rounding noise; uint8 codes + fp32 codes before the affine;
# bool mask, uint8 copy, bit-packing buffers
REFERENCE_WORK = Work(quantize=6, restore=5, widen=4, mask=5)
# the fused kernels (Numba on the CPU, Triton on CUDA) write codes, restored maps and masks directly; in
# backward about one float32 map beside each restored one is still alive (fitted to the CPU profiler:
# within 2 % on simple_cnn and resnet20, every variant)
FUSED_WORK = Work(quantize=0, restore=4, widen=4, mask=0)
CONV_WORK = 1  # conv backward work buffer (output-sized) seen on the CPU (oneDNN); cuDNN workspace: reserve
# A fused conv+BN runs BatchNorm over its recomputed input on the CPU (facto.method.recompute:
# bn_forward_over_input for float32 maps, bn_backward_over_input for any), out of place elsewhere.
RECOMPUTE_FORWARD = 1  # out of place: BN's input exists until BN has run (output-sized); over it: none
# fused backward out of place, output-sized (calibrated against the CPU profiler before BN ran over its
# input): the recomputed BN input is freed once BN's backward has used it, so beside the incoming
# gradient about one more map (ConvBN: two) is alive
RECOMPUTE_MAPS = {ConvBN.__name__: 2, FactoConvBN.__name__: 1}
RECOMPUTE_INNER = 2  # FactoConvBN: the recomputed inner stage and its gradient (sized like the stored input)


def _over_input_backward(u: Unit) -> int:
    """A fused unit's backward on the CPU, two moments (fitted to the CPU profiler: within 2.5 % on
    simple_cnn and resnet20, batches 8 to 128). BatchNorm's: the incoming gradient, the held one, y
    written over by its gradient, the restored input, FactoConvBN's recomputed inner stage (sized like
    the stored input) and one float32 work slice of y. The stages': the incoming gradient released
    (the stages' backward is a node of its own), y's gradient until the last stage's backward, the
    restored input and, for FactoConvBN, two maps sized like it (ConvBN: its input's gradient)."""
    facto = u.kind == FactoConvBN.__name__
    bn = (2 * u.out_bytes + u.held_grad + u.restored_bytes + (u.restored_bytes if facto else 0)
          + 4 * u.out_values // BN_SLICES)
    stages = u.held_grad + u.out_bytes + u.restored_bytes
    stages += 2 * u.restored_bytes if facto else (u.in_bytes if u.in_grad else 0)
    return max(bn, stages)


def forward_live(u: Unit, work: Work = REFERENCE_WORK, bn_over_input: bool = False) -> int:
    """Bytes alive during unit u's forward beyond what is stored: live maps, compression work
    (`bn_over_input`: a fused unit's BatchNorm writes over its input)."""
    mask = work.mask * u.mask_values
    fused = RECOMPUTE_FORWARD * u.out_bytes if u.kind in FUSED_KINDS and not bn_over_input else 0
    quantize = work.quantize * u.quantized_values + work.widen * u.widened_values
    # the im2col buffer is freed when the conv returns, before autograd saves (and quantizes) its input
    return u.live + u.inner_bytes + max(quantize, u.columns) + mask + fused


def backward_live(u: Unit, work: Work = REFERENCE_WORK, bn_over_input: bool = False) -> int:
    """Bytes alive during unit u's backward beyond what is stored: gradient maps, restored/recomputed maps.

    A fused conv+BN restores its stored input first and frees the restore's work buffers before it
    recomputes and runs its convs' backward (two moments, the larger counts); for the other units the
    restore's work is counted with the compute, as calibrated. `bn_over_input`: its BatchNorm's
    backward writes over the recomputed input (the CPU).
    """
    grads = u.out_bytes + (u.in_bytes if u.in_grad else 0) + u.held_grad
    restore_work = work.restore * u.quantized_values + work.widen * u.widened_values
    mask = work.mask * u.mask_values
    if u.kind in FUSED_KINDS:
        restoring = u.out_bytes + u.held_grad + u.restored_bytes + restore_work
        if bn_over_input:
            return max(restoring, _over_input_backward(u))
        recompute = RECOMPUTE_MAPS[u.kind] * u.out_bytes
        if u.kind == FactoConvBN.__name__:
            recompute += RECOMPUTE_INNER * u.restored_bytes
        return max(restoring, grads + u.restored_bytes + mask + recompute)
    recompute = CONV_WORK * u.out_bytes if u.kind in CONV_KINDS else 0
    # the im2col buffer of a slow CPU conv comes after the restore's work buffers are freed
    return grads + u.restored_bytes + max(restore_work, u.columns) + mask + recompute


def peak_candidates(trace: Trace) -> list[int]:
    """Bytes of activations alive at each unit's forward and backward (the peak is the largest).

    Forward: what the unit and earlier ones stored, plus the unit's live maps and work buffers.
    Backward runs the units in reverse, so everything up to and including the unit is still
    stored when it runs, plus its gradient maps, restored/recomputed maps and the input batch.
    The last value, all stored plus the batch, is the moment backward starts.
    """
    values, stored = [], 0
    work = FUSED_WORK if trace.fused else REFERENCE_WORK
    for u in trace.units:
        stored += u.stored
        values.append(stored + forward_live(u, work, trace.bn_forward_over_input))
        values.append(stored + trace.input_live + backward_live(u, work, trace.bn_backward_over_input))
    values.append(stored + trace.input_live)
    return values


def activation_peak(trace: Trace) -> int:
    """Modelled peak of activation bytes over one forward and backward."""
    return max(peak_candidates(trace))


# ----------------------------------------------------------------------------- measuring a real step

@dataclass
class StepPeak:
    """A measured training step (`facto.engine.step.train_step`: forward, zero_grad(set_to_none), backward).

    `peak` is the most bytes alive at once: the gradients and the input batch alive before the
    step plus the largest rise above that during forward and backward (activations, their
    gradients, work buffers). Weights are not included.
    """

    peak: int
    forward_rise: int  # largest rise above the starting point during forward
    backward_rise: int  # ... during backward
    stored: int  # what the meter counted for the same forward
    gradients: int
    input_bytes: int


def _grad_bytes(model: nn.Module) -> int:
    """Bytes of the gradients the model holds now."""
    return sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)


STEP_MARK = "facto.memory.step_peak.step"


def measure_step_peak_cpu(model: nn.Module, x: Tensor, y: Tensor, bits: int | None, block: int = 64,
                          precision: str = "fp32") -> StepPeak:
    """The true peak of live CPU bytes over one training step, from the profiler's allocation events.

    torch.profiler with `profile_memory=True` records every CPU allocation and free with its size
    (frees of blocks allocated before profiling are not reported, so both steps run inside it);
    their running sum is the live bytes. Two steps from no gradients: the second is measured,
    starting, as in a training loop, with the first step's gradients alive. Changes the model's
    gradients and BN statistics, not its weights.
    """
    from torch.profiler import ProfilerActivity, profile

    if x.device.type != "cpu":
        raise ValueError(f"x is on {x.device}: measure_step_peak_cpu needs CPU tensors (use measure_step_peak)")
    model.train()
    model.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train_step(model, x, y, bits=bits, block=block, precision=precision)
        with torch.profiler.record_function(STEP_MARK):
            meter = train_step(model, x, y, bits=bits, block=block, precision=precision).meter
    events = list(prof.profiler.kineto_results.events())
    step = min(e.start_ns() for e in events if e.name() == STEP_MARK)
    backward = max(e.start_ns() for e in events if e.name() == BACKWARD_MARK)
    memory = sorted((e for e in events
                     if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU),
                    key=lambda e: e.start_ns())
    live, level, rises = 0, None, [0, 0]
    for e in memory:
        if e.start_ns() >= step and level is None:
            level = live
        live += e.nbytes()
        if level is not None:
            phase = int(e.start_ns() >= backward)
            rises[phase] = max(rises[phase], live - level)
    gradients = _grad_bytes(model)
    return StepPeak(gradients + _nbytes(x) + max(rises), rises[0], rises[1], meter.bytes, gradients, _nbytes(x))


def measure_step_peak_cuda(model: nn.Module, x: Tensor, y: Tensor, bits: int | None, block: int = 64,
                           precision: str = "fp32") -> StepPeak:
    """The same measurement on CUDA, from the caching allocator's counters (max_memory_allocated)."""
    if x.device.type != "cuda":
        raise ValueError(f"x is on {x.device}: measure_step_peak_cuda needs CUDA tensors")
    train_step(model, x, y, bits=bits, block=block, precision=precision)
    gradients = _grad_bytes(model)
    torch.cuda.synchronize(x.device)
    start = torch.cuda.memory_allocated(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    forward = []

    def forward_done() -> None:  # after zero_grad, before backward: the forward's peak, then a fresh count
        torch.cuda.synchronize(x.device)
        forward.append(torch.cuda.max_memory_allocated(x.device) - start)
        torch.cuda.reset_peak_memory_stats(x.device)

    meter = train_step(model, x, y, bits=bits, block=block, precision=precision, before_backward=forward_done).meter
    torch.cuda.synchronize(x.device)
    backward = torch.cuda.max_memory_allocated(x.device) - start
    return StepPeak(gradients + _nbytes(x) + max(forward[0], backward), forward[0], backward, meter.bytes,
                    gradients, _nbytes(x))


def measure_step_peak(model: nn.Module, x: Tensor, y: Tensor, bits: int | None, block: int = 64,
                      precision: str = "fp32") -> StepPeak:
    """`measure_step_peak_cpu` or `measure_step_peak_cuda`, by the device of `x`."""
    if x.device.type == "cuda":
        return measure_step_peak_cuda(model, x, y, bits, block, precision)
    return measure_step_peak_cpu(model, x, y, bits, block, precision)


def trainable_bytes(model: nn.Module) -> int:
    """Bytes of the parameters that train (their gradients, and the unit of optimizer state)."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def predict_step_peak(model: nn.Module, x: Tensor, bits: int | None, block: int = 64,
                      precision: str = "fp32") -> int:
    """The model's answer to `measure_step_peak`: gradients + the modelled activation peak at this batch."""
    return trainable_bytes(model) + activation_peak(trace_forward(model, x, bits, block, precision))
