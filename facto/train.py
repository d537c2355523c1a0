"""Training: RunConfig, the step loop, and baseline vs Facto side by side as a stream of events.

`compare(config)` trains the dense fp32 baseline and the Facto model from the same initial
weights on the same batches, interleaved (a baseline step, a Facto step, ...), and yields
typed events the app and the CLI draw. Closing the generator early (Stop) ends the run as
'interrupted'; with a `RunStore` every event is stored as it happens.
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Iterator, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .activations import ActivationMeter, measure_activations, saved_activations
from .compress import validate_bits, validate_block
from .data import DataBundle, list_datasets, load_data
from .factorize import describe, factorize, parse_rank
from .layers import UPDATES, _Factorized
from .models import check_model_name, create_model

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")
DEVICES = ("auto", "cpu", "cuda", "mps")
BASELINES = ("dense", "compress")
CYCLE = "cycle"


@dataclass(frozen=True)
class RunConfig:
    """One comparison (or single run). Validated on construction: bad values raise ValueError."""

    model: str = "simple_cnn"
    dataset: str = "digits"
    rank: Union[float, int, str] = 0.5
    update: str = "core"
    bits: int | None = 4
    block: int = 64
    recompute: bool = True
    epochs: int = 4
    max_steps: int | None = None
    batch_size: int = 64
    lr: float = 1e-2
    optimizer: str = "adam"
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    seed: int = 0
    device: str = "auto"
    eval_every: int = 0
    warm_start_steps: int = 0
    cycle_every: int = 0
    data_dir: str = "~/.facto/data"
    download: bool = False
    max_train: int | None = None
    max_test: int | None = None

    def __post_init__(self) -> None:
        _check_choice("dataset", self.dataset, list_datasets())
        parse_rank(self.rank)
        if self.update != CYCLE:
            _check_choice("update", self.update, [*UPDATES, CYCLE])
        validate_bits(self.bits)
        validate_block(self.block)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        if not (self.device in DEVICES or str(self.device).startswith("cuda:")):
            raise ValueError(f"device={self.device!r} is not allowed: choose one of {', '.join(DEVICES)} or cuda:N")
        for name in ("epochs", "batch_size"):
            _check_int(name, getattr(self, name), 1)
        for name in ("eval_every", "warm_start_steps", "seed", "cycle_every"):
            _check_int(name, getattr(self, name), 0)
        for name in ("max_steps", "max_train", "max_test"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr <= 10):
            raise ValueError(f"lr={self.lr!r} is not allowed: use a number in (0, 10]")
        if not (isinstance(self.weight_decay, (int, float)) and 0 <= self.weight_decay < 1):
            raise ValueError(f"weight_decay={self.weight_decay!r} is not allowed: use a number in [0, 1)")
        check_model_name(self.model)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        """Build from a dict, ignoring unknown keys (e.g. a stored config of an older version)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed: choose one of {', '.join(map(str, allowed))}")


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} is not allowed: use an integer >= {minimum}")


# ----------------------------------------------------------------------------- presets

PRESETS: dict[str, dict] = {
    # the paper's recipe as we read it: train the last factor, compress the feature maps
    "paper": dict(rank=0.5, update="last", bits=4, recompute=False),
    # the measured default (README, benchmarks/engine.py): close to dense accuracy, ~94 % saving
    "balanced": dict(rank=0.5, update="core", bits=4, recompute=True),
    # every trick: recompute BN inputs, 2-bit maps
    "max-saving": dict(rank=0.5, update="core", bits=2, recompute=True),
}


def preset(name: str, **overrides) -> RunConfig:
    """A RunConfig from a named preset (see PRESETS) with optional overrides."""
    _check_choice("preset", name, list(PRESETS))
    return RunConfig(**{**PRESETS[name], **overrides})


# ----------------------------------------------------------------------------- events

@dataclass
class StartEvent:
    """Sent once before the first step: what is being compared."""

    config: dict
    device: str
    device_name: str
    steps_per_epoch: int
    total_steps: int
    train_size: int
    test_size: int
    params: dict[str, int]
    trainable_params: dict[str, int]
    layer_bytes: dict[str, dict[str, int]]
    report: list[dict]
    type: str = "start"


@dataclass
class StepEvent:
    """One optimisation step of one variant."""

    variant: str
    step: int
    epoch: int
    loss: float
    accuracy: float
    act_bytes: int
    raw_bytes: int
    peak_cuda: int | None
    step_seconds: float
    lr: float
    type: str = "step"


@dataclass
class EvalEvent:
    """A test-set evaluation of one variant."""

    variant: str
    step: int
    epoch: int
    test_loss: float
    test_accuracy: float
    type: str = "eval"


@dataclass
class SummaryEvent:
    """The end of a run: both accuracies, the memory saving, timings."""

    status: str
    steps: dict[str, int]
    accuracy: dict[str, float | None]
    act_bytes: dict[str, int]
    peak_cuda: dict[str, int | None]
    step_seconds: dict[str, float]
    params: dict[str, int]
    wall_seconds: float
    saving_pct: float | None
    accuracy_delta: float | None
    type: str = "summary"


Event = Union[StartEvent, StepEvent, EvalEvent, SummaryEvent]


class RunTracker:
    """Accumulates events; gives a consistent summary at any point (also after a Stop)."""

    def __init__(self) -> None:
        self.start: StartEvent | None = None
        self.steps: dict[str, list[StepEvent]] = {}
        self.evals: dict[str, list[EvalEvent]] = {}
        self.began = time.perf_counter()

    def add(self, event: Event) -> None:
        if isinstance(event, StartEvent):
            self.start = event
        elif isinstance(event, StepEvent):
            self.steps.setdefault(event.variant, []).append(event)
        elif isinstance(event, EvalEvent):
            self.evals.setdefault(event.variant, []).append(event)

    def summary(self, status: str = "completed") -> SummaryEvent:
        variants = [v for v in ("baseline", "facto") if v in self.steps] or list(self.steps)
        acc = {v: (self.evals[v][-1].test_accuracy if self.evals.get(v) else None) for v in variants}
        act = {v: max(s.act_bytes for s in self.steps[v]) for v in variants}
        peak = {v: max((s.peak_cuda for s in self.steps[v] if s.peak_cuda is not None), default=None)
                for v in variants}
        secs = {v: statistics.median(s.step_seconds for s in self.steps[v][1:] or self.steps[v])
                for v in variants}
        saving = delta = None
        if act.get("baseline") and "facto" in act:
            saving = 100.0 * (1 - act["facto"] / act["baseline"])
        if acc.get("baseline") is not None and acc.get("facto") is not None:
            delta = acc["facto"] - acc["baseline"]
        params = self.start.params if self.start else {}
        return SummaryEvent(status=status, steps={v: len(self.steps[v]) for v in variants},
                            accuracy=acc, act_bytes=act, peak_cuda=peak, step_seconds=secs,
                            params=params, wall_seconds=time.perf_counter() - self.began,
                            saving_pct=saving, accuracy_delta=delta)


# ----------------------------------------------------------------------------- the loop

def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} is not available on this machine: use 'auto' or 'cpu'")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """Readable device: GPU name and memory, or the CPU and its cores."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    if device.type == "mps":
        return "Apple GPU (MPS)"
    import os

    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


@dataclass
class Variant:
    """A model being trained, with its optimizer, schedule and compression setting."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    bits: int | None
    block: int
    step: int = 0
    cycle: list[str] = field(default_factory=list)


def make_optimizer(config: RunConfig, model: nn.Module, total_steps: int):
    """Optimizer over every parameter (frozen factors get no grad, so they never move)."""
    params = list(model.parameters())
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay, nesterov=True)
    elif config.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.schedule == "onecycle" and total_steps >= 8:  # shorter: OneCycleLR has no room to warm up
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total_steps,
                                                    pct_start=0.25)
    elif config.schedule in ("cosine", "onecycle"):
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


def set_model_update(model: nn.Module, update: str) -> None:
    """Switch which factor trains in every factorized layer (factor schedules)."""
    for m in model.modules():
        if isinstance(m, _Factorized):
            m.set_update(update)


def train_step(v: Variant, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> tuple[float, float, ActivationMeter, float]:
    """One optimisation step under the compression/accounting hooks."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    v.model.train()
    with saved_activations(v.bits, v.block, model=v.model) as meter:
        out = v.model(x)
    loss = F.cross_entropy(out, y)
    v.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    v.optimizer.step()
    v.scheduler.step()
    if cuda:
        torch.cuda.synchronize(device)
        meter.peak_cuda = torch.cuda.max_memory_allocated(device)
    seconds = time.perf_counter() - start
    acc = (out.detach().argmax(1) == y).float().mean().item()
    v.step += 1
    return loss.item(), acc, meter, seconds


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device) -> tuple[float, float]:
    """Test loss and accuracy (%)."""
    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        loss_sum += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
        total += y.numel()
    loss, acc = distributed.reduce_sums(loss_sum, correct, total, device)
    return loss, acc


def build_facto(config: RunConfig, dense: nn.Module) -> nn.Module:
    """The Facto model a run of `config` trains, factorized from `dense` (the Layers page uses it too)."""
    first = config.update if config.update != CYCLE else cycle_order(config)[0]
    extra = {"recompute": True} if config.recompute else {}
    return factorize(dense, rank=config.rank, update=first, **extra)


def cycle_order(config: RunConfig) -> list[str]:
    """The factors a `cycle` schedule trains in turn (memory: the max over them).

    `first` is left out: training it stores the full layer input, which is what Facto avoids.
    """
    return ["core", "last"]


def _param_counts(model: nn.Module) -> tuple[int, int]:
    return (sum(p.numel() for p in model.parameters()),
            sum(p.numel() for p in model.parameters() if p.requires_grad))


def compare(config: RunConfig, store=None, variants: tuple[str, ...] = ("baseline", "facto"),
            data: DataBundle | None = None) -> Iterator[Event]:
    """Train baseline and Facto side by side from the same weights; yield events as they happen.

    Args:
        store: a `facto.store.RunStore`; the run is written as it goes (Stop -> interrupted).
        variants: which of baseline / facto to train (`run` trains one).
        data: a loaded DataBundle to reuse (else loaded from the config).
    """
    tracker = RunTracker()
    run_id = None
    status, error = "interrupted", None
    try:
        distributed.init_from_env()
        logger = distributed.is_main_process()
        device = distributed.device_for(resolve_device(config.device))
        torch.manual_seed(config.seed)
        if data is None:
            data = load_data(config.dataset, config.data_dir, config.batch_size, download=config.download,
                             seed=config.seed, max_train=config.max_train, max_test=config.max_test)
        train_loader = distributed.shard_loader(data.train_loader, config.seed)
        steps_per_epoch = len(train_loader)
        total = config.max_steps or steps_per_epoch * config.epochs
        torch.manual_seed(config.seed)
        dense = create_model(config.model, data.info.num_classes, data.info.in_channels).to(device)
        models: dict[str, nn.Module] = {}
        warm = []
        if config.warm_start_steps:
            warm = list(_warm_start(dense, config, train_loader, device))
        if "baseline" in variants:
            models["baseline"] = copy.deepcopy(dense)
        if "facto" in variants:
            models["facto"] = build_facto(config, dense).to(device)
        probe = next(iter(data.train_loader))[0][: config.batch_size].to(device)
        start = StartEvent(
            config=config.to_dict(), device=str(device), device_name=device_name(device),
            steps_per_epoch=steps_per_epoch, total_steps=total, train_size=data.train_size,
            test_size=data.test_size,
            params={k: _param_counts(m)[0] for k, m in models.items()},
            trainable_params={k: _param_counts(m)[1] for k, m in models.items()},
            layer_bytes={k: layer_bytes(m, probe, config.bits if k == "facto" else None, config.block)
                         for k, m in models.items()},
            report=[asdict(r) for r in describe(models["facto"])] if "facto" in models else [])
        if store is not None and logger:
            run_id = store.start_run(config.to_dict(), kind="compare" if len(models) > 1 else "single")
            for k, lb in start.layer_bytes.items():
                store.log_layers(run_id, k, lb)
        tracker.add(start)
        yield start
        for event in warm:
            yield event
        running = {}
        for k, m in models.items():
            wrapped = distributed.wrap(m, device)
            running[k] = Variant(k, wrapped, *make_optimizer(config, wrapped, total),
                                 bits=config.bits if k == "facto" else None, block=config.block,
                                 cycle=cycle_order(config) if (k == "facto" and config.update == CYCLE) else [])
        yield from _loop(config, running, train_loader, data.test_loader, device, total, steps_per_epoch,
                         tracker, store, run_id)
        status = "completed"
    except GeneratorExit:
        status = "interrupted"
        raise
    except Exception as exc:  # a failed run stays in the history with its error
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if store is not None and run_id is not None:
            summary = tracker.summary(status) if tracker.steps else None
            store.finish_run(run_id, status, asdict(summary) if summary else None, error)
    if tracker.steps:
        yield tracker.summary("completed")


def _loop(config, running, train_loader, test_loader, device, total, steps_per_epoch, tracker, store, run_id):
    pending: list = []
    try:
        yield from _steps(config, running, train_loader, test_loader, device, total, steps_per_epoch,
                          tracker, store, run_id, pending)
    finally:  # also on Stop (generator closed) and on errors: keep what was done
        if store is not None and run_id is not None:
            _flush(store, run_id, pending)


def _steps(config, running, train_loader, test_loader, device, total, steps_per_epoch, tracker, store,
           run_id, pending):
    step = 0
    epochs = math.ceil(total / steps_per_epoch)
    for epoch in range(epochs):
        distributed.set_epoch(train_loader, epoch)
        for x, y in train_loader:
            if step >= total:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            step += 1
            for v in running.values():
                if v.cycle and config.cycle_every and (step - 1) % config.cycle_every == 0:
                    set_model_update(v.model, v.cycle[((step - 1) // config.cycle_every) % len(v.cycle)])
                elif v.cycle and not config.cycle_every and step % steps_per_epoch == 1:
                    set_model_update(v.model, v.cycle[epoch % len(v.cycle)])
                loss, acc, meter, secs = train_step(v, x, y, device)
                loss, acc = distributed.reduce_mean(loss, acc, device)
                event = StepEvent(v.name, step, epoch + 1, loss, 100 * acc, meter.bytes, meter.raw_bytes,
                                  meter.peak_cuda, secs, v.scheduler.get_last_lr()[0])
                tracker.add(event)
                pending.append(("step", event))
                yield event
            end_of_epoch = step % steps_per_epoch == 0 or step == total
            if (config.eval_every and step % config.eval_every == 0) or end_of_epoch:
                for v in running.values():
                    loss, acc = evaluate(v.model, test_loader, device)
                    event = EvalEvent(v.name, step, epoch + 1, loss, acc)
                    tracker.add(event)
                    pending.append(("eval", event))
                    yield event
            if store is not None and run_id is not None and (len(pending) >= 20 or end_of_epoch):
                _flush(store, run_id, pending)
        if step >= total:
            break


def _flush(store, run_id: int, pending: list) -> None:
    rows = []
    for kind, e in pending:
        metrics = {k: v for k, v in asdict(e).items() if k not in ("variant", "step", "epoch", "type")}
        if kind == "eval":
            metrics["accuracy"] = metrics.pop("test_accuracy")
            metrics["loss"] = metrics.pop("test_loss")
        rows.append((e.variant, kind, e.step, e.epoch, metrics))
    if rows:
        store.log_metrics(run_id, rows)
    pending.clear()


def _warm_start(model: nn.Module, config: RunConfig, loader, device) -> Iterator[StepEvent]:
    """Train the dense model `warm_start_steps` steps before it is copied and factorized."""
    wrapped = distributed.wrap(model, device)
    v = Variant("warmup", wrapped, *make_optimizer(config, wrapped, config.warm_start_steps), bits=None,
                block=config.block)
    step = 0
    while step < config.warm_start_steps:
        for x, y in loader:
            if step >= config.warm_start_steps:
                break
            step += 1
            loss, acc, meter, secs = train_step(v, x.to(device), y.to(device), device)
            yield StepEvent("warmup", step - config.warm_start_steps, 0, loss, 100 * acc, meter.bytes,
                            meter.raw_bytes, meter.peak_cuda, secs, v.scheduler.get_last_lr()[0])


def run(config: RunConfig, variant: str = "facto", store=None) -> Iterator[Event]:
    """Train one variant alone ('baseline' or 'facto'); same events as `compare`."""
    _check_choice("variant", variant, ["baseline", "facto"])
    return compare(config, store=store, variants=(variant,))


def layer_bytes(model: nn.Module, x: torch.Tensor, bits: int | None, block: int = 64) -> dict[str, int]:
    """Stored bytes per module for one training-mode forward of `x` (BN stats restored after)."""
    state = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    meter = measure_activations(model, x, bits, block)
    model.load_state_dict(state, strict=False)
    return {k: v for k, v in meter.by_module.items() if v}


def consume(events: Iterator[Event]) -> SummaryEvent:
    """Run a comparison to the end and return its summary (for scripts and tests)."""
    last = None
    for event in events:
        last = event
    assert isinstance(last, SummaryEvent)
    return last
