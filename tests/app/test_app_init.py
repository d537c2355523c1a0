"""The main page's starting weights: typed (run:ID, a file), uploaded, checked before Run, the room's
rules for them, and the transfer preset."""
from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

from facto.config import RunConfig
from facto.engine.build import dense_model
from facto.store.history import RunStore

from .apptest import opened

TIMEOUT = 120


@pytest.fixture()
def ui(home, monkeypatch):
    """The app's `ui` module, runs training in threads, and what is still going stopped afterwards."""
    monkeypatch.setenv("FACTO_JOBS", "thread")
    import ui as module
    yield module
    for job in module.registry().jobs(active_only=True):
        job.stop(wait_s=60)


def app(visitor: str | None = None) -> AppTest:
    return opened("app.py", TIMEOUT, **({"visitor": visitor} if visitor is not None else {}))


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def state_file(path: Path, model: str = "simple_cnn", classes: int = 10) -> Path:
    torch.save(dense_model(RunConfig(model=model), classes, 1).state_dict(), path)
    return path


def test_a_file_of_another_architecture_is_named_under_the_input_and_nothing_runs(ui, tmp_path):
    at = app()
    at.text_input(key="init").input(str(state_file(tmp_path / "cnn.pt"))).run()
    assert errors(at) == []  # simple_cnn's own weights fit
    at.selectbox(key="model").set_value("resnet20").run()
    shown = errors(at)
    assert shown[0] == "Can't run yet: fix Start from (marked below)."
    assert "does not fit resnet20" in shown[1] and "'bn1.weight'" in shown[1]
    at.button(key="run").click().run()
    assert not ui.registry().jobs() and not RunStore().list_runs()


@pytest.mark.parametrize("init, says", [("run:999", "run 999"), ("/no/such/file.pt", "does not exist")])
def test_missing_runs_and_files_are_errors_before_run(ui, init, says):
    at = app()
    at.text_input(key="init").input(init).run()
    assert any(says in e for e in errors(at)), errors(at)


def test_an_upload_is_kept_by_its_content_and_a_truncated_file_is_refused(ui, tmp_path):
    good = state_file(tmp_path / "w.pt").read_bytes()
    path = ui.save_upload("w.pt", good)  # what the uploader's callback does with the file it is given
    assert path.parent == ui.uploads_folder() and path.read_bytes() == good
    assert ui.save_upload("again.pt", good) == path  # the same content, the same file
    at = app()
    at.text_input(key="init").input(str(path)).run()
    assert errors(at) == []
    at.text_input(key="init").input(str(_truncated(tmp_path / "w.pt"))).run()
    assert any("cannot be read as a PyTorch state dict" in e for e in errors(at)), errors(at)


def test_room_mode_takes_only_uploads_and_the_visitors_own_runs(ui, tmp_path, monkeypatch):
    monkeypatch.setenv("FACTO_ROOM", "1")
    st.cache_resource.clear()
    at = app(visitor="a")
    at.text_input(key="init").input(str(state_file(tmp_path / "cnn.pt"))).run()
    assert any("upload a weights file instead" in e for e in errors(at)), errors(at)
    store = RunStore()
    other = store.start_run(RunConfig().to_dict(), kind="compare")
    at.text_input(key="init").input(f"run:{other}").run()
    assert any(f"run {other} is not one of your runs" in e for e in errors(at)), errors(at)
    assert ui.upload_limit() == 4 * ui.room().max_params + 2**20
    with pytest.raises(ValueError, match="at most"):
        ui.save_upload("big.pt", b"0" * (ui.upload_limit() + 1))


def test_the_transfer_preset_sets_the_scenario_and_leaving_it_puts_the_defaults_back(ui):
    at = app()
    at.radio(key="preset").set_value("transfer").run()
    assert at.selectbox(key="dataset").value == "digits_5_9"
    assert at.selectbox(key="warm_start_dataset").value == "digits_0_4"
    assert at.number_input(key="warm_start_steps").value > 0 and errors(at) == []
    assert at.selectbox(key="schedule").value == "cosine"
    at.radio(key="preset").set_value("balanced").run()
    assert at.selectbox(key="schedule").value == RunConfig().schedule
    assert at.selectbox(key="dataset").value == RunConfig().dataset
    assert at.selectbox(key="warm_start_dataset").value is None
    assert at.number_input(key="warm_start_steps").value == 0
    at.radio(key="preset").set_value("transfer").run()
    at.number_input(key="warm_start_steps").set_value(7).run()  # no longer the scenario: its method stays
    assert at.radio(key="preset").value == "custom" and at.text_input(key="rank").value == "1.0"


def _truncated(path: Path) -> Path:
    cut = path.with_name("cut.pt")
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    return cut


def test_a_run_from_a_kept_baseline_says_what_it_loaded_and_tests_before_its_first_step(ui):
    import time

    from facto.engine.recorder import record
    from facto.engine.train import compare

    tiny = dict(epochs=1, max_train=128, max_test=64)
    with RunStore() as store:
        list(record(compare(RunConfig(**tiny), history=store.path), store))
    at = app()
    for key, value in tiny.items():
        at.number_input(key=key).set_value(value)
    at.text_input(key="init").input("run:1").run()
    assert errors(at) == []
    at.button(key="run").click().run()
    job = ui.registry().get(at.session_state["watch"])
    deadline = time.monotonic() + 240
    while not job.finished:
        assert time.monotonic() < deadline
        time.sleep(0.3)
        at.run()
    at.run()
    assert job.status == "completed", job.error
    captions = [c.value for c in at.caption]
    assert any(c.startswith(":material/history: Started from run 1 (baseline): ") and "tensors loaded" in c
               for c in captions), captions
    tests = [e for e in RunStore().metrics(2, kind="eval") if e["step"] == 0]
    assert sorted(e["variant"] for e in tests) == ["baseline", "facto"]
