"""Which weights to look at, and what factorizing them does before any training.

`choose_weights` picks the weights: the config's `init` when it is not `random`; else the baseline
kept by the latest completed run of the same model on the same dataset; else fresh weights drawn
from the seed. `inspect_weights` gives each factorized layer's spectrum (the chosen weights and
fresh ones, `facto.method.spectrum`) and the test accuracy of the dense model next to the
factorized one's before any training: as factorized, after BatchNorm statistics are re-estimated
on training batches, and optionally after the last factors are refitted
(`facto.method.calibrate`). The CLI's `facto inspect`, the Layers page and How it works use it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import INIT_RANDOM, INIT_RUN, RunConfig
from ..method.calibrate import BATCHNORM_BATCHES, calibrate
from ..method.spectrum import LayerSpectrum, layer_spectra
from .build import dense_model, facto_model
from .starting import initial_state, load_state

__all__ = ["ChosenWeights", "WeightsInspection", "choose_weights", "inspect_weights", "FRESH_NOTE"]

FRESH_NOTE = ("Fresh weights are noise-like: their singular values fall off slowly (a flat spectrum), so a rank "
              "of half the channels keeps only a little over half of each unfolding's energy and under half of "
              "the weight's, and the factorized model starts far from the dense one. Trained filters concentrate "
              "their energy in fewer directions, so the same rank keeps more of it; BatchNorm statistics "
              "re-estimated on training batches close most of what is left of the gap.")


@dataclass(frozen=True)
class ChosenWeights:
    """Where the inspected weights come from: `init` as RunConfig takes it, and in words."""

    init: str  # 'random', 'run:ID', a file path, 'pretrained'
    source: str
    trained: bool
    run_id: int | None = None
    automatic: bool = False  # picked as the latest completed run (the config said random)


@dataclass
class WeightsInspection:
    """The chosen weights' spectra (and fresh ones') and the accuracies before any training."""

    config: RunConfig
    weights: ChosenWeights
    spectra: list[LayerSpectrum]
    fresh_spectra: list[LayerSpectrum]
    accuracy: dict[str, float] = field(default_factory=dict)  # dense, factorized, bn, refit (test %)
    test_size: int = 0
    calibration_batches: int = 0
    loaded: str = ""  # what loading the weights did (InitReport.line)

    def energy_rows(self) -> list[dict]:
        """Per layer: ranks and energy kept (per mode and both together), chosen weights vs fresh."""
        fresh = {s.name: s for s in self.fresh_spectra}
        rows = []
        for s in self.spectra:
            f = fresh.get(s.name)
            rows.append({"layer": s.name, "shape": "x".join(map(str, s.weight_shape)),
                         "ranks": f"{s.ranks[0]},{s.ranks[1]}", "energy_out": s.out.energy_kept,
                         "energy_in": s.inp.energy_kept, "energy": s.energy_kept,
                         "fresh_energy": None if f is None else f.energy_kept})
        return rows

    @property
    def gap(self) -> float | None:
        """Dense minus factorized test accuracy as factorized (points)."""
        a = self.accuracy
        return None if "dense" not in a or "factorized" not in a else a["dense"] - a["factorized"]

    def to_dict(self) -> dict:
        """A JSON-able document (the CLI's --json)."""
        def spectrum(s: LayerSpectrum) -> dict:
            return {"layer": s.name, "type": s.layer_type, "method": s.method, "shape": list(s.weight_shape),
                    "ranks": list(s.ranks), "energy_out": s.out.energy_kept, "energy_in": s.inp.energy_kept,
                    "energy": s.energy_kept, "singular_values_out": list(s.out.singular_values),
                    "singular_values_in": list(s.inp.singular_values)}

        return {"weights": vars(self.weights).copy(), "loaded": self.loaded, "accuracy": dict(self.accuracy),
                "test_size": self.test_size, "calibration_batches": self.calibration_batches,
                "layers": [spectrum(s) for s in self.spectra], "fresh_layers": [spectrum(s) for s in self.fresh_spectra]}


def latest_trained_run(model: str, dataset: str, history: str | Path | None = None) -> int | None:
    """The latest completed run of `model` on `dataset` that kept its baseline (None: none)."""
    from ..store.history import RunStore, default_db_path

    db = Path(history) if history is not None else default_db_path()
    if str(db) != ":memory:" and not db.exists():
        return None
    try:
        with RunStore(db, read_only=str(db) != ":memory:") as store:
            for run in store.list_runs(status="completed"):
                if run.config.get("model") == model and run.config.get("dataset") == dataset \
                        and "baseline" in store.kept_models(run.id):
                    return run.id
    except (OSError, ValueError):  # an unreadable history: nothing to pick from
        return None
    return None


def choose_weights(config: RunConfig, history: str | Path | None = None) -> ChosenWeights:
    """The weights to inspect: the config's `init` if not random, else the latest completed run of the
    model on the dataset that kept a baseline, else fresh weights from the seed."""
    if config.init != INIT_RANDOM:
        run_id = config.init_run
        return ChosenWeights(config.init, _source_words(config, history), True, run_id)
    run_id = latest_trained_run(config.model, config.dataset, history)
    if run_id is not None:
        return ChosenWeights(f"{INIT_RUN}{run_id}", f"run {run_id} (baseline), the latest trained {config.model} "
                             f"on {config.dataset}", True, run_id, automatic=True)
    return ChosenWeights(INIT_RANDOM, f"fresh weights (seed {config.seed})", False)


def _source_words(config: RunConfig, history: str | Path | None) -> str:
    if config.init_run is not None:
        return f"run {config.init_run} (baseline)"
    return "torchvision's pretrained weights" if config.init == "pretrained" else f"file {config.init}"


def inspect_weights(config: RunConfig, history: str | Path | None = None, weights: ChosenWeights | None = None,
                    accuracy: bool = True, calibration_batches: int = BATCHNORM_BATCHES) -> WeightsInspection:
    """Spectra of the chosen weights (and of fresh ones) and, with `accuracy`, the test accuracy of the
    dense model and of the config's Facto model before any training: as factorized, after BatchNorm
    re-estimation, and with `config.refit` fitted as a run fits it (last factors refitted, then
    BatchNorm re-estimated: `facto.method.calibrate.calibrate`).

    The data are the config's dataset (max_train / max_test subsets, batch size, seed); the test split
    gives the accuracies, the training split the calibration batches. Raises InitError (a ValueError)
    when the weights can't be loaded and DataNotFoundError when the data are missing.
    """
    from .data import dataset_info

    weights = weights or choose_weights(config, history)
    info = dataset_info(config.dataset)
    fresh = dense_model(config, info.num_classes, info.in_channels)
    dense = copy.deepcopy(fresh)
    loaded = ""
    if weights.trained:
        state, source = initial_state(config.replace(init=weights.init), history)
        loaded = load_state(dense, state, source, config.model, allow_extra=weights.init == "pretrained").line()
    factorized = facto_model(config, dense)
    result = WeightsInspection(config, weights, layer_spectra(dense, factorized=factorized),
                               layer_spectra(fresh, factorized=facto_model(config, fresh)), loaded=loaded)
    if accuracy:
        _accuracies(result, config, dense, factorized, config.refit, calibration_batches)
    return result


def _accuracies(result: WeightsInspection, config: RunConfig, dense: torch.nn.Module, factorized: torch.nn.Module,
                refit: bool, batches: int) -> None:
    from .data import load_data
    from .train import evaluate

    data = load_data(config.dataset, config.data_dir, batch_size=config.batch_size, download=config.download,
                     seed=config.seed, max_train=config.max_train, max_test=config.max_test)
    cpu = torch.device("cpu")
    acc = result.accuracy
    acc["dense"] = evaluate(dense, data.test_loader, cpu)[1]
    acc["factorized"] = evaluate(factorized, data.test_loader, cpu)[1]
    calibrated = copy.deepcopy(factorized)
    result.calibration_batches = calibrate(calibrated, dense, data.train_loader, refit=False,
                                           batchnorm_batches=batches)["batchnorm_batches"]
    if result.calibration_batches:
        acc["bn"] = evaluate(calibrated, data.test_loader, cpu)[1]
    if refit:
        refitted = copy.deepcopy(factorized)
        calibrate(refitted, dense, data.train_loader, batchnorm_batches=batches)
        acc["refit"] = evaluate(refitted, data.test_loader, cpu)[1]
    result.test_size = data.test_size
