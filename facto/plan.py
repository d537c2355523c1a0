"""Fit my GPU: the largest batch that trains under a memory budget, for each training variant.

`plan(...)` answers, before renting a GPU, "how large a batch fits in N GB?" for dense fp32,
compression only (ActNN-style: 1-bit ReLU masks + b-bit maps) and the Facto presets, with a
breakdown in bytes; `main` is the command line (`python -m facto.plan`, to become `facto plan`).

Measured, modelled, assumed:
- Stored activations are MEASURED by Facto's meter (`saved_activations`, the meter behind
  `measure_activations`) at batches 2 and 4 on whatever device is present: a per-batch constant
  (BN statistics, 16-bit weight copies under autocast) plus a per-sample slope.
- Transients, the peak above the stored bytes, are MODELLED unit by unit from that same forward by
  facto.steppeak (held within its `TOLERANCE` of the CPU profiler); `verify` measures on a GPU.
- Weights (parameters and buffers), gradients (trainable parameters only) and optimizer state
  (SGD momentum: 1 value per trained parameter, Adam/AdamW: 2) are counted; a fixed reserve
  (`DEFAULT_RESERVE`) stands for the caching allocator's rounding and fragmentation and the
  cuDNN/cuBLAS workspaces, which nothing on a CPU can see.

No UI code: `table_rows` and `chart_data` return plain data that other modules draw.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

import torch
import torchvision
from torch import nn

from .build import Recipe, seeded
from .config import OPTIMIZER_SPECS, PRECISION_DTYPES, PRESETS, RunConfig
from .models import check_model_name, create_model, replace_first_conv
from .steppeak import TOLERANCE, forward_loss, peak_candidates, trace_forward, trainable_bytes
from .train import make_optimizer, resolve_device
from .usage import OneLineParser, UsageError

GiB, MiB, GB, MB = 2**30, 2**20, 10**9, 10**6

OPTIMIZER_SLOTS = {name: spec.state_per_weight for name, spec in OPTIMIZER_SPECS.items()}
PRECISIONS = PRECISION_DTYPES
DEFAULT_VARIANTS = ("dense", "compress-4", "paper", "balanced", "max-saving")
DEFAULT_RESERVE = 256 * MiB
PROBE_BATCHES = (2, 4)
MAX_BATCH = 2**20


# ----------------------------------------------------------------------------- user input

_UNITS = {"": 1, "b": 1,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
          "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
BUDGET_HELP = ("a number and a unit: B, KB/MB/GB/TB (powers of 1000), KiB/MiB/GiB/TiB or k/m/g/t "
               "(powers of 1024), e.g. 8GB, '8 GiB', 500MB, 4g")


def parse_budget(value: str | int | float, name: str = "budget") -> int:
    """Bytes from '8GB' (10^9), '8 GiB' (2^30), '500MB', '4g' (2^30, as docker and `free -g`), or a number of bytes."""
    bad = ValueError(f"{name}={value!r} is not allowed: use {BUDGET_HELP}")
    if isinstance(value, bool):
        raise bad
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        if match is None or match.group(2).lower() not in _UNITS:
            raise bad
        number, unit = float(match.group(1)), match.group(2).lower()
    else:
        raise bad
    if not math.isfinite(number) or number <= 0:
        raise bad
    size = int(number * _UNITS[unit])
    if size < 1:
        raise bad
    return size


def parse_input_shape(value: str | Sequence[int]) -> tuple[int, int, int]:
    """(C, H, W) from '3x224x224' (also '3,224,224', '3 x 224 x 224') or a sequence of three ints."""
    bad = ValueError(f"input={value!r} is not allowed: use C x H x W, three integers >= 1, e.g. 3x224x224")
    if isinstance(value, str):
        parts = [p for p in re.split(r"[x×X,\s]+", value.strip().strip("()[]")) if p]
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise bad
        shape = tuple(int(p) for p in parts)
    elif isinstance(value, Sequence) and len(value) == 3 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        shape = tuple(value)
    else:
        raise bad
    if min(shape) < 1:
        raise bad
    return shape  # type: ignore[return-value]


def _check_choice(name: str, value: object, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed: choose one of {', '.join(allowed)}")
    return value  # type: ignore[return-value]


# ----------------------------------------------------------------------------- variants

VariantSpec = Recipe  # a planned variant: name (dense | compress-<bits> | a preset), label, method, bits


VARIANT_HELP = ("dense, compress-<bits> (compression only, bits 1..8 or 16, e.g. compress-4) "
                f"or a Facto preset: {', '.join(PRESETS)}")


def variant_spec(name: str) -> VariantSpec:
    """The spec of a variant name: dense | compress-<bits> | a key of facto.config.PRESETS."""
    if name == "dense":
        return Recipe("dense", "dense", None, label="dense fp32")
    match = re.fullmatch(r"compress-(\d+)", name) if isinstance(name, str) else None
    if match and (1 <= int(match.group(1)) <= 8 or int(match.group(1)) == 16):
        bits = int(match.group(1))
        return Recipe(name, "compress", bits, label=f"compression only {bits}-bit (ActNN-style)")
    if isinstance(name, str) and name in PRESETS:
        p = PRESETS[name]
        extra = ", recompute" if p["recompute"] else ""
        label = f"Facto {name} (rank {p['rank']}, {p['update']}, {p['bits']}-bit{extra})"
        return Recipe(name, "facto", p["bits"], RunConfig(**p), label=label)
    raise ValueError(f"variant={name!r} is not allowed: choose {VARIANT_HELP}")


def parse_variants(value: str | Sequence[str]) -> list[str]:
    """Variant names from 'dense,compress-4,balanced' or a list; each checked, duplicates dropped."""
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"variants={value!r} is not allowed: name at least one of {VARIANT_HELP}")
    for n in names:
        variant_spec(n)
    return list(dict.fromkeys(names))


TORCHVISION_PREFIXES = ("tv:", "torchvision:")


def check_model(name: str) -> str:
    """A registry name, any torchvision classification model, or 'tv:NAME' for torchvision's own
    layout of a name the registry adapts to 32x32 (e.g. tv:resnet18: 7x7 stem and max-pool)."""
    if isinstance(name, str) and name.lower().startswith(TORCHVISION_PREFIXES):
        key = name.split(":", 1)[1].strip().lower()
        if key not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(f"model={name!r} is not allowed: after 'tv:' name a torchvision classification model")
        return "tv:" + key
    return check_model_name(name)


def build_model(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """The dense model (fresh weights, seeded) for a name accepted by `check_model`."""
    key = check_model(name)
    with seeded(0):  # seeded without touching the caller's generator
        if not key.startswith("tv:"):
            return create_model(key, num_classes, in_channels)
        model = torchvision.models.get_model(key[3:], weights=None, num_classes=num_classes)
        return replace_first_conv(model, in_channels) if in_channels != 3 else model


# ----------------------------------------------------------------------------- memory as a function of the batch

@dataclass(frozen=True)
class Line:
    """bytes = intercept + slope * batch (a per-batch constant and a per-sample slope)."""

    intercept: float
    slope: float

    def at(self, batch: int) -> float:
        return self.intercept + self.slope * batch

    @classmethod
    def through(cls, b1: int, v1: float, b2: int, v2: float) -> "Line":
        """The line through two probes; a negative slope (noise) is flattened at the larger probe."""
        slope = max(0.0, (v2 - v1) / (b2 - b1))
        return cls(v2 - slope * b2, slope)


# Temporaries of one optimizer step, in gradient-sized copies: torch's multi-tensor (foreach)
# optimizers on CUDA copy the gradients for weight decay (and Nesterov), Adam also takes a
# square root of its second moment. A model, not a measurement; it only matters at tiny batches.
OPTIMIZER_STEP_COPIES = {"sgd": 1, "adam": 2, "adamw": 1}


@dataclass
class Breakdown:
    """Predicted bytes of one training step at `batch`; `total` is their sum."""

    batch: int
    weights: int  # every parameter and buffer
    gradients: int  # trainable parameters only
    optimizer_state: int  # per trainable parameter: SGD momentum 1, Adam/AdamW 2
    activations: int  # stored for backward (measured per sample x batch + per-batch constant)
    transients: int  # the extra peak above the stored bytes (modelled)
    reserve: int  # allocator rounding/fragmentation and cuDNN/cuBLAS workspaces (fixed)

    @property
    def total(self) -> int:
        return (self.weights + self.gradients + self.optimizer_state + self.activations
                + self.transients + self.reserve)

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


COMPONENTS = ("weights", "gradients", "optimizer_state", "activations", "transients", "reserve")


@dataclass
class MemoryProfile:
    """One variant's training memory as a function of the batch, from two probe forwards."""

    variant: str
    label: str
    bits: int | None
    weights: int
    gradients: int
    optimizer_state: int
    optimizer_step: int  # temporaries of the optimizer step
    stored: Line
    candidates: list[Line]  # activation bytes alive at each unit's forward/backward (steppeak.peak_candidates)
    batch_input: Line  # the input batch, alive during the optimizer step too
    reserve: int

    def breakdown(self, batch: int) -> Breakdown:
        stored = max(0, math.ceil(self.stored.at(batch)))
        peak = max(c.at(batch) for c in self.candidates)
        peak = max(peak, self.batch_input.at(batch) + self.optimizer_step, stored)
        return Breakdown(batch, self.weights, self.gradients, self.optimizer_state, stored,
                         math.ceil(peak) - stored, self.reserve)

    def total(self, batch: int) -> int:
        return self.breakdown(batch).total


def _param_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def profile_variant(spec: VariantSpec, dense: nn.Module, input_shape: tuple[int, int, int],
                    optimizer: str = "sgd", precision: str = "fp32", device: torch.device | str = "cpu",
                    reserve: int = DEFAULT_RESERVE, block: int = 64,
                    probes: tuple[int, int] = PROBE_BATCHES) -> MemoryProfile:
    """Build the variant from `dense`, trace a forward at two probe batches, fit lines in the batch."""
    _check_choice("optimizer", optimizer, OPTIMIZER_SLOTS)
    autocast = PRECISIONS[_check_choice("precision", precision, PRECISIONS)]
    model = spec.build(dense).to(device)
    traces = []
    for b in probes:
        x = torch.randn(b, *input_shape, device=device)
        traces.append(trace_forward(model, x, spec.bits, block, autocast))
    (b1, b2), (t1, t2) = probes, traces
    c1, c2 = peak_candidates(t1), peak_candidates(t2)
    if len(c1) == len(c2):
        candidates = [Line.through(b1, u, b2, v) for u, v in zip(c1, c2)]
    else:  # the forward differed between the probes: fall back to the two peaks
        candidates = [Line.through(b1, max(c1), b2, max(c2))]
    trainable = trainable_bytes(model)
    sample = math.prod(input_shape) * torch.get_default_dtype().itemsize
    return MemoryProfile(
        spec.name, spec.label, spec.bits, weights=_param_bytes(model), gradients=trainable,
        optimizer_state=OPTIMIZER_SLOTS[optimizer] * trainable,
        optimizer_step=OPTIMIZER_STEP_COPIES[optimizer] * trainable,
        stored=Line.through(b1, t1.stored, b2, t2.stored), candidates=candidates,
        batch_input=Line(0.0, float(sample)), reserve=reserve)


def largest_fitting(fits: Callable[[int], bool], hint: int = 1, limit: int = MAX_BATCH) -> int:
    """The largest batch in 1..limit for which `fits` holds (0 if none), for a monotone `fits`.

    Gallops from `hint` (doubling up, or halving down) to bracket the boundary, then bisects:
    about 2 log2(answer) calls, each batch tried at most once.
    """
    if limit < 1:
        return 0
    lo, hi = 0, limit + 1  # fits(lo) holds (or lo == 0); fits(hi) fails (or hi == limit + 1)
    b = min(max(int(hint), 1), limit)
    if fits(b):
        lo = b
        while lo < limit:
            b = min(2 * lo, limit)
            if not fits(b):
                hi = b
                break
            lo = b
    else:
        hi = b
        while hi > 1:
            b = hi // 2
            if fits(b):
                lo = b
                break
            hi = b
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


# ----------------------------------------------------------------------------- the plan

@dataclass
class PlanRow:
    """One variant's answer: the largest batch under the budget and the bytes at that batch."""

    variant: str
    label: str
    max_batch: int  # 0: not even one sample fits
    breakdown: Breakdown  # at max_batch (at batch 1 when max_batch is 0)
    next_total: int  # predicted total at max_batch + 1 (over the budget unless capped)
    per_sample: int  # bytes one more sample costs there (stored + transient)
    capped: bool = False  # max_batch stopped at MAX_BATCH

    def to_dict(self) -> dict:
        return {"variant": self.variant, "label": self.label, "max_batch": self.max_batch,
                "breakdown": self.breakdown.to_dict(), "next_total": self.next_total,
                "per_sample": self.per_sample, "capped": self.capped}


@dataclass
class PlanResult:
    """What `plan` found, with the inputs that produced it."""

    model: str
    input_shape: tuple[int, int, int]
    num_classes: int
    budget: int
    optimizer: str
    precision: str
    device: str  # where the probe forwards ran
    reserve: int
    probes: tuple[int, int]
    rows: list[PlanRow]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"model": self.model, "input": list(self.input_shape), "num_classes": self.num_classes,
                "budget": self.budget, "optimizer": self.optimizer, "precision": self.precision,
                "device": self.device, "reserve": self.reserve, "probe_batches": list(self.probes),
                "tolerance": TOLERANCE, "rows": [r.to_dict() for r in self.rows], "notes": self.notes}


def plan_row(profile: MemoryProfile, budget: int, limit: int = MAX_BATCH) -> PlanRow:
    """The largest batch whose predicted total fits `budget`, and its breakdown."""
    best = largest_fitting(lambda b: profile.total(b) <= budget, limit=limit)
    at = max(best, 1)
    breakdown = profile.breakdown(at)
    following = profile.breakdown(at + 1)
    per_sample = (following.activations + following.transients) - (breakdown.activations + breakdown.transients)
    return PlanRow(profile.variant, profile.label, best, breakdown, profile.total(best + 1), per_sample,
                   capped=best == limit)


def _notes(key: str, input_shape: tuple[int, int, int], precision: str, device: torch.device,
           specs: Sequence[VariantSpec]) -> list[str]:
    notes = []
    if key in ("resnet18", "vgg11_bn", "mobilenet_v2") and max(input_shape[1:]) > 64:
        notes.append(f"{key} is the registry's 32x32 adaptation (stride-1 stem); for torchvision's own "
                     f"layout at {input_shape[1]}x{input_shape[2]} plan tv:{key}")
    if precision != "fp32":
        notes.append(f"{precision}: probes ran under torch.autocast on {device.type}; its op list differs "
                     "from CUDA's, so these rows are estimates (see facto.plan.plan)")
    return notes


def plan(model: str, input_shape: str | Sequence[int], num_classes: int, budget: str | int,
         optimizer: str = "sgd", precision: str = "fp32", variants: str | Sequence[str] = DEFAULT_VARIANTS,
         device: str = "auto", reserve: str | int = DEFAULT_RESERVE, block: int = 64,
         log: Callable[[str], None] | None = None) -> PlanResult:
    """The largest batch that trains under `budget` for each variant, with a breakdown in bytes.

    Stored activations are measured by the meter on `device` at batches 2 and 4; transients come
    from the unit model (`peak_candidates`), checked on the CPU against the profiler within
    `TOLERANCE`; weights, gradients (trainable parameters) and optimizer state (SGD momentum: 1
    value per trained parameter, Adam/AdamW: 2; frozen factors: none) are counted; the reserve
    is fixed. Budgets are bytes the caching allocator may hold, not counting the CUDA context.

    Mixed precision (bf16/fp16) is a model: the probes run under `torch.autocast`, so the meter sees
    what autocast really saves there (16-bit inputs of conv/linear, 16-bit weight copies);
    gradient maps take the dtype of their maps. On a CPU, autocast's op list is not CUDA's, and no 16-bit kernel
    workspace is seen: treat those rows as estimates, and --verify them on the GPU.
    """
    key = check_model(model)
    shape = parse_input_shape(input_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} is not allowed: use an integer >= 1")
    budget_bytes = parse_budget(budget)
    reserve_bytes = parse_budget(reserve, "reserve")
    _check_choice("optimizer", optimizer, OPTIMIZER_SLOTS)
    _check_choice("precision", precision, PRECISIONS)
    specs = [variant_spec(v) for v in parse_variants(variants)]
    dev = resolve_device(device)
    say = log or (lambda msg: None)
    dense = build_model(key, num_classes, shape[0]).to(dev)
    rows = []
    for spec in specs:
        say(f"probing {spec.label} on {dev.type} (batches {PROBE_BATCHES[0]}, {PROBE_BATCHES[1]})")
        try:
            profile = profile_variant(spec, dense, shape, optimizer, precision, dev, reserve_bytes, block)
        except RuntimeError as exc:  # e.g. an input too small for the model's pooling
            raise ValueError(f"input={'x'.join(map(str, shape))} does not run through {key} "
                             f"({spec.name}): {str(exc).splitlines()[0]}") from exc
        rows.append(plan_row(profile, budget_bytes))
    notes = _notes(key, shape, precision, dev, specs) + _nothing_fits(rows, budget_bytes, reserve_bytes)
    return PlanResult(key, shape, num_classes, budget_bytes, optimizer, precision, str(dev), reserve_bytes,
                      PROBE_BATCHES, rows, notes)


def _nothing_fits(rows: Sequence[PlanRow], budget: int, reserve: int) -> list[str]:
    """A note naming the variants that do not fit even one sample, and what batch 1 needs."""
    too_big = [r for r in rows if r.max_batch == 0]
    if not too_big:
        return []
    needs = ", ".join(f"{r.label} needs {r.next_total / MB:,.1f} MB" for r in too_big)
    return [f"not even batch 1 fits in {budget / MB:,.1f} MB: at batch 1, {needs} (weights, gradients, "
            f"optimizer state and the {reserve / MB:,.1f} MB reserve included). Raise the budget, lower the "
            "reserve or pick a smaller model."]


# ----------------------------------------------------------------------------- data for a table and a chart

def table_rows(result: PlanResult) -> list[dict]:
    """One dict per variant (MB = 10^6 bytes), ready for a table."""
    rows = []
    for r in result.rows:
        b = r.breakdown
        row = {"variant": r.label, "max batch": r.max_batch}
        row.update({f"{c.replace('_', ' ')} MB": round(getattr(b, c) / MB, 1) for c in COMPONENTS})
        row["total MB"] = round(b.total / MB, 1)
        row["per sample MB"] = round(r.per_sample / MB, 2)
        rows.append(row)
    return rows


def chart_data(result: PlanResult) -> dict:
    """A stacked bar per variant at its max batch: components in MB, and the budget line."""
    return {
        "variants": [r.label for r in result.rows],
        "names": [r.variant for r in result.rows],
        "max_batch": [r.max_batch for r in result.rows],
        "components": [c.replace("_", " ") for c in COMPONENTS],
        "series": {c.replace("_", " "): [getattr(r.breakdown, c) / MB for r in result.rows] for c in COMPONENTS},
        "budget": result.budget / MB,
        "unit": "MB",
    }


# ----------------------------------------------------------------------------- verify on a GPU

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
    """`steps` training steps at `batch` in the order of facto.train.train_step (raises on OOM)."""
    config = RunConfig(optimizer=optimizer, schedule="constant")
    opt, _ = make_optimizer(config, model, steps)
    for _ in range(steps):
        x = torch.randn(batch, *input_shape, device=device)
        y = torch.randint(0, num_classes, (batch,), device=device)
        loss, _ = forward_loss(model, x, y, bits, block, PRECISIONS[precision])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        del x, y, loss
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
    dense = build_model(result.model, result.num_classes, result.input_shape[0])
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


# ----------------------------------------------------------------------------- command line

DEFAULT_MODEL = "resnet20"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m facto plan",
                      description="Fit my GPU: the largest batch that trains under a memory budget, per variant.")
    model_help = "registry name, any torchvision classification model, or tv:NAME for torchvision's own layout"
    p.add_argument("model", nargs="?", metavar="MODEL", default=argparse.SUPPRESS,
                   help=f"{model_help} (same as --model)")
    default = " (default: %(default)s)"
    p.add_argument("--model", dest="model_flag", metavar="MODEL", default=DEFAULT_MODEL, help=model_help + default)
    p.add_argument("--input", default="3x32x32", help="C x H x W of one sample, e.g. 3x224x224" + default)
    p.add_argument("--classes", type=int, default=10, help="outputs of the classifier" + default)
    p.add_argument("--budget", default="8GB", help=BUDGET_HELP + default)
    p.add_argument("--optimizer", default="sgd", help="sgd (momentum) | adam | adamw" + default)
    p.add_argument("--precision", default="fp32", help="fp32 | bf16 | fp16 (autocast)" + default)
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma list of: {VARIANT_HELP}" + default)
    p.add_argument("--device", default="auto",
                   help="where the probe forwards run: auto | cpu | cuda | cuda:N" + default)
    p.add_argument("--reserve", default=f"{DEFAULT_RESERVE // MiB}MiB",
                   help="fixed allocator/workspace reserve inside the budget" + default)
    p.add_argument("--verify", action="store_true", help="also measure the real largest batch (needs a GPU)")
    p.add_argument("--json", action="store_true", help="print only a JSON document on stdout")
    return p


def format_plan(result: PlanResult, checks: Sequence[VerifyRow] = ()) -> str:
    """The plan as a text table (MB = 10^6 bytes)."""
    shape = "x".join(map(str, result.input_shape))
    lines = [f"Fit my GPU: {result.model}, input {shape}, {result.num_classes} classes, budget "
             f"{result.budget / GB:.2f} GB ({result.budget / GiB:.2f} GiB), {result.optimizer}, "
             f"{result.precision}; stored bytes measured on {result.device} at batches "
             f"{result.probes[0]} and {result.probes[1]}; reserve {result.reserve / MiB:.0f} MiB",
             ""]
    rows = table_rows(result)
    headers = list(rows[0])
    width = {h: max(len(h), *(len(str(r[h])) for r in rows)) for h in headers}
    lines.append("  ".join(h.ljust(width[h]) if i == 0 else h.rjust(width[h]) for i, h in enumerate(headers)))
    for r in rows:
        lines.append("  ".join(str(r[h]).ljust(width[h]) if i == 0 else str(r[h]).rjust(width[h])
                               for i, h in enumerate(headers)))
    measured = {c.variant: c for c in checks}
    for r in result.rows:
        if r.variant in measured:
            c = measured[r.variant]
            outcome = f"measured {c.measured}" if c.error is None else f"failed: {c.error}"
            lines.append(f"verify {r.variant}: predicted {c.predicted}, {outcome}")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # stderr only: stdout may hold the JSON document


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m facto plan ...`; returns the exit code (2 for a user mistake, printed as one line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        model = getattr(args, "model", None)
        if model and args.model_flag not in (model, DEFAULT_MODEL):
            raise UsageError(f"python -m facto plan: model={model!r} and --model={args.model_flag!r}: give one")
        args.model = model or args.model_flag
        if args.verify:
            require_gpu()  # before minutes of probing
        result = plan(args.model, args.input, args.classes, args.budget, args.optimizer, args.precision,
                      args.variants, args.device, args.reserve, log=_progress)
        checks = verify(result, args.device, log=_progress) if args.verify else []
    except (UsageError, ValueError, GPURequiredError) as exc:
        print(f"error: {exc}".replace("\n", " "), file=sys.stderr)
        return 2
    if args.json:
        document = result.to_dict()
        if args.verify:
            document["verify"] = [c.to_dict() for c in checks]
        print(json.dumps(document, indent=2))
    else:
        print(format_plan(result, checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
