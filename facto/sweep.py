"""Rank x bits (x update) sweeps: the baseline trained once, then one short Facto run per point."""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Iterator, Sequence, Union

from .config import RunConfig
from .events import Event, SummaryEvent
from .recorder import record
from .train import run


@dataclass
class SweepStart:
    """Sent first: the grid about to run (the baseline counts as point 0)."""

    total: int
    configs: list[dict]
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


def sweep_configs(base: RunConfig, ranks: Sequence, bits: Sequence, updates: Sequence[str]) -> list[RunConfig]:
    """The grid as validated configs (bad values raise ValueError before anything trains)."""
    if not ranks or not bits or not updates:
        raise ValueError("a sweep needs at least one rank, one bits value and one update mode")
    return [base.replace(rank=r, bits=b, update=u) for u, r, b in itertools.product(updates, ranks, bits)]


def sweep(base: RunConfig, ranks: Sequence, bits: Sequence, updates: Sequence[str] = ("core",),
          store=None) -> Iterator[Union[Event, SweepStart, SweepPoint]]:
    """Run the grid; yields every training event, a SweepPoint after each configuration."""
    configs = sweep_configs(base, ranks, bits, updates)
    total = len(configs) + 1
    yield SweepStart(total, [c.to_dict() for c in configs])
    baseline = yield from _one(record(run(base, "baseline"), store, kind="sweep"))
    b_acc = baseline.accuracy.get("baseline")
    b_bytes = baseline.act_bytes.get("baseline", 0)
    yield _point(0, total, "baseline", base, baseline, b_acc, b_bytes)
    for i, config in enumerate(configs, start=1):
        summary = yield from _one(record(run(config, "facto"), store, kind="sweep"))
        yield _point(i, total, "facto", config, summary, b_acc, b_bytes)


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
        index=index, total=total, variant=variant, rank=str(config.rank),
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
