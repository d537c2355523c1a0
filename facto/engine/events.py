"""The typed events a run yields, and `RunTracker`, which folds them into a summary at any point.

Events are plain dataclasses: the app and the CLI draw them, `facto.engine.recorder` stores them.
`run_id` is filled in by the recorder when the run is stored (None otherwise).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Union

VARIANTS = ("baseline", "facto")


PHASES = ("loading", "warm-up", "factorizing")


@dataclass
class PhaseEvent:
    """Sent as a run enters each phase before its first step (loading the data, the dense
    warm-up, factorizing): the run is stored from the first one on, so a run stopped or cut off
    there stays in the history."""

    phase: str
    config: dict
    variants: list[str]
    run_id: int | None = None
    type: str = "phase"


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
    evals_planned: int = 0
    run_id: int | None = None
    process_before_model: int | None = None  # resident bytes with the data and kernels loaded, before any model (CPU)
    init: dict | None = None  # where the weights started: facto.engine.starting.InitReport as a dict, with its line
    handover: dict | None = None  # a warm-up on another dataset: how its model was loaded into the run's
    calibration: dict | None = None  # Facto's factors refitted and BatchNorm re-estimated (facto.engine.train.calibrate)
    type: str = "start"


@dataclass
class StepEvent:
    """One optimisation step of one variant (loss and accuracy on its training batch)."""

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
    cuda_allocated: int | None = None
    process_peak: int | None = None  # resident bytes of the process at most during the step (CPU, Linux)
    cuda_reserved: int | None = None  # what the CUDA allocator held from the driver at most during the step
    type: str = "step"


@dataclass
class EvalEvent:
    """A test-set evaluation of one variant."""

    variant: str
    step: int
    epoch: int
    test_loss: float
    test_accuracy: float
    seconds: float = 0.0
    type: str = "eval"


@dataclass
class FailureEvent:
    """One variant stopped (non-finite loss, out of memory); the others go on."""

    variant: str
    step: int
    reason: str
    type: str = "failure"


@dataclass
class ModelsEvent:
    """Sent once the steps are done, or stopped: each variant's last weights as a plain state dict of
    the original architecture (the Facto model through `facto.to_dense`), on the CPU. The recorder
    keeps them with the run and passes on only their sizes (`kept`: variant -> bytes of its file)."""

    states: dict[str, dict]
    kept: dict[str, int] = field(default_factory=dict)
    run_id: int | None = None
    error: str | None = None  # why they could not be kept (a full disk, a read-only folder); the run is not failed
    type: str = "models"


@dataclass
class SummaryEvent:
    """The end of a run: both accuracies, the memory saving, timings, and any variant that failed.

    `accuracy` is each variant's test accuracy at one test point, the latest every variant that
    still trains has reached (`tested_step`, in `tested_epoch`), so the change compares the two
    after the same training; a variant that failed keeps its last test."""

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
    failures: dict[str, str] = field(default_factory=dict)
    run_id: int | None = None
    tested_step: int | None = None  # the test point `accuracy` is from (the latest every variant reached)
    tested_epoch: int | None = None
    process_peak: dict[str, int | None] = field(default_factory=dict)  # resident peak of a step, per variant (CPU)
    process_before_model: int | None = None  # resident bytes with the data and kernels loaded, before any model (CPU)
    peak_reserved: dict[str, int | None] = field(default_factory=dict)  # CUDA allocator's reserved peak, per variant
    type: str = "summary"


def steps_done(steps: dict[str, int], failures: dict[str, str] | None = None) -> int:
    """The steps of a run every variant still training completed (a Stop can come between the
    variants of one step, and one that failed stopped counting); 0 before the first."""
    live = [n for v, n in steps.items() if v not in (failures or {})]
    return min(live) if live else max(steps.values(), default=0)


Event = Union[PhaseEvent, StartEvent, StepEvent, EvalEvent, FailureEvent, ModelsEvent, SummaryEvent]


class RunTracker:
    """Accumulates events; gives a consistent summary at any point (also after a Stop)."""

    def __init__(self) -> None:
        self.start: StartEvent | None = None
        self.steps: dict[str, list[StepEvent]] = {}
        self.evals: dict[str, list[EvalEvent]] = {}
        self.failures: dict[str, str] = {}
        self.began = time.perf_counter()

    def add(self, event: Event) -> None:
        if isinstance(event, StartEvent):
            self.start = event
        elif isinstance(event, StepEvent):
            self.steps.setdefault(event.variant, []).append(event)
        elif isinstance(event, EvalEvent):
            self.evals.setdefault(event.variant, []).append(event)
        elif isinstance(event, FailureEvent):
            self.failures[event.variant] = event.reason

    @property
    def run_id(self) -> int | None:
        return self.start.run_id if self.start else None

    def summary(self, status: str = "completed") -> SummaryEvent:
        variants = [v for v in VARIANTS if v in self.steps] or [v for v in self.steps if v != "warmup"]
        tested = self.common_test(variants)
        point = next(iter(tested.values()), None)  # one of the tests: its step and epoch
        acc = {v: (self.evals[v][-1].test_accuracy if self.evals.get(v) else None) for v in variants}
        acc.update({v: e.test_accuracy for v, e in tested.items()})
        act = {v: max(s.act_bytes for s in self.steps[v]) for v in variants}
        secs = {v: statistics.median(s.step_seconds for s in self.steps[v][1:] or self.steps[v])
                for v in variants}
        saving = delta = None
        if act.get("baseline") and "facto" in act:
            saving = 100.0 * (1 - act["facto"] / act["baseline"])
        if acc.get("baseline") is not None and acc.get("facto") is not None and not self.failures:
            delta = acc["facto"] - acc["baseline"]
        return SummaryEvent(status=status, steps={v: len(self.steps[v]) for v in variants},
                            accuracy=acc, act_bytes=act, peak_cuda=self._most(variants, "peak_cuda"),
                            step_seconds=secs, params=self.start.params if self.start else {},
                            wall_seconds=time.perf_counter() - self.began, saving_pct=saving,
                            accuracy_delta=delta, failures=dict(self.failures), run_id=self.run_id,
                            tested_step=point.step if point else None, tested_epoch=point.epoch if point else None,
                            process_peak=self._most(variants, "process_peak"),
                            peak_reserved=self._most(variants, "cuda_reserved"),
                            process_before_model=self.start.process_before_model if self.start else None)

    def _most(self, variants: list[str], field: str) -> dict[str, int | None]:
        """Per variant, the largest `field` of its steps (None where no step measured it)."""
        return {v: max((getattr(s, field) for s in self.steps[v] if getattr(s, field) is not None), default=None)
                for v in variants}

    def common_test(self, variants: list[str]) -> dict[str, EvalEvent]:
        """The tests of the variants still training at the latest step after which every one of them
        was tested (empty before each has a test)."""
        live = [v for v in variants if v not in self.failures]
        steps = [{e.step for e in self.evals.get(v, [])} for v in live]
        common = set.intersection(*steps) if steps else set()
        if not common:
            return {}
        step = max(common)
        return {v: next(e for e in self.evals[v] if e.step == step) for v in live}
