"""The training engine: config validation, compare() events, Stop, determinism, store, sweep."""
import dataclasses
import functools

import pytest
import torch

from facto.config import RunConfig, preset
from facto.engine.events import EvalEvent, StartEvent, StepEvent, SummaryEvent
from facto.engine.recorder import record
from facto.engine.sweep import sweep
from facto.engine.train import compare, consume, run
from facto.store.history import RunStore

TINY = dict(max_train=192, max_test=64, batch_size=32, epochs=1, device="cpu")


@pytest.mark.parametrize("field, value", [
    ("model", "nope"), ("dataset", "imagenet"), ("rank", 2.0), ("rank", 0), ("update", "middle"),
    ("bits", 0), ("bits", 9), ("block", 0), ("epochs", 0), ("batch_size", -1), ("lr", 0.0),
    ("optimizer", "lbfgs"), ("device", "tpu"), ("warm_start_steps", -1), ("max_steps", 0),
])
def test_bad_config_values_raise_value_error_naming_them(field, value):
    with pytest.raises(ValueError, match=field):
        RunConfig(**{field: value})


def test_presets_give_their_recipes_and_take_overrides():
    recipes = {"paper": ("last", 4, False), "balanced": ("core", 4, True), "max-saving": ("core", 2, True)}
    for name, (update, bits, recompute) in recipes.items():
        c = preset(name)
        assert (c.update, c.bits, c.recompute, str(c.rank)) == (update, bits, recompute, "0.5")
    assert preset("paper", bits=8, model="resnet20").bits == 8 and preset("paper", bits=8).update == "last"
    with pytest.raises(ValueError, match="preset='magic'"):
        preset("magic")
    with pytest.raises(ValueError, match="bits=9"):
        preset("balanced", bits=9)


def test_compare_yields_typed_events_and_a_consistent_summary():
    events = list(compare(RunConfig(**TINY, eval_every=3)))
    assert [(e.phase, e.variants) for e in events[:2]] == [("loading", ["baseline", "facto"]),
                                                           ("factorizing", ["baseline", "facto"])]
    events = events[2:]
    assert isinstance(events[0], StartEvent)
    assert set(events[0].layer_bytes) == {"baseline", "facto"}
    assert events[0].report, "the factorization report travels with the start event"
    steps = [e for e in events if isinstance(e, StepEvent)]
    evals = [e for e in events if isinstance(e, EvalEvent)]
    summary = events[-1]
    assert isinstance(summary, SummaryEvent) and summary.status == "completed"
    # interleaved: baseline step 1, facto step 1, baseline step 2, ...
    assert [(s.variant, s.step) for s in steps[:4]] == [("baseline", 1), ("facto", 1), ("baseline", 2), ("facto", 2)]
    assert summary.steps == {"baseline": 6, "facto": 6}
    assert {e.step for e in evals} == {3, 6}
    assert summary.act_bytes["facto"] < summary.act_bytes["baseline"]
    last_facto_eval = [e for e in evals if e.variant == "facto"][-1]
    assert summary.accuracy["facto"] == last_facto_eval.test_accuracy
    assert summary.params["facto"] < summary.params["baseline"]


def test_reported_baseline_bytes_match_an_independent_walk():
    """The baseline's stored bytes per step equal what autograd really keeps for the same
    model and batch shape (our own hooks, each storage once, parameters excluded)."""
    from facto.engine.build import dense_model
    from facto.memory.audit import storage_walk

    config = RunConfig(**TINY, max_steps=1)
    steps = [e for e in compare(config, variants=("baseline",)) if isinstance(e, StepEvent)]
    model = dense_model(config, 10, 1)
    assert steps[0].act_bytes == pytest.approx(storage_walk(model, torch.randn(32, 1, 32, 32)), rel=0.01)


def test_baseline_and_facto_start_from_the_same_weights():
    """Full rank, update=all, no compression: the two variants train identically."""
    config = RunConfig(**TINY, rank=1.0, update="all", bits=None, max_steps=2)
    steps = [e for e in compare(config) if isinstance(e, StepEvent)]
    first = {s.variant: s.loss for s in steps if s.step == 1}
    assert first["baseline"] == pytest.approx(first["facto"], rel=1e-4)


def test_same_seed_same_numbers_on_cpu():
    config = RunConfig(**TINY, max_steps=3)
    a = [(e.variant, e.loss, e.act_bytes) for e in compare(config) if isinstance(e, StepEvent)]
    b = [(e.variant, e.loss, e.act_bytes) for e in compare(config) if isinstance(e, StepEvent)]
    assert a == b


def test_stop_leaves_an_interrupted_run_in_the_store(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    events = record(compare(RunConfig(**TINY)), store)
    for event in events:
        if isinstance(event, StepEvent) and event.step == 3 and event.variant == "facto":
            break
    events.close()  # the app's Stop
    (stored,) = store.list_runs()
    assert stored.status == "interrupted"
    assert stored.summary["steps"] == {"baseline": 3, "facto": 3}
    assert len(store.metrics(stored.id, kind="step")) == 6
    assert set(store.layer_bytes(stored.id)) == {"baseline", "facto"}


def test_completed_run_is_stored_with_every_metric(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    summary = consume(record(compare(RunConfig(**TINY)), store))
    assert summary.run_id == 1
    (stored,) = store.list_runs()
    assert stored.status == "completed"
    assert stored.summary["saving_pct"] == pytest.approx(summary.saving_pct)
    assert len(store.metrics(stored.id, kind="step")) == 2 * summary.steps["facto"]
    assert stored.config["model"] == "simple_cnn"


def test_warm_start_trains_dense_first_then_factorizes_it():
    config = RunConfig(**TINY, warm_start_steps=2, max_steps=2)
    events = list(compare(config))
    warm = [e for e in events if isinstance(e, StepEvent) and e.variant == "warmup"]
    assert len(warm) == 2
    assert events[-1].steps == {"baseline": 2, "facto": 2}
    # the warm-up steps come as they are taken, between its phase and the factorization
    kinds = [getattr(e, "phase", None) or getattr(e, "variant", None) or e.type for e in events[:6]]
    assert kinds == ["loading", "warm-up", "warmup", "warmup", "factorizing", "start"]


def test_cycle_schedule_switches_the_trained_factor():
    config = RunConfig(**TINY, update="cycle", cycle_every=2, max_steps=6, bits=None)
    mem = [e.act_bytes for e in compare(config) if isinstance(e, StepEvent) and e.variant == "facto"]
    assert len(set(mem[0:2])) == 1 and mem[1] != mem[2], "stored bytes change with the trained factor"


def test_run_trains_one_variant():
    summary = consume(run(RunConfig(**TINY, max_steps=2), "facto"))
    assert set(summary.steps) == {"facto"} and summary.saving_pct is None


def test_sweep_trains_baseline_once_and_reports_points(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    points = [e for e in sweep(RunConfig(**TINY, max_steps=2), [0.25, 0.5], [4], ["core"], store=store)
              if getattr(e, "type", "") == "point"]
    assert [p.variant for p in points] == ["baseline", "facto", "facto"]
    assert all(p.saving_pct > 0 for p in points[1:])
    assert len(store.list_runs()) == 3


def test_events_are_plain_dataclasses():
    e = StepEvent("facto", 1, 1, 0.5, 50.0, 10, 20, None, 0.1, 1e-3)
    assert dataclasses.asdict(e)["type"] == "step"


@pytest.mark.parametrize("steps", [1, 2, 4, 7, 8])
def test_very_short_runs_get_a_schedule(steps):
    from torch import nn

    from facto.engine.optim import make_optimizer

    opt, sched = make_optimizer(RunConfig(), nn.Linear(2, 2), steps)
    lrs = []
    for _ in range(steps):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert all(0 <= lr <= RunConfig().lr and lr == lr for lr in lrs)  # finite, never above the peak


@pytest.mark.slow
def test_runs_repeat_exactly_whatever_other_threads_do_with_the_global_generator():
    """Each run owns its generators: a thread reseeding and drawing from torch's global
    generator all the time (what page renders did) changes no loss of a run."""
    import threading

    config = RunConfig(**{**TINY, "max_train": 32, "max_test": 16, "batch_size": 16}, max_steps=2, model="mobilenet_v2")
    quiet = [(e.variant, e.loss) for e in compare(config) if isinstance(e, StepEvent)]
    stop = threading.Event()

    def meddle():  # a reseed and a draw every millisecond: the global state the run would see differs
        i = 0
        while not stop.wait(0.001):
            torch.manual_seed(i)
            torch.rand(1000)
            i += 1

    thread = threading.Thread(target=meddle, daemon=True)
    thread.start()
    try:
        noisy = [(e.variant, e.loss) for e in compare(config) if isinstance(e, StepEvent)]
    finally:
        stop.set()
        thread.join()
    assert noisy == quiet


@functools.cache
def _fp32_summary():
    """The fp32 run the half-precision runs are compared with (once per test process)."""
    return consume(compare(RunConfig(**TINY, max_steps=2)))


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_precision_applies_to_baseline_and_facto(precision):
    """bf16/fp16 autocast for both variants: the run trains, and the baseline now stores 16-bit maps."""
    fp32 = _fp32_summary()
    half = consume(compare(RunConfig(**TINY, max_steps=2, precision=precision)))
    assert half.status == "completed" and not half.failures
    assert half.act_bytes["baseline"] < 0.75 * fp32.act_bytes["baseline"]
    assert half.saving_pct > 50


def _sabotage(monkeypatch, make_error):
    """Make the Facto model's forward go wrong from its 2nd training step on (the 1st training-mode
    forward measures the stored bytes per layer for the start event)."""
    from facto.engine.build import Variant

    real = Variant.build

    def build(self, dense):
        model = real(self, dense)
        if self.name != "facto":
            return model
        calls = {"n": 0}

        def hook(module, inputs, output):
            if module.training and torch.is_grad_enabled():
                calls["n"] += 1
                if calls["n"] >= 3:
                    return make_error(output)
            return output

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(Variant, "build", build)


def test_a_non_finite_loss_stops_that_variant_with_the_reason_and_the_other_goes_on(monkeypatch, tmp_path):
    _sabotage(monkeypatch, lambda out: out * float("nan"))
    store = RunStore(tmp_path / "runs.db")
    events = list(record(compare(RunConfig(**TINY, max_steps=4)), store))
    failures = [e for e in events if getattr(e, "type", "") == "failure"]
    assert [(f.variant, f.step) for f in failures] == [("facto", 2)]
    assert "non-finite loss at step 2, try a lower learning rate or more bits" in failures[0].reason
    summary = events[-1]
    assert summary.steps == {"baseline": 4, "facto": 1} and summary.status == "completed"
    assert summary.accuracy["baseline"] is not None and summary.accuracy_delta is None
    (stored,) = store.list_runs()
    assert stored.status == "completed" and "facto failed: non-finite loss at step 2" in stored.error


def test_out_of_memory_stops_that_variant_with_a_suggestion(monkeypatch, tmp_path):
    def oom(out):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    _sabotage(monkeypatch, oom)
    store = RunStore(tmp_path / "runs.db")
    summary = consume(record(compare(RunConfig(**TINY, max_steps=3)), store))
    assert summary.steps == {"baseline": 3, "facto": 1}
    assert "out of memory" in summary.failures["facto"] and "smaller batch" in summary.failures["facto"]
    assert "facto failed: out of memory" in store.list_runs()[0].error


def test_the_loss_is_not_compressed_only_the_model_is(monkeypatch):
    """What a step stores is the model's activations; the loss (its saved softmax) stays exact.
    Compressing the loss's saved tensors at 2 bits once cost resnet20 five points of accuracy."""
    from facto.engine import step as step_module

    seen = []
    real = step_module.saved_activations

    def spy(*args, **kwargs):
        context = real(*args, **kwargs)
        meter = context.__enter__()
        seen.append(meter)

        class Wrapper:
            def __enter__(self):
                return meter

            def __exit__(self, *exc):
                return context.__exit__(*exc)

        return Wrapper()

    monkeypatch.setattr(step_module, "saved_activations", spy)
    consume(compare(RunConfig(**TINY, max_steps=1, bits=2), variants=("facto",)))
    step_meter = seen[-1]
    assert step_meter.records and all(r.module != "" for r in step_meter.records)  # every record is a module's


@pytest.mark.parametrize("call, message", [
    (lambda: compare({"model": "simple_cnn"}), "config=dict is not allowed: use a facto.RunConfig"),
    (lambda: compare(RunConfig(**TINY), variants=()), "variants=() is not allowed"),
    (lambda: compare(RunConfig(**TINY), variants=("facto", "dense")), "variants=['dense'] is not allowed"),
    (lambda: record(iter(()), "runs.db"), "store='runs.db' is not allowed: use a facto.RunStore or None"),
], ids=["config-dict", "no-variants", "unknown-variant", "store-str"])
def test_library_entry_points_name_what_is_wrong(call, message):
    with pytest.raises(ValueError) as err:
        consume(call())
    assert message in str(err.value)


def test_one_variant_may_be_given_as_a_string():
    """variants="facto" (it was read as the letters f, a, c, t, o)."""
    events = list(compare(RunConfig(**TINY, max_steps=1), variants="facto"))[2:]
    assert set(events[0].params) == {"facto"} and events[-1].status == "completed"


def test_planned_evaluations_are_counted_without_walking_every_step():
    """evals_planned agrees with asking evaluates_after about each step, and a long run plans at
    once (it walked every step: `--epochs 1000000000` sat silent in planning)."""
    from facto.engine.train import Schedule

    for total, per_epoch, every in [(10, 3, 0), (10, 3, 4), (12, 3, 4), (12, 4, 6), (7, 7, 7), (9, 2, 3), (1, 5, 2)]:
        schedule = Schedule(total, per_epoch, every, 0)
        walked = sum(schedule.evaluates_after(s) for s in range(1, total + 1))
        assert schedule.evals_planned() == walked, (total, per_epoch, every)
    # 10**9 steps of 7 per epoch, a test every 1000: 142857143 epoch ends (the last one partial),
    # 1000000 tests by count, 142857 steps that are both, and the last step (a multiple of 1000) once
    assert Schedule(10**9, 7, 1000, 0).evals_planned() == 142857143 + 1000000 - 142857 - 1


def test_a_run_longer_than_the_bound_is_refused_naming_its_steps_and_the_bound():
    from facto.engine.train import RunTooLongError

    with pytest.raises(RunTooLongError, match="a run of 6000000000 steps .* at most 1000000000 steps"):
        consume(compare(RunConfig(**{**TINY, "epochs": 10**9})))  # 6 steps per epoch
    with pytest.raises(ValueError, match="warm_start_steps=999999999 is not allowed with 6 training steps: "
                                         "warm-up and training together take at most 1000000000 steps"):
        consume(compare(RunConfig(**TINY, warm_start_steps=10**9 - 1)))


def test_the_cli_refuses_a_run_longer_than_the_bound_in_one_line(capsys):
    """`facto train --epochs 1000000000` sat silent planning 10**10 steps; now one line, exit 2."""
    from facto.cli.main import main

    code = main(["train", "--epochs", "1000000000", "--max-train", "192", "--batch-size", "32", "--device", "cpu",
                 "--no-store", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: a run of 6000000000 steps (6 per epoch) is not allowed: at most 1000000000 "
                                 "steps; lower the epochs or set a step limit (max_steps)"], (code, err)


def _step(variant: str, step: int) -> StepEvent:
    return StepEvent(variant, step, 1, 1.0, 50.0, 100, 400, None, 0.01, 0.01)


def test_the_accuracy_change_compares_both_variants_after_the_same_training():
    """Mid-run the baseline is tested after epoch 2 before Facto is: the summary's accuracies stay
    at epoch 1, where both were tested, until Facto's epoch-2 test arrives."""
    from facto.engine.events import RunTracker, steps_done

    tracker = RunTracker()
    for step in range(1, 45):
        tracker.add(_step("baseline", step))
        tracker.add(_step("facto", step))
    tracker.add(EvalEvent("baseline", 22, 1, 0.5, 90.0))
    tracker.add(EvalEvent("facto", 22, 1, 0.6, 88.0))
    tracker.add(EvalEvent("baseline", 44, 2, 0.1, 97.0))
    mid = tracker.summary("running")
    assert (mid.tested_step, mid.tested_epoch) == (22, 1)
    assert mid.accuracy == {"baseline": 90.0, "facto": 88.0} and mid.accuracy_delta == pytest.approx(-2.0)
    tracker.add(EvalEvent("facto", 44, 2, 0.2, 96.5))
    end = tracker.summary()
    assert (end.tested_step, end.tested_epoch) == (44, 2) and end.accuracy_delta == pytest.approx(-0.5)
    before = RunTracker()
    before.add(_step("baseline", 1))
    before.add(_step("facto", 1))
    before.add(EvalEvent("baseline", 1, 1, 0.5, 40.0))
    assert before.summary("running").accuracy_delta is None and before.summary("running").tested_step is None
    # a Stop between the two variants of step 45: 44 steps done by both
    tracker.add(_step("baseline", 45))
    assert steps_done(tracker.summary("interrupted").steps) == 44
    assert steps_done({"baseline": 45, "facto": 10}, {"facto": "out of memory"}) == 45  # Facto stopped counting
