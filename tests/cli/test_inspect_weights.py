"""`facto inspect` on chosen weights (facto.engine.inspect_weights): the latest completed run of the model,
--init, fresh weights; energy kept per layer and the accuracy before training, in 100 columns."""
from __future__ import annotations

import json

import pytest
import torch

from facto.cli.main import main
from facto.config import RunConfig
from facto.engine.build import dense_model
from facto.engine.inspect_weights import choose_weights, inspect_weights
from facto.store.history import RunStore

TINY = ["--model", "simple_cnn", "--max-train", "128", "--max-test", "64"]


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTO_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def kept_run(home, model: str = "simple_cnn", status: str = "completed", seed: int = 7) -> int:
    """A stored run of `model` on digits whose kept baseline is the model drawn from `seed`."""
    home.mkdir(exist_ok=True)
    config = RunConfig(model=model, seed=seed)
    with RunStore(home / "runs.db") as store:
        run_id = store.start_run(config.to_dict(), kind="compare")
        store.keep_models(run_id, {"baseline": dense_model(config, 10, 1).state_dict()})
        store.finish_run(run_id, status, {})
    return run_id


def test_the_latest_completed_run_of_the_model_is_chosen_else_fresh_weights(home):
    assert not choose_weights(RunConfig()).trained  # no history yet
    first = kept_run(home)
    kept_run(home, status="failed")
    kept_run(home, model="resnet20")
    chosen = choose_weights(RunConfig())
    assert chosen.trained and chosen.automatic and chosen.run_id == first and chosen.init == f"run:{first}"
    assert choose_weights(RunConfig(model="vgg11_bn")).init == "random"  # no run of that model
    given = choose_weights(RunConfig(init=f"run:{first}"))
    assert given.trained and not given.automatic


def test_inspection_loads_the_runs_weights_and_tests_both_models(home):
    run_id = kept_run(home, seed=7)
    result = inspect_weights(RunConfig(max_train=128, max_test=64))
    assert result.weights.run_id == run_id and "loaded" in result.loaded
    trained_model = dense_model(RunConfig(seed=7), 10, 1)  # independently: the spectrum of the kept weights
    name = result.spectra[0].name
    w = trained_model.get_submodule(name).weight.detach().double()
    assert result.spectra[0].out.singular_values[0] == pytest.approx(
        float(torch.linalg.svdvals(w.reshape(w.shape[0], -1))[0]))
    fresh = dense_model(RunConfig(), 10, 1).get_submodule(name).weight.detach().double()
    assert result.fresh_spectra[0].out.singular_values[0] == pytest.approx(
        float(torch.linalg.svdvals(fresh.reshape(fresh.shape[0], -1))[0]))
    assert set(result.accuracy) == {"dense", "factorized", "bn", "refit"} and result.test_size == 64
    assert all(0 <= a <= 100 for a in result.accuracy.values()) and result.calibration_batches == 2


def test_inspect_prints_energy_and_accuracy_in_100_columns(home, capsys):
    run_id = kept_run(home)
    assert main(["inspect", *TINY]) == 0
    out = capsys.readouterr().out
    assert f"run {run_id} (baseline), the latest trained simple_cnn on digits" in " ".join(out.split())
    assert "fresh both %" in out and "factorized, BN re-estimated" in out and "dense" in out
    assert "Fresh weights are noise-like" not in out
    assert not [line for line in out.splitlines() if len(line) > 100]


def test_inspect_on_fresh_weights_says_why_the_numbers_are_low_and_json_carries_it(home, capsys):
    assert main(["inspect", *TINY, "--init", "random"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Fresh weights are noise-like" in out and "last factors refitted + BN" in out
    assert main(["inspect", *TINY, "--init", "random", "--no-refit"]) == 0
    assert "last factors refitted" not in " ".join(capsys.readouterr().out.split())
    assert main(["inspect", *TINY, "--no-accuracy", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["spectrum"]["accuracy"] == {} and document["spectrum"]["layers"][0]["ranks"]


def test_inspect_with_an_init_that_does_not_exist_is_one_line(home, capsys):
    kept_run(home)
    assert main(["inspect", *TINY, "--init", "run:99"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run 99 does not exist" in err
