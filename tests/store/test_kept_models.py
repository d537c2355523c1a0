"""Trained models kept with a run: written when the run ends, skipped when switched off, deleted with
the run, and a folder that cannot be written loses the models, not the run."""
from __future__ import annotations

import torch

from facto.config import RunConfig
from facto.engine.build import dense_model
from facto.engine.events import ModelsEvent
from facto.engine.recorder import record
from facto.engine.train import compare
from facto.store.history import RunStore

TINY = dict(epochs=1, max_steps=2, max_train=64, max_test=32, batch_size=32)


def run(store: RunStore, **settings) -> list:
    return list(record(compare(RunConfig(**{**TINY, **settings}), history=store.path), store))


def models_event(events: list) -> ModelsEvent:
    return next(e for e in events if isinstance(e, ModelsEvent))


def test_a_finished_run_keeps_both_models_as_plain_state_dicts(tmp_path):
    with RunStore(tmp_path / "runs.db") as store:
        event = models_event(run(store))
        kept = store.kept_models(1)
    assert set(kept) == {"baseline", "facto"} and event.states == {} and event.error is None
    assert event.kept == {v: m.path.stat().st_size for v, m in kept.items()}
    for model in kept.values():
        plain = dense_model(RunConfig(), 10, 1)
        state = torch.load(model.path, weights_only=True)
        assert plain.load_state_dict(state) is not None  # strict: the original architecture's every tensor
        assert model.path.parent == tmp_path / "models"


def test_keep_models_off_keeps_nothing(tmp_path):
    with RunStore(tmp_path / "runs.db") as store:
        event = models_event(run(store, keep_models=False))
        assert event.kept == {} and store.kept_models(1) == {}
    assert not (tmp_path / "models").exists()


def test_a_folder_that_cannot_be_written_loses_the_models_not_the_run(tmp_path):
    (tmp_path / "models").write_text("a file where the folder goes")
    with RunStore(tmp_path / "runs.db") as store:
        event = models_event(run(store))
        assert event.kept == {} and "could not be kept" in event.error
        assert store.get_run(1).status == "completed"


def test_deleting_a_run_deletes_its_models(tmp_path):
    with RunStore(tmp_path / "runs.db") as store:
        run(store)
        run(store)
        paths = [m.path for m in store.kept_models(1).values()]
        store.delete_run(1)
        assert not any(p.exists() for p in paths) and store.kept_models(1) == {}
        assert set(store.kept_models(2)) == {"baseline", "facto"}


def test_a_history_in_memory_keeps_no_files():
    with RunStore(":memory:") as store:
        events = list(record(compare(RunConfig(**TINY)), store))
        assert models_event(events).kept == {} and store.kept_models(1) == {}
