"""Layers and How it works show the chosen weights' spectrum, the energy kept and the accuracy before
training: the latest finished run of the model when the history has one, else fresh weights with a
note saying why the numbers are low."""
from __future__ import annotations

from pathlib import Path


from facto.config import RunConfig
from facto.engine.build import dense_model
from facto.store.history import RunStore

from .apptest import app_test

TIMEOUT = 180  # the first run imports torch, factorizes and tests two models on a busy 2-core machine


def kept_run(home: Path) -> int:
    """A completed simple_cnn run on digits with a kept baseline (drawn from seed 3)."""
    home.mkdir(parents=True, exist_ok=True)
    config = RunConfig(seed=3)
    with RunStore(home / "runs.db") as store:
        run_id = store.start_run(config.to_dict(), kind="compare")
        store.keep_models(run_id, {"baseline": dense_model(config, 10, 1).state_dict()})
        store.finish_run(run_id, "completed", {})
    return run_id


def opened(page: str):
    at = app_test(page, TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metric_labels(at) -> list[str]:
    return [m.label for m in at.metric]


def test_layers_page_on_fresh_weights_says_why_and_on_a_finished_run_uses_it(home):
    at = opened("pages/2_layers.py")
    assert {"Dense model", "Factorized, before training", "With BatchNorm re-estimated"} <= set(metric_labels(at))
    assert any("Fresh weights are noise-like" in i.value for i in at.info)
    assert at.radio(key="layers_weights").options == ["fresh weights"]
    run_id = kept_run(home)
    at = opened("pages/2_layers.py")
    (choice,) = [o for o in at.radio(key="layers_weights").options if o.startswith(f"run {run_id}")]
    assert at.radio(key="layers_weights").value == choice  # the finished run first
    assert not any("Fresh weights are noise-like" in i.value for i in at.info)
    assert any(f"Weights: run {run_id} (baseline)" in c.value for c in at.caption)
    energy = [d.value for d in at.dataframe if "both" in d.value.columns]
    assert energy and "fresh" in energy[0].columns and energy[0]["both"].between(0, 100).all()


def test_how_it_works_shows_the_layers_spectrum_energy_and_accuracy(home):
    at = opened("pages/5_how-it-works.py")
    labels = metric_labels(at)
    assert "Energy kept by this layer" in labels and "Factorized, before training" in labels
    assert any("Fresh weights are noise-like" in i.value for i in at.info)
    kept_run(home)
    at = opened("pages/5_how-it-works.py")
    assert not any("Fresh weights are noise-like" in i.value for i in at.info)
    assert at.radio(key="how_weights").value.startswith("run 1")
