"""Rank x bits (x update) sweeps: the baseline trained once, then one short Facto run per point."""
from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Iterator, Sequence, Union

from ..config import RunConfig, bits_label
from .events import PHASES, Event, PhaseEvent, RunTracker, StartEvent, StepEvent, SummaryEvent
from .recorder import history_at, record
from .train import run, too_short_to_compare


@dataclass
class SweepStart:
    """Sent first: the grid about to run (the baseline counts as point 0)."""

    total: int
    configs: list[dict]
    sweep_id: int | None = None  # the sweep's id in the run history (None: not stored)
    type: str = "sweep_start"


@dataclass
class SweepPoint:
    """One finished configuration of the grid, measured against the dense baseline."""

    index: int
    total: int
    variant: str  # "baseline" | "facto"
    rank: str
    bits: int | None
    update: str
    status: str
    accuracy: float | None
    act_bytes: int
    baseline_accuracy: float | None
    baseline_bytes: int
    saving_pct: float
    accuracy_delta: float | None
    step_seconds: float
    config: dict
    type: str = "point"


CHANCE_FACTOR = 1.5  # a Facto run below 1.5 x chance accuracy (15 % for 10 classes) learned nothing


def sweep_configs(base: RunConfig, ranks: Sequence, bits: Sequence, updates: Sequence[str]) -> list[RunConfig]:
    """The grid as validated configs (bad values raise ValueError before anything trains).

    Each axis is a list of values, or one value (a rank text such as "0.5" is one value).
    """
    ranks, bits, updates = _values(ranks), _values(bits), _values(updates)
    if not ranks or not bits or not updates:
        raise ValueError("a sweep needs at least one rank, one bits value and one update mode")
    return [base.replace(rank=r, bits=b, update=u) for u, r, b in itertools.product(updates, ranks, bits)]


def _values(axis) -> list:
    """One axis of the grid as a list: a string or any other single value is a list of one."""
    if axis is None or isinstance(axis, (str, bytes, dict)) or not isinstance(axis, Iterable):
        return [axis]
    return list(axis)


def sweep(base: RunConfig, ranks: Sequence, bits: Sequence, updates: Sequence[str] = ("core",),
          store=None) -> Iterator[Union[Event, SweepStart, SweepPoint]]:
    """Run the grid; yields every training event, a SweepPoint after each configuration.

    With a `store`, the sweep gets an id there and each run is stored as one of its points:
    point 0, the dense baseline (named as the baseline), then points 1..n, the Facto settings.
    """
    configs = sweep_configs(base, ranks, bits, updates)
    total = len(configs) + 1
    sweep_id = None
    if store is not None and callable(getattr(store, "start_sweep", None)):
        sweep_id = store.start_sweep(total, {"base": base.to_dict(), "ranks": [str(r) for r in _values(ranks)],
                                             "bits": _values(bits), "updates": _values(updates)})
    yield SweepStart(total, [c.to_dict() for c in configs], sweep_id)
    runs = _SweepRuns(store, sweep_id)
    history = getattr(store, "path", None)  # where init='run:ID' is read
    baseline = yield from _one(record(run(base, "baseline", history), runs.point(0, baseline_name(base)),
                                      kind="sweep"))
    b_acc = baseline.accuracy.get("baseline")
    b_bytes = baseline.act_bytes.get("baseline", 0)
    yield _point(0, total, "baseline", base, baseline, b_acc, b_bytes)
    for i, config in enumerate(configs, start=1):
        summary = yield from _one(record(run(config, "facto", history), runs.point(i), kind="sweep"))
        yield _point(i, total, "facto", config, summary, b_acc, b_bytes)


def baseline_name(config: RunConfig) -> str:
    """'simple_cnn digits baseline': a sweep's dense run, named without Facto's settings."""
    return f"{config.model} {config.dataset} baseline"


class _SweepRuns:
    """The store as `record` sees it for each run of a sweep: every run it starts is stored as a
    point of sweep `sweep_id` (the store's other methods pass through)."""

    def __init__(self, store, sweep_id: int | None) -> None:
        self.store, self.sweep_id = store, sweep_id
        self.index: int | None = None
        self.name: str | None = None

    def point(self, index: int, name: str | None = None):
        """The store for point `index` (None when nothing is stored)."""
        if self.store is None or self.sweep_id is None:
            return self.store
        self.index, self.name = index, name
        return self

    def start_run(self, config, kind: str = "sweep", name: str | None = None) -> int:
        return self.store.start_run(config, kind=kind, name=name or self.name, sweep_id=self.sweep_id,
                                    sweep_point=self.index)

    def __getattr__(self, attr: str):
        return getattr(self.store, attr)


def _one(events: Iterator[Event]):
    last = None
    for event in events:
        last = event
        yield event
    if not isinstance(last, SummaryEvent):
        raise RuntimeError("a sweep run ended without a summary")
    return last


def _point(index: int, total: int, variant: str, config: RunConfig, summary: SummaryEvent,
           b_acc: float | None, b_bytes: int) -> SweepPoint:
    acc = summary.accuracy.get(variant)
    act = summary.act_bytes.get(variant, 0)
    return SweepPoint(
        index=index, total=total, variant=variant, rank=str(config.rank) if variant == "facto" else "-",
        bits=config.bits if variant == "facto" else None, update=config.update if variant == "facto" else "-",
        status=summary.status, accuracy=acc, act_bytes=act, baseline_accuracy=b_acc, baseline_bytes=b_bytes,
        saving_pct=100.0 * (1 - act / b_bytes) if b_bytes else 0.0,
        accuracy_delta=None if acc is None or b_acc is None else acc - b_acc,
        step_seconds=summary.step_seconds.get(variant, 0.0), config=config.to_dict())


def pareto_front(points: Sequence[SweepPoint]) -> list[SweepPoint]:
    """Points no other point beats on both saving and accuracy, by increasing saving."""
    done = [p for p in points if p.accuracy is not None]
    front = [p for p in done if not any(
        q.saving_pct >= p.saving_pct and q.accuracy >= p.accuracy
        and (q.saving_pct > p.saving_pct or q.accuracy > p.accuracy) for q in done)]
    return sorted(front, key=lambda p: p.saving_pct)


def points_table(points: Sequence[SweepPoint]) -> list[dict]:
    """Rows for a table / CSV, sorted by saving (largest first)."""
    rows = [{k: v for k, v in asdict(p).items() if k not in ("config", "type", "total")} for p in points]
    return sorted(rows, key=lambda r: -r["saving_pct"])


class SweepTracker:
    """Folds a sweep's events (`sweep`) into what a reader draws: the finished points, the run in
    progress (its config, variant, step) and, for that run, a `RunTracker` (`start`, `steps`,
    `evals`, `failures`, `summary()`), so a sweep can be listed and watched like a single run.
    """

    def __init__(self) -> None:
        self.total: int | None = None  # runs in the sweep, the baseline included
        self.configs: list[dict] = []  # the Facto configs, in order
        self.points: list[SweepPoint] = []
        self.current: dict | None = None  # config of the run in progress (None between runs)
        self.current_variant: str | None = None
        self.run = RunTracker()
        self.run_ids: list[int] = []  # stored runs of the sweep, in order
        self.train_size: int | None = None

    def add(self, event) -> None:
        if isinstance(event, SweepStart):
            self.total, self.configs = event.total, list(event.configs)
        elif isinstance(event, StartEvent):
            self.run = RunTracker()
            self.run.add(event)
            self.current, self.current_variant = event.config, next(iter(event.params), None)
            self.train_size = event.train_size
            if event.run_id is not None:
                self.run_ids.append(event.run_id)
        elif isinstance(event, PhaseEvent) and event.phase == PHASES[0]:  # a new run loads its data
            self.run = RunTracker()
        elif isinstance(event, SweepPoint):
            self.points.append(event)
            self.current = self.current_variant = None
        else:
            self.run.add(event)

    # -- the run in progress, like a RunTracker -------------------------------------------

    @property
    def start(self) -> StartEvent | None:
        return self.run.start if self.current is not None else None

    @property
    def steps(self) -> dict[str, list[StepEvent]]:
        return self.run.steps

    @property
    def evals(self) -> dict:
        return self.run.evals

    @property
    def failures(self) -> dict[str, str]:
        return self.run.failures

    @property
    def run_id(self) -> int | None:
        return self.run.run_id

    def summary(self, status: str = "completed") -> SummaryEvent:
        return self.run.summary(status)

    # -- progress ---------------------------------------------------------------------------

    @property
    def step(self) -> int:
        """Training steps done in the run in progress (0 between runs)."""
        if self.current is None:
            return 0
        return max((s.step for v, steps in self.run.steps.items() if v != "warmup" for s in steps), default=0)

    @property
    def run_steps(self) -> int | None:
        """Steps of the run in progress (None before it started)."""
        return self.run.start.total_steps if self.current is not None and self.run.start else None

    def fraction(self) -> float:
        """How much of the sweep is done, 0..1 (finished runs plus the part of the current one)."""
        if not self.total:
            return 0.0
        part = self.step / self.run_steps if self.run_steps else 0.0
        return min((len(self.points) + part) / self.total, 1.0)

    def describe_current(self) -> str:
        """'baseline (dense fp32)' or 'rank 0.25, 2 bits, update core' (empty between runs)."""
        if self.current is None:
            return ""
        if self.current_variant == "baseline":
            return "baseline (dense fp32)"
        c = self.current
        return f"rank {c.get('rank')}, {bits_label(c.get('bits'))}, update {c.get('update')}"

    def too_short(self) -> str | None:
        """Why the finished points can't rank the settings yet, and what to change (None if they can).

        Too short: the baseline's test accuracy is below facto.engine.train.TOO_SHORT_PCT, or every finished Facto
        run stayed near chance level (below CHANCE_FACTOR x 100 / classes).
        """
        base = next((p for p in self.points if p.variant == "baseline" and p.accuracy is not None), None)
        facto = [p for p in self.points if p.variant == "facto" and p.accuracy is not None]
        if base is None and not facto:
            return None
        config = (base or facto[0]).config
        images = f"{config['max_train']:,}" if config.get("max_train") else \
            (f"all {self.train_size:,}" if self.train_size else "all")
        epochs = config.get("epochs", 1)
        limit = f"a higher step limit (now {config['max_steps']} steps), " if config.get("max_steps") else ""
        advice = (f"Train longer: {limit}more epochs per run (now {epochs}) or more training images (now {images}); "
                  "every run of the sweep gets the same budget.")
        if too_short_to_compare(base and base.accuracy):
            return (f"The baseline reached only {base.accuracy:.1f} % test accuracy: these runs are too short "
                    f"to rank the settings. {advice}")
        chance = _chance_pct(config.get("dataset"))
        if facto and chance is not None and all(p.accuracy < CHANCE_FACTOR * chance for p in facto):
            so_far = " so far" if self.total and len(self.points) < self.total else ""
            return (f"Every Facto run{so_far} stayed near chance level (below {CHANCE_FACTOR * chance:.0f} % test "
                    f"accuracy; guessing gives {chance:.0f} %): they did not learn in this budget, so the "
                    f"grid says nothing about rank and bits yet. {advice}")
        return None


def _chance_pct(dataset: str | None) -> float | None:
    from .data import dataset_info

    try:
        return 100.0 / dataset_info(dataset).num_classes
    except (ValueError, TypeError):
        return None


def sweep_and_record(base: dict, ranks: Sequence, bits: Sequence, updates: Sequence[str],
                     store_path: str | None = None) -> Iterator:
    """`sweep(...)` from plain arguments, storing into RunStore(store_path): what a child process
    runs for the app (see facto.engine.jobs.in_child)."""
    with history_at(store_path) as store:
        yield from sweep(RunConfig.from_dict(base), ranks, bits, updates, store=store)
