"""The History page and the trained models kept with a run: sizes, downloads (the files' own bytes),
why a run kept none, the disk they take, and what deleting a run frees."""
from __future__ import annotations

import pytest
import streamlit.testing.v1.app_test as app_test_module
import torch
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.testing.v1 import AppTest

from facto.config import RunConfig
from facto.engine.models import create_model
from facto.store.history import RunStore

from .apptest import opened

TIMEOUT = 120  # seconds per script run: the first one imports torch


@pytest.fixture()
def media(monkeypatch) -> list:
    """The (file manager, storage) of each AppTest run, to read what a download button serves."""
    made = []

    def manager(storage):
        made.append((MediaFileManager(storage), storage))
        return made[-1][0]

    monkeypatch.setattr(app_test_module, "MediaFileManager", manager)
    return made


def stored(store: RunStore, status: str = "completed", keep: tuple[str, ...] = ("baseline", "facto"),
           **config) -> int:
    """A run with its summary and, for `keep`, kept models (simple_cnn weights of their own seeds)."""
    run_id = store.start_run(RunConfig(epochs=1, **config).to_dict(), kind="compare")
    store.finish_run(run_id, status, {"steps": {"baseline": 2, "facto": 2},
                                      "accuracy": {"baseline": 90.0, "facto": 89.0}})
    states = {}
    for i, variant in enumerate(keep):
        torch.manual_seed(run_id * 10 + i)
        states[variant] = create_model("simple_cnn").state_dict()
    if states:
        store.keep_models(run_id, states)
    return run_id


def history_page(selected: list[int] | None = None) -> AppTest:
    return opened("pages/4_history.py", TIMEOUT, **({"hist_selected": selected} if selected is not None else {}))


def downloads(at: AppTest) -> dict[str, object]:
    return {b.key: b for b in at.get("download_button") if b.key and b.key.startswith("hist_model_")}


def served(media: list, button) -> bytes:
    """The bytes a deferred download button serves when clicked."""
    manager, storage = media[-1]
    url = manager.execute_deferred(button.proto.deferred_file_id)
    return storage.get_file(url.rsplit("/", 1)[-1]).content


def test_a_run_s_kept_models_are_listed_with_their_sizes_and_download_whole(home, media):
    store = RunStore()
    run_id = stored(store)
    kept = store.kept_models(run_id)
    at = history_page()
    buttons = downloads(at)
    assert set(buttons) == {f"hist_model_{run_id}_baseline", f"hist_model_{run_id}_facto"}
    for variant, model in kept.items():
        button = buttons[f"hist_model_{run_id}_{variant}"]
        assert f"({model.bytes / 1e6:,.2f} MB)" in button.proto.label
        data = served(media, button)
        assert data == model.path.read_bytes()
        plain = create_model("simple_cnn")
        plain.load_state_dict(torch.load(model.path, weights_only=True))  # a plain state dict of the model
    assert served(media, buttons[f"hist_model_{run_id}_baseline"]) != served(media, buttons[f"hist_model_{run_id}_facto"])
    listed = at.dataframe[0].value
    assert listed.loc[0, "models"] == pytest.approx(sum(m.bytes for m in kept.values()) / 1e6)


def test_the_page_says_why_a_run_kept_no_model_and_totals_the_listed_runs(home):
    store = RunStore()
    kept_one = stored(store)
    off = stored(store, keep=(), keep_models=False)
    stopped = stored(store, status="interrupted", keep=())
    at = history_page(selected=[kept_one, off, stopped])
    notes = [c.value for c in at.caption]
    assert any(n.startswith(f"#{off}: no trained model kept") and "keep_models was off" in n
               for n in notes), notes
    assert any(n.startswith(f"#{stopped}: no trained model kept")  # it had trained 2 steps per variant
               and "stopped after it trained, but its models could not be kept" in n for n in notes), notes
    assert set(downloads(at)) == {f"hist_model_{kept_one}_baseline", f"hist_model_{kept_one}_facto"}
    total = sum(m.bytes for m in store.kept_models(kept_one).values()) / 1e6
    assert any(f"with the 3 listed runs: {total:,.2f} MB (1 run kept some)" in n and str(home / "models") in n
               for n in notes), notes
    listed = at.dataframe[0].value.set_index("#")
    assert listed.loc[kept_one, "models"] == pytest.approx(total)
    assert listed[["models"]].drop(index=kept_one).isna().all().all()  # none kept: no size


def test_deleting_a_run_deletes_its_model_files_and_says_what_it_frees(home):
    store = RunStore()
    keep = stored(store)
    gone = stored(store)
    files = store.kept_models(gone)
    freed = sum(m.bytes for m in files.values())
    at = history_page(selected=[gone])
    assert f"Deleting also removes their kept models: {freed / 1e6:,.2f} MB freed." in [c.value for c in at.caption]
    at.checkbox(key="hist_confirm").check().run()
    at.button(key="hist_delete").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert [r.id for r in RunStore().list_runs()] == [keep]
    assert not any(m.path.exists() for m in files.values())
    assert all(m.path.exists() for m in store.kept_models(keep).values()) and store.kept_models(keep)
    assert any(f"freed {freed / 1e6:,.2f} MB of kept models" in t.value for t in at.toast)


def test_train_from_a_kept_baseline_opens_the_main_page_set_to_start_from_it(home):
    with RunStore(home / "runs.db") as store:
        run_id = stored(store)
    at = history_page(selected=[run_id])
    at.button(key=f"hist_start_from_{run_id}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.text_input(key="init").value == f"run:{run_id}"
    assert not [e.value for e in at.error]  # the kept baseline fits: no problem under Start from
