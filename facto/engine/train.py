"""Training: one `Trainer` per model, and baseline vs Facto side by side as a stream of events.

`compare(config)` trains the dense fp32 baseline and the Facto model from the same initial
weights on the same batches, interleaved (a baseline step, a Facto step, ...), and yields
typed events (`facto.engine.events`) that the app and the CLI draw. Closing the generator early
(Stop) simply ends it; `facto.engine.recorder.record` stores a run as it goes (Stop -> interrupted).
A run also checks for stop requests (`facto.engine.stopping.check_stop`) between steps and inside
its long phases (loading, warm-up, factorizing, evaluation), where it yields no event for a while.
A run takes at most `MAX_RUN_STEPS` steps, warm-up included.

Each run owns its random generators: weights come from the seed (under facto's lock on
torch's global generator), the data order and the stochastic rounding from generators
seeded by the config, so other threads drawing or reseeding torch's global generator do
not change a run. A variant whose loss or gradient turns non-finite, or that runs out of
memory, stops with the reason while the other goes on.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..compress.backend import path_name
from ..config import INIT_RANDOM, RunConfig
from ..method.calibrate import calibrate
from ..method.factorize import describe
from ..memory.process import ResidentPeak, resident_bytes
from ..method.layers import FactorizedLayer, replace_module
from . import distributed
from .build import Variant, dense_model, layer_bytes, run_variants
from .data import DataBundle, dataset_info, load_data
from .devices import device_name, resolve_device
from .events import (EvalEvent, Event, FailureEvent, ModelsEvent, PhaseEvent, RunTracker, StartEvent, StepEvent,
                     SummaryEvent)
from .optim import make_optimizer
from .starting import InitReport, check_init, load_state, starting_model
from .step import NonFiniteError, autocast, train_step
from .stopping import RunStopped, check_stop


class RunTooLongError(ValueError):
    """A run's settings ask for more steps than `MAX_RUN_STEPS` (known once its data is loaded)."""

NONFINITE_ADVICE = "try a lower learning rate or more bits"
OOM_ADVICE = "try a smaller batch, fewer bits or recompute on"
MAX_RUN_STEPS = 10**9  # warm-up plus training steps of one run: far beyond any run that ends
TOO_SHORT_PCT = 50.0  # a baseline below this test accuracy has not learned enough to compare or rank


def too_short_to_compare(baseline_accuracy: float | None) -> bool:
    """Whether a run whose baseline reached this test accuracy (%) is too short to compare with."""
    return baseline_accuracy is not None and baseline_accuracy < TOO_SHORT_PCT


def too_short_note(baseline_accuracy: float | None, max_steps: int | None = None) -> str | None:
    """What the app and the CLI say under a comparison too short to compare (None when it is not);
    `max_steps`: the run's step limit, named first when there was one."""
    if not too_short_to_compare(baseline_accuracy):
        return None
    reached = f"The baseline reached only {baseline_accuracy:.1f} % test accuracy"
    if max_steps:
        return (f"{reached}: this run, stopped at its limit of {max_steps} steps, is too short to compare the two. "
                "Raise the limit (or train more epochs or on more images) before reading the accuracy change.")
    return (f"{reached}: this run is too short to compare the two. Train longer (more epochs or more training "
            "images) before reading the accuracy change.")


def planned_steps(config: RunConfig, steps_per_epoch: int) -> int:
    """The training steps of a run: all its epochs, or fewer where max_steps stops it earlier."""
    steps = steps_per_epoch * config.epochs
    return min(steps, config.max_steps) if config.max_steps else steps


# ----------------------------------------------------------------------------- one model's training

def set_model_update(model: nn.Module, update: str) -> None:
    """Switch which factor trains in every factorized layer (factor schedules)."""
    for m in model.modules():
        if isinstance(m, FactorizedLayer):
            m.set_update(update)


class OwnedDropout(nn.Dropout):
    """nn.Dropout drawing its masks from a run's own generator (not torch's global one)."""

    def __init__(self, p: float, generator: torch.Generator):
        super().__init__(p)
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p == 1:
            return x * 0
        keep = torch.empty_like(x).bernoulli_(1 - self.p, generator=self.generator)
        return x * keep / (1 - self.p)


def own_dropout(model: nn.Module, generator: torch.Generator) -> None:
    """Swap every nn.Dropout for an `OwnedDropout` using `generator`, in place."""
    for name, m in list(model.named_modules()):
        if type(m) is nn.Dropout and name:
            replace_module(model, name, OwnedDropout(m.p, generator))


@dataclass
class StepResult:
    loss: float
    accuracy: float
    act_bytes: int
    raw_bytes: int
    peak_cuda: int | None
    cuda_allocated: int | None
    seconds: float
    lr: float
    process_peak: int | None = None  # resident bytes of the process at most during the step (CPU, Linux)
    cuda_reserved: int | None = None  # bytes the CUDA allocator held from the driver at most during the step


@dataclass
class Trainer:
    """One model being trained: optimizer, schedule, compression setting and its own generator."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    bits: int | None = None
    block: int = 64
    precision: str = "fp32"
    seed: int = 0
    cycle: list[str] = field(default_factory=list)
    step: int = 0
    failure: str | None = None
    own_peak: bool = True  # reset the process's resident peak before each step: this trainer's own peak

    def __post_init__(self) -> None:
        self.resident = ResidentPeak() if self.device.type == "cpu" else None
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)
        own_dropout(self.model, self.generator)
        self.scaler = (torch.amp.GradScaler(self.device.type)
                       if self.precision == "fp16" and self.device.type == "cuda" else None)

    @classmethod
    def create(cls, variant: Variant, model: nn.Module, config: RunConfig, total_steps: int,
               device: torch.device) -> "Trainer":
        """A trainer for `model` (built for `variant`) with the config's optimizer, schedule, block and
        seed, and the variant's bits, precision and factor cycle."""
        wrapped = distributed.wrap(model, device)
        opt, sched = make_optimizer(config, wrapped, total_steps)
        offset = {"baseline": 1, "facto": 2}.get(variant.name, 0)
        return cls(variant.name, wrapped, opt, sched, device, bits=variant.bits, block=config.block,
                   precision=variant.precision, seed=config.seed * 1009 + offset, cycle=list(variant.cycle))

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        """One optimisation step (`facto.engine.step.train_step`), timed, with the allocator's peak on
        CUDA and the process's resident peak on the CPU (what the machine gave the process).

        Raises NonFiniteError (the weights are left untouched) when the loss or a gradient
        is not finite.
        """
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.resident is not None and self.own_peak:
            self.resident.reset()
        start = time.perf_counter()
        try:
            out = train_step(self.model, x, y, bits=self.bits, block=self.block, precision=self.precision,
                             optimizer=self.optimizer, scaler=self.scaler, generator=self.generator,
                             check_finite=True)
        except NonFiniteError as error:
            raise NonFiniteError(f"{error} at step {self.step + 1}") from None
        self.scheduler.step()
        peak = allocated = reserved = None
        if cuda:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            allocated = torch.cuda.memory_allocated(self.device)
            reserved = torch.cuda.max_memory_reserved(self.device)  # cached blocks too: what the GPU gave
        self.step += 1
        seconds = time.perf_counter() - start
        return StepResult(out.loss, 100.0 * out.correct / max(len(y), 1), out.meter.bytes, out.meter.raw_bytes,
                          peak, allocated, seconds, self.scheduler.get_last_lr()[0],
                          self.resident.read() if self.resident is not None else None, reserved)

    @torch.no_grad()
    def evaluate(self, loader) -> tuple[float, float]:
        """Test loss and accuracy (%)."""
        return evaluate(self.model, loader, self.device, self.precision)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, precision: str = "fp32") -> tuple[float, float]:
    """Test loss and accuracy (%) of `model` on `loader`."""
    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    for x, y in loader:
        check_stop()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, precision):
            out = model(x).float()
        loss_sum += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
        total += y.numel()
    return distributed.reduce_sums(loss_sum, correct, total, device)


def failure_reason(error: BaseException) -> str | None:
    """The reason a variant stops for `error` (None when the error is not a variant's own)."""
    if isinstance(error, NonFiniteError):
        return f"{error}, {NONFINITE_ADVICE}"
    if isinstance(error, torch.OutOfMemoryError):
        first = str(error).strip().splitlines()[0] if str(error).strip() else "out of memory"
        return f"out of memory ({first[:160]}), {OOM_ADVICE}"
    return None


# ----------------------------------------------------------------------------- baseline vs Facto

@dataclass
class Schedule:
    """When a run steps, evaluates and switches factors."""

    total: int
    steps_per_epoch: int
    eval_every: int
    cycle_every: int

    def __post_init__(self) -> None:
        if self.total > MAX_RUN_STEPS:
            raise RunTooLongError(
                f"a run of {self.total} steps ({self.steps_per_epoch} per epoch) is not allowed: at most "
                f"{MAX_RUN_STEPS} steps; lower the epochs or set a step limit (max_steps)")

    @property
    def epochs(self) -> int:
        return math.ceil(self.total / self.steps_per_epoch)

    def evaluates_after(self, step: int) -> bool:
        end_of_epoch = step % self.steps_per_epoch == 0 or step == self.total
        return end_of_epoch or bool(self.eval_every and step % self.eval_every == 0)

    def evals_planned(self) -> int:
        """How many steps `evaluates_after` (counted, not enumerated: a long run plans at once)."""
        epoch_ends = self.total // self.steps_per_epoch + (self.total % self.steps_per_epoch != 0)
        if not self.eval_every:
            return epoch_ends
        both = math.lcm(self.steps_per_epoch, self.eval_every)
        last_only_at_end = self.total % self.steps_per_epoch != 0 and self.total % self.eval_every == 0
        return epoch_ends + self.total // self.eval_every - self.total // both - last_only_at_end

    def factor_for(self, trainer: Trainer, step: int, epoch: int) -> str | None:
        """The factor `trainer` switches to before `step` (None: no switch)."""
        if not trainer.cycle:
            return None
        if self.cycle_every:
            if (step - 1) % self.cycle_every == 0:
                return trainer.cycle[((step - 1) // self.cycle_every) % len(trainer.cycle)]
            return None
        if step % self.steps_per_epoch == 1 or self.steps_per_epoch == 1:
            return trainer.cycle[epoch % len(trainer.cycle)]
        return None


def compare(config: RunConfig, variants: tuple[str, ...] = ("baseline", "facto"),
            data: DataBundle | None = None, history: str | Path | None = None) -> Iterator[Event]:
    """Train baseline and Facto side by side from the same weights; yield events as they happen.

    The starting weights (`config.init`) are checked before the first event, so a file or run that
    does not fit raises `InitError` with nothing started. Trained from weights that have learned
    (an init other than random, or a warm-up), both variants are tested once before their first
    step (step 0). After the last step a `ModelsEvent` carries each variant's final weights; a stop
    request or Ctrl-C that reaches the steps sends one with the weights trained so far, then goes on
    (RunStopped, KeyboardInterrupt).

    Args:
        variants: which of baseline / facto to train (`run` trains one).
        data: a loaded DataBundle to reuse (else loaded from the config).
        history: the run history that `init='run:ID'` reads (None: the default one).
    """
    if not isinstance(config, RunConfig):
        raise ValueError(f"config={type(config).__name__} is not allowed: use a facto.RunConfig "
                         "(RunConfig.from_dict(d) for a dict of settings)")
    variants = (variants,) if isinstance(variants, str) else tuple(variants)
    if not variants:
        raise ValueError("variants=() is not allowed: use baseline and/or facto")
    tracker = RunTracker()
    chosen = run_variants(config, variants)
    names = [v.name for v in chosen]
    warm_name = config.start_dataset
    warm_info = dataset_info(warm_name)
    check_init(config, warm_info.num_classes, warm_info.in_channels, history)  # InitError: nothing started
    distributed.init_from_env()
    device = distributed.device_for(resolve_device(config.device))
    yield PhaseEvent("loading", config.to_dict(), names)
    check_stop()
    if data is None:
        data = load_data(config.dataset, config.data_dir, config.batch_size, download=config.download,
                         seed=config.seed, max_train=config.max_train, max_test=config.max_test)
    check_stop()
    train_loader = distributed.shard_loader(data.train_loader, config.seed)
    schedule = Schedule(planned_steps(config, len(train_loader)), len(train_loader),
                        config.eval_every, config.cycle_every)
    if config.warm_start_steps > MAX_RUN_STEPS - schedule.total:
        raise RunTooLongError(
            f"warm_start_steps={config.warm_start_steps} is not allowed with {schedule.total} training steps: "
            f"warm-up and training together take at most {MAX_RUN_STEPS} steps")
    warm_loader = train_loader
    if warm_name != config.dataset:
        warm_data = load_data(warm_name, config.data_dir, config.batch_size, download=config.download,
                              seed=config.seed, max_train=config.max_train, max_test=config.max_test)
        warm_loader = distributed.shard_loader(warm_data.train_loader, config.seed)
    check_stop()
    if any(v.uses_kernels for v in chosen):
        path_name(device)  # the compression kernels load (or compile) now, with the libraries, not in a step
    before_model = resident_bytes() if device.type == "cpu" else None
    dense, init_report = starting_model(config, warm_info.num_classes, warm_info.in_channels, device, history)
    if config.warm_start_steps:
        yield PhaseEvent("warm-up", config.to_dict(), names)
        yield from warm_start(dense, config, warm_loader, device)
    handover = None
    if warm_name != config.dataset:
        target = dense_model(config, data.info.num_classes, data.info.in_channels, device)
        handover = load_state(target, dense.state_dict(), f"the warm-up on {warm_name}", config.model)
        dense = target
    yield PhaseEvent("factorizing", config.to_dict(), names)
    models = {}
    for v in chosen:
        check_stop()
        models[v.name] = v.build(dense)
    check_stop()
    learned = int(learned_start(config))
    calibration = None
    if "facto" in models and config.refit and learned:
        order = data.train_loader.generator.get_state()  # the batches drawn here leave the run's order alone
        calibration = calibrate(models["facto"], dense, data.train_loader)  # no labels, no gradient
        data.train_loader.generator.set_state(order)
    del dense
    probe = next(iter(data.train_loader))[0][: config.batch_size].to(device)
    start = StartEvent(
        config=config.to_dict(), device=str(device), device_name=device_name(device),
        steps_per_epoch=schedule.steps_per_epoch, total_steps=schedule.total, train_size=data.train_size,
        test_size=data.test_size, params={k: _param_count(m) for k, m in models.items()},
        trainable_params={k: _param_count(m, trainable=True) for k, m in models.items()},
        layer_bytes={k: layer_bytes(m, probe, config.bits if k == "facto" else None, config.block)
                     for k, m in models.items()},
        report=[asdict(r) for r in describe(models["facto"])] if "facto" in models else [],
        evals_planned=schedule.evals_planned() + learned, process_before_model=before_model,
        init=_report_dict(init_report), handover=_report_dict(handover) if handover else None,
        calibration=calibration)
    tracker.add(start)
    yield start
    trainers = [Trainer.create(v, models[v.name], config, schedule.total, device) for v in chosen]
    if len(trainers) == 1:  # alone in its process: its peak is the process's (getrusage's ru_maxrss agrees)
        trainers[0].own_peak = False
    try:
        if learned:  # each variant's test accuracy as it starts: what factorizing trained weights costs
            for t in trainers:
                check_stop()
                began = time.perf_counter()
                loss, acc = t.evaluate(data.test_loader)
                event = EvalEvent(t.name, 0, 0, loss, acc, time.perf_counter() - began)
                tracker.add(event)
                yield event
        for event in _train(trainers, schedule, train_loader, data.test_loader):
            tracker.add(event)
            yield event
    except (RunStopped, KeyboardInterrupt):  # Stop or Ctrl-C: the weights trained so far go first
        if any(t.step for t in trainers):
            yield ModelsEvent(trained_states(trainers))
        raise
    yield ModelsEvent(trained_states(trainers))
    yield tracker.summary("completed" if len(tracker.failures) < len(trainers) else "failed")


def learned_start(config: RunConfig) -> bool:
    """Whether a run starts from weights that have learned (an init other than random, or a warm-up):
    such a run tests both variants before their first step."""
    return config.init != INIT_RANDOM or config.warm_start_steps > 0


def trained_states(trainers: list[Trainer]) -> dict[str, dict[str, torch.Tensor]]:
    """Each variant's weights as `trained_state` gives them, for the variants that did not fail."""
    return {t.name: trained_state(t.model) for t in trainers if not t.failure}


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A trained model's weights as a plain state dict of its original architecture, on the CPU
    (a Facto model through `facto.to_dense`)."""
    from ..method.dense import to_dense

    plain = to_dense(getattr(model, "module", model))  # unwrapped from DistributedDataParallel
    return {k: v.detach().to("cpu", copy=True) for k, v in plain.state_dict().items()}


def _report_dict(report: InitReport) -> dict:
    return {**asdict(report), "line": report.line()}


def _train(trainers: list[Trainer], schedule: Schedule, train_loader, test_loader) -> Iterator[Event]:
    """The step loop: every live trainer takes each batch in turn; tests after epochs / every N."""
    step = 0
    for epoch in range(schedule.epochs):
        distributed.set_epoch(train_loader, epoch)
        for x, y in train_loader:
            if step >= schedule.total or all(t.failure for t in trainers):
                return
            check_stop()
            step += 1
            for t in trainers:
                if t.failure:
                    continue
                factor = schedule.factor_for(t, step, epoch)
                if factor:
                    set_model_update(t.model, factor)
                xd, yd = x.to(t.device, non_blocking=True), y.to(t.device, non_blocking=True)
                try:
                    r = t.train_step(xd, yd)
                except (NonFiniteError, torch.OutOfMemoryError) as error:
                    t.failure = failure_reason(error)
                    if t.device.type == "cuda":
                        torch.cuda.empty_cache()
                    yield FailureEvent(t.name, step, t.failure)
                    continue
                loss, acc = distributed.reduce_mean(r.loss, r.accuracy, t.device)
                yield StepEvent(t.name, step, epoch + 1, loss, acc, r.act_bytes, r.raw_bytes, r.peak_cuda,
                                r.seconds, r.lr, r.cuda_allocated, r.process_peak, r.cuda_reserved)
            if schedule.evaluates_after(step):
                for t in trainers:
                    if not t.failure:
                        began = time.perf_counter()
                        loss, acc = t.evaluate(test_loader)
                        yield EvalEvent(t.name, step, epoch + 1, loss, acc, time.perf_counter() - began)


def warm_start(model: nn.Module, config: RunConfig, loader, device) -> Iterator[StepEvent]:
    """Train the dense model `warm_start_steps` steps before it is copied and factorized."""
    t = Trainer.create(Variant("warmup", "dense", config), model, config, config.warm_start_steps, device)
    while t.step < config.warm_start_steps:
        for x, y in loader:
            if t.step >= config.warm_start_steps:
                break
            check_stop()
            r = t.train_step(x.to(device), y.to(device))
            yield StepEvent("warmup", t.step - config.warm_start_steps, 0, r.loss, r.accuracy, r.act_bytes,
                            r.raw_bytes, r.peak_cuda, r.seconds, r.lr, r.cuda_allocated, r.process_peak,
                            r.cuda_reserved)


def run(config: RunConfig, variant: str = "facto", history: str | Path | None = None) -> Iterator[Event]:
    """Train one variant alone ('baseline' or 'facto'); same events as `compare`."""
    if variant not in ("baseline", "facto"):
        raise ValueError(f"variant={variant!r} is not allowed: use baseline or facto")
    return compare(config, variants=(variant,), history=history)


def train_model(model: nn.Module, variant: Variant, config: RunConfig, data: DataBundle,
                device: torch.device) -> float:
    """Train `model` (built for `variant`) alone with the config's schedule; its test accuracy (%).

    The same Trainer and step loop as `compare` (the benchmark trains its methods with it).
    """
    schedule = Schedule(planned_steps(config, len(data.train_loader)),
                        len(data.train_loader), 0, 0)
    trainer = Trainer.create(variant, model, config, schedule.total, device)
    for event in _train([trainer], schedule, data.train_loader, data.test_loader):
        if isinstance(event, FailureEvent):
            raise RuntimeError(event.reason)
    return trainer.evaluate(data.test_loader)[1]


def _param_count(model: nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def consume(events: Iterator[Event]) -> SummaryEvent:
    """Run a comparison to the end and return its summary (for scripts and tests)."""
    last = None
    for event in events:
        last = event
    if not isinstance(last, SummaryEvent):
        raise RuntimeError("the run ended without a summary")
    return last


def compare_and_record(config: dict, store_path: str | None = None) -> Iterator[Event]:
    """`record(compare(config), RunStore(store_path))` from plain arguments: what a child process
    runs for the app (see facto.engine.jobs.in_child). No store_path: nothing is stored."""
    from .recorder import history_at, record

    with history_at(store_path) as store:
        yield from record(compare(RunConfig.from_dict(config), history=store_path), store)
