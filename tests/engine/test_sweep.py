"""facto.engine.sweep.SweepTracker: what the Sweep page draws, from a real tiny sweep and from made-up points."""
from __future__ import annotations

import pytest

from facto.config import RunConfig
from facto.engine.events import StartEvent
from facto.engine.sweep import SweepPoint, SweepTracker, pareto_front, sweep
from facto.store.history import RunStore

TINY = dict(max_train=128, max_test=64, batch_size=32, epochs=1, device="cpu")


def test_tracker_follows_a_sweep_points_current_run_and_run_ids(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    tracker = SweepTracker()
    seen = []
    seen_events = []
    for event in sweep(RunConfig(**TINY, max_steps=2), [0.5], [2, 4], ["core"], store=store):
        seen_events.append(event)
        tracker.add(event)
        if isinstance(event, StartEvent):
            seen.append((tracker.describe_current(), tracker.run_steps, tracker.start is event))
        if getattr(event, "type", "") == "step":
            assert 0 < tracker.step <= 2 and 0 < tracker.fraction() <= 1
    assert seen == [("baseline (dense fp32)", 2, True), ("rank 0.5, 2 bits, update core", 2, True),
                    ("rank 0.5, 4 bits, update core", 2, True)]
    assert tracker.total == 3 and [p.variant for p in tracker.points] == ["baseline", "facto", "facto"]
    assert tracker.current is None and tracker.step == 0 and tracker.fraction() == 1.0
    assert tracker.run_ids == [r.id for r in reversed(store.list_runs())]
    assert tracker.train_size == 128
    # each run is stored as a point of one sweep: the baseline first, named as the baseline
    (start,) = [e for e in seen_events if getattr(e, "type", "") == "sweep_start"]
    runs = list(reversed(store.list_runs()))
    assert start.sweep_id is not None and {r.sweep_id for r in runs} == {start.sweep_id}
    assert [r.sweep_point for r in runs] == [0, 1, 2] and {r.kind for r in runs} == {"sweep"}
    assert "baseline" in runs[0].name and "rank" not in runs[0].name and "bits" not in runs[0].name
    assert "bits=2" in runs[1].name and "bits=4" in runs[2].name


def test_a_second_sweep_gets_its_own_id_and_a_sweep_without_a_store_none(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    config = RunConfig(**TINY, max_steps=1)
    ids = [next(iter(sweep(config, [0.5], [4], ["core"], store=store))).sweep_id for _ in range(2)]
    assert ids[0] != ids[1]
    assert next(iter(sweep(config, [0.5], [4], ["core"]))).sweep_id is None


def _point(variant: str, accuracy: float, index: int = 0, **config) -> SweepPoint:
    cfg = RunConfig(**{**TINY, **config}).to_dict()
    return SweepPoint(index, 3, variant, "0.5", 4, "core", "completed", accuracy, 10, 90.0, 100, 90.0,
                      accuracy - 90.0, 0.1, cfg)


def test_pareto_front_keeps_the_points_nothing_beats_on_both_saving_and_accuracy():
    def point(saving: float, accuracy: float | None) -> SweepPoint:
        p = _point("facto", accuracy if accuracy is not None else 0.0)
        p.saving_pct, p.accuracy = saving, accuracy
        return p

    a, b, c, d, e = point(50, 90), point(60, 95), point(70, 80), point(70, 85), point(80, None)
    tie = point(60, 95)
    # a is beaten by b (more saving, more accuracy); c by d (same saving, more accuracy); e has no accuracy
    assert pareto_front([c, a, e, d, b]) == [b, d]
    assert pareto_front([b, tie]) == [b, tie]  # equal points do not beat each other
    assert pareto_front([]) == [] and pareto_front([e]) == []


def test_too_short_when_the_baseline_did_not_learn():
    tracker = SweepTracker()
    tracker.total = 3
    assert tracker.too_short() is None
    tracker.points = [_point("baseline", 31.0)]
    text = tracker.too_short()
    assert "31.0 %" in text and "more epochs per run (now 1)" in text and "(now 128)" in text


def test_too_short_when_every_facto_run_is_at_chance_level():
    tracker = SweepTracker()
    tracker.total = 3
    tracker.points = [_point("baseline", 92.0), _point("facto", 11.0, 1), _point("facto", 9.5, 2)]
    text = tracker.too_short()
    assert "chance level" in text and "guessing gives 10 %" in text and "so far" not in text
    tracker.points[2] = _point("facto", 80.0, 2)
    assert tracker.too_short() is None


def test_an_axis_given_as_one_value_is_a_list_of_one():
    """sweep(base, ranks="0.25", ...) walked the string's characters ('0', '.', ...); a plain
    number raised TypeError. One value, any kind, is one point of its axis."""
    from facto.engine.sweep import sweep_configs

    configs = sweep_configs(RunConfig(), ranks="0.25", bits=None, updates="last")
    assert [(str(c.rank), c.bits, c.update) for c in configs] == [("0.25", None, "last")]
    configs = sweep_configs(RunConfig(), ranks=(0.25, 0.5), bits=range(2, 4), updates=["core"])
    assert [(str(c.rank), c.bits) for c in configs] == [("0.25", 2), ("0.25", 3), ("0.5", 2), ("0.5", 3)]
    with pytest.raises(ValueError, match="at least one rank"):
        sweep_configs(RunConfig(), ranks=[], bits=4, updates="core")
