"""Fit my GPU: the largest batch that trains under a memory budget, for each training variant.

`plan(...)` answers, before renting a GPU, "how large a batch fits in N GB?" for dense fp32,
compression only (ActNN-style: 1-bit ReLU masks + b-bit maps) and the Facto presets, with a
breakdown in bytes (`facto plan` and the Fit my GPU page); `facto.memory.verify` measures the
real largest batch on a GPU.

Measured, modelled, assumed:
- Stored activations are MEASURED by Facto's meter (`saved_activations`, the meter behind
  `measure_activations`) at batches 2 and 4 on whatever device is present: a per-batch constant
  (BN statistics, 16-bit weight copies under autocast) plus a per-sample slope.
- Transients, the peak above the stored bytes, are MODELLED unit by unit from that same forward by
  facto.memory.step_peak (held within its `TOLERANCE` of the CPU profiler); `verify` measures on a GPU.
- Weights (parameters and buffers), gradients (trainable parameters only) and optimizer state
  (SGD momentum: 1 value per trained parameter, Adam/AdamW: 2) are counted; a fixed reserve
  (`DEFAULT_RESERVE`) stands for the caching allocator's rounding and fragmentation and the
  cuDNN/cuBLAS workspaces, which nothing on a CPU can see.

No UI code: `table_rows` and `chart_data` return plain data that other modules draw.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from ..config import ALLOWED_BITS, COMPRESSED_BITS_HELP, PRESETS, SETTINGS, RunConfig
from ..engine.build import Variant, fresh_model
from ..engine.devices import resolve_device
from ..engine.models import check_model_name
from ..engine.optim import OPTIMIZER_SPECS
from .budget import MB, LimitError, MiB, check_input_size, parse_budget, parse_input_shape
from .process import process_setup_bytes
from .step_peak import TOLERANCE, peak_candidates, trace_forward, trainable_bytes

OPTIMIZER_SLOTS = {name: spec.state_per_weight for name, spec in OPTIMIZER_SPECS.items()}
DEFAULT_VARIANTS = ("dense", "compress-4", "paper", "balanced", "max-saving")
DEFAULT_RESERVE = 256 * MiB
PROBE_BATCHES = (2, 4)
MAX_BATCH = 2**20


# ----------------------------------------------------------------------------- variants

VARIANT_HELP = (f"dense, compress-<bits> (compression only, bits {COMPRESSED_BITS_HELP}, e.g. compress-4) "
                f"or a Facto preset: {', '.join(PRESETS)}")


def variant_spec(name: str) -> Variant:
    """The variant a name plans: dense | compress-<bits> | a key of facto.config.PRESETS."""
    if name == "dense":
        return Variant("dense", "dense", label="dense fp32")
    match = re.fullmatch(r"compress-(\d+)", name) if isinstance(name, str) else None
    if match and int(match.group(1)) in ALLOWED_BITS:
        bits = int(match.group(1))
        return Variant(name, "compress", RunConfig(bits=bits), label=f"compression only {bits}-bit (ActNN-style)")
    if isinstance(name, str) and name in PRESETS:
        p = PRESETS[name]
        extra = ", recompute" if p["recompute"] else ""
        label = f"Facto {name} (rank {p['rank']}, {p['update']}, {p['bits']}-bit{extra})"
        return Variant(name, "facto", RunConfig(**p), label=label)
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
    candidates: list[Line]  # activation bytes alive at each unit's forward/backward (step_peak.peak_candidates)
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


def profile_variant(spec: Variant, dense: nn.Module, input_shape: tuple[int, int, int],
                    optimizer: str = "sgd", precision: str = "fp32", device: torch.device | str = "cpu",
                    reserve: int = DEFAULT_RESERVE, block: int = 64,
                    probes: tuple[int, int] = PROBE_BATCHES) -> MemoryProfile:
    """Build the variant from `dense`, trace a forward at two probe batches, fit lines in the batch."""
    SETTINGS["optimizer"].validate("optimizer", optimizer)
    SETTINGS["precision"].validate("precision", precision)
    model = spec.build(dense).to(device)
    traces = []
    for b in probes:
        x = torch.randn(b, *input_shape, device=device)
        traces.append(trace_forward(model, x, spec.bits, block, precision))
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
    process_peak: int | None = None  # a CPU training process's resident peak above its data (see plan)

    def to_dict(self) -> dict:
        return {"variant": self.variant, "label": self.label, "max_batch": self.max_batch,
                "breakdown": self.breakdown.to_dict(), "next_total": self.next_total,
                "per_sample": self.per_sample, "capped": self.capped, "process_peak": self.process_peak}


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
           specs: Sequence[Variant]) -> list[str]:
    notes = []
    if key in ("resnet18", "vgg11_bn", "mobilenet_v2") and max(input_shape[1:]) > 64:
        notes.append(f"{key} is the registry's 32x32 adaptation (stride-1 stem); for torchvision's own "
                     f"layout at {input_shape[1]}x{input_shape[2]} plan tv:{key}")
    if precision != "fp32":
        notes.append(f"{precision}: probes ran under torch.autocast on {device.type}; its op list differs "
                     "from CUDA's, so these rows are estimates (see facto.memory.plan.plan)")
    return notes


def plan(model: str, input_shape: str | Sequence[int], num_classes: int, budget: str | int,
         optimizer: str = "sgd", precision: str = "fp32", variants: str | Sequence[str] = DEFAULT_VARIANTS,
         device: str = "auto", reserve: str | int = DEFAULT_RESERVE, block: int = 64,
         log: Callable[[str], None] | None = None, max_input: int | None = None,
         max_params: int | None = None, process: bool = False) -> PlanResult:
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

    `process` (CPU): each row also predicts a training process's resident peak above its data
    (`process_peak`, what `facto train --json` reports as process_peak minus process_before_model),
    assuming big buffers returned to the system (FACTO_RETURN_MEMORY=1): the row's total without the
    reserve, plus what a process sets up on its first steps whatever the batch, measured here in a
    fresh process (`facto.memory.process.process_setup_bytes`, a few seconds per optimizer).

    `max_input` (values per image, C x H x W) and `max_params` bound the work (None: no bound), checked
    before any model is built or measured: LimitError (a ValueError) naming the value and the limit.
    The probes' memory grows with the input (one plan of the registry's resnet18 at 3x128x128 grows
    a process by about 1 GB); the app's pages pass their server's limits.
    """
    key = check_model_name(model, torchvision_layout=True)
    shape = parse_input_shape(input_shape)
    check_input_size(shape, max_input)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} is not allowed: use an integer >= 1")
    budget_bytes = parse_budget(budget)
    reserve_bytes = parse_budget(reserve, "reserve")
    SETTINGS["optimizer"].validate("optimizer", optimizer)
    SETTINGS["precision"].validate("precision", precision)
    specs = [variant_spec(v) for v in parse_variants(variants)]
    dev = resolve_device(device)
    if process and dev.type != "cpu":
        raise ValueError(f"process=True predicts a CPU training process, not one on {dev.type}: "
                         "plan on the CPU (device='cpu')")
    say = log or (lambda msg: None)
    if max_params is not None:
        check_params(key, num_classes, shape[0], max_params)
    dense = fresh_model(key, num_classes, shape[0]).to(dev)
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
    if process:
        notes += _process_peaks(rows, specs, optimizer, say)
    return PlanResult(key, shape, num_classes, budget_bytes, optimizer, precision, str(dev), reserve_bytes,
                      PROBE_BATCHES, rows, notes)


def _process_peaks(rows: Sequence[PlanRow], specs: Sequence[Variant], optimizer: str,
                   say: Callable[[str], None]) -> list[str]:
    """Fill each row's process_peak (CPU, big buffers returned); the note that says how."""
    setups: dict[bool, int | None] = {}
    for row, spec in zip(rows, specs):
        compress = spec.uses_kernels  # the CPU kernels load (masks, b-bit maps)
        if compress not in setups:
            say(f"measuring a training process's setup ({optimizer}{', CPU kernels' if compress else ''})")
            setups[compress] = process_setup_bytes(optimizer, compress)
        setup = setups[compress]
        if setup is not None:
            row.process_peak = row.breakdown.total - row.breakdown.reserve + setup
    measured = ", ".join(f"{v / MB:.0f} MB{' with compression' if k else ''}" for k, v in setups.items()
                         if v is not None)
    if not measured:
        return ["process MB: the process's setup could not be measured here (Linux only)"]
    return [f"process MB: a CPU training process's resident peak above its data with big buffers returned "
            f"(FACTO_RETURN_MEMORY=1; glibc's default keeps freed buffers and can hold much more): the "
            f"total without the reserve, plus what a process sets up on its first steps ({measured})"]


def check_params(key: str, num_classes: int, in_channels: int, max_params: int) -> None:
    """LimitError when model `key` has more than `max_params` parameters, counted on the meta device
    (no memory, no weights drawn); a model that cannot be built there is counted built for real."""
    try:
        with torch.device("meta"):
            model = fresh_model(key, num_classes, in_channels)
    except (NotImplementedError, RuntimeError):  # e.g. torchvision's regnets copy values while they initialise
        model = fresh_model(key, num_classes, in_channels)
    params = sum(p.numel() for p in model.parameters())
    if params > max_params:
        raise LimitError(f"model={key!r} has {params:,} parameters, above the limit of {max_params:,} here")


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
        if any(other.process_peak is not None for other in result.rows):
            row["process MB"] = None if r.process_peak is None else round(r.process_peak / MB, 1)
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


