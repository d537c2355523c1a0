"""The Streamlit app and its pages, driven headless with streamlit.testing.v1.AppTest.

Every test uses a temporary FACTO_HOME, so the run store starts empty. Training runs use
one epoch on a 128-image subset (2 steps per variant) to stay fast.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from facto.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120  # seconds per script run: the first one imports torch and factorizes
RUN_LIMIT = 240  # seconds for a whole tiny training run on a busy 2-core machine


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTO_HOME", str(tmp_path / "home"))
    monkeypatch.syspath_prepend(str(ROOT))  # pages import facto like app.py does
    return tmp_path / "home"


def app(page: str = "app.py") -> AppTest:
    at = AppTest.from_file(str(ROOT / page), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def tiny(at: AppTest, train: int = 128) -> None:
    at.number_input(key="epochs").set_value(1)
    at.number_input(key="max_train").set_value(train)
    at.number_input(key="max_test").set_value(64)


def wait(at: AppTest, job_key: str = "job", until=lambda job: job.status != "running") -> None:
    """Redraw the page (as the live fragment does every second) until `until(job)` holds."""
    deadline = time.monotonic() + RUN_LIMIT
    while not until(at.session_state[job_key]):
        assert time.monotonic() < deadline, "the run did not get there in time"
        time.sleep(0.3)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
    at.run()  # the first redraw after the end re-enables the controls


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def number(text: str) -> float:
    return float(re.search(r"[-+]?\d+(?:\.\d+)?", text.replace(",", "")).group())


def test_main_page_loads_with_the_runconfig_defaults(home):
    at = app()
    assert at.title[0].value.startswith("Facto")
    assert at.selectbox(key="model").value == "simple_cnn"
    assert at.selectbox(key="dataset").value == "digits"
    assert at.text_input(key="rank").value == "0.5"
    assert at.selectbox(key="bits").value == 4
    assert at.number_input(key="epochs").value == 4
    assert at.segmented_control(key="preset").value == "balanced"
    assert not at.button(key="run").disabled and at.button(key="stop").disabled
    assert any("Press **Run**" in i.value or "press **Run**" in i.value for i in at.info)


def test_run_completes_with_metrics_charts_and_a_stored_run(home):
    at = app()
    tiny(at)
    at.button(key="run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    if at.session_state["job"].status == "running":  # controls are locked while it trains
        assert at.number_input(key="epochs").disabled and at.text_input(key="rank").disabled
        assert at.button(key="run").disabled and not at.button(key="stop").disabled
    wait(at)
    job = at.session_state["job"]
    assert job.status == "completed", job.error
    assert number(metric(at, "Memory saving")) > 0
    assert number(metric(at, "Facto activations")) < number(metric(at, "Baseline activations"))
    assert metric(at, "Baseline accuracy").endswith("%") and metric(at, "Facto accuracy").endswith("%")
    charts = at.get("plotly_chart")
    assert len(charts) == 4
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in charts]
    assert titles == ["Accuracy and loss vs step", "Activation memory stored for backward (MB)",
                      "Stored for backward, per layer (one batch)", "Memory saving vs accuracy change"]
    assert all(json.loads(c.proto.spec)["data"] for c in charts)
    assert "Stored as run #1" in at.success[0].value
    assert not at.button(key="run").disabled and not at.number_input(key="epochs").disabled
    store = RunStore()
    (run,) = store.list_runs()
    assert run.status == "completed" and run.config["epochs"] == 1 and run.config["max_train"] == 128
    assert run.summary["saving_pct"] > 0

    at.run()  # a rerun neither restarts nor loses the run
    assert at.session_state["job"] is job and len(RunStore().list_runs()) == 1

    fresh = app()  # a restart shows the stored run
    assert any("last stored run #1" in i.value for i in fresh.info)
    assert number(metric(fresh, "Memory saving")) == pytest.approx(run.summary["saving_pct"], abs=0.06)
    assert len(fresh.get("plotly_chart")) == 4


def test_stop_keeps_what_was_done_as_interrupted(home):
    at = app()
    tiny(at, train=640)  # 10 steps: plenty of time to stop
    at.button(key="run").click().run()
    wait(at, until=lambda job: job.steps or job.status != "running")
    at.button(key="stop").click().run()
    job = at.session_state["job"]
    assert job.status == "interrupted" and job.steps
    assert any("Stopped after" in w.value for w in at.warning)
    assert number(metric(at, "Memory saving")) > 0  # what was done is still shown
    (run,) = RunStore().list_runs()
    assert run.status == "interrupted" and run.summary["steps"]["baseline"] >= 1
    at.run()
    assert at.session_state["job"].status == "interrupted"  # not restarted by a rerun


def test_bad_rank_shows_an_error_not_a_traceback(home):
    at = app()
    at.text_input(key="rank").input("2.0")
    at.button(key="run").click().run()
    assert not at.exception
    assert "rank=2.0 is not allowed" in at.error[0].value
    assert "job" not in at.session_state or at.session_state["job"] is None
    assert not RunStore().list_runs()


def test_missing_dataset_shows_the_fix(home, tmp_path):
    at = app()
    at.selectbox(key="dataset").set_value("cifar10")
    at.text_input(key="data_dir").input(str(tmp_path / "empty"))
    at.button(key="run").click().run()
    wait(at)
    assert not at.exception
    assert at.session_state["job"].status == "failed"
    assert any("cifar10" in e.value and "To fix" in e.value for e in at.error)


def test_presets_set_the_controls_and_hand_edits_make_custom(home):
    at = app()
    at.segmented_control(key="preset").set_value("max-saving").run()
    assert at.selectbox(key="bits").value == 2 and at.checkbox(key="recompute").value
    at.segmented_control(key="preset").set_value("paper").run()
    assert at.selectbox(key="update").value == "last" and not at.checkbox(key="recompute").value
    at.text_input(key="rank").input("0.25").run()
    assert at.segmented_control(key="preset").value == "custom"


def test_navigation_reaches_every_page(home):
    at = app()
    for page in ("pages/1_Sweep.py", "pages/2_Layers.py", "pages/3_Compression.py", "pages/4_History.py"):
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert at.title[0].value in ("Sweep", "Layers", "Compression", "History")


@pytest.mark.parametrize("page", ["pages/1_Sweep.py", "pages/2_Layers.py", "pages/3_Compression.py",
                                  "pages/4_History.py"])
def test_every_page_loads(home, page):
    app(page)


def test_layers_page_reports_and_measures(home):
    at = app("pages/2_Layers.py")
    assert len(at.get("plotly_chart")) == 2
    assert number(metric(at, "Memory saving")) > 0
    at.text_input(key="layers_rank").input("-1").run()
    assert not at.exception and "rank" in at.error[0].value


def test_compression_page_error_shrinks_with_bits(home):
    at = app("pages/3_Compression.py")
    assert len(at.get("plotly_chart")) == 3
    at.slider(key="cmp_bits").set_value(2).run()
    err2 = number(metric(at, "Relative error"))
    at.slider(key="cmp_bits").set_value(8).run()
    assert number(metric(at, "Relative error")) < err2


def test_sweep_runs_stores_and_draws(home):
    at = app("pages/1_Sweep.py")
    at.multiselect(key="sweep_ranks").set_value(["0.5"])
    at.multiselect(key="sweep_bits").set_value([2])
    at.number_input(key="sweep_epochs").set_value(1)
    at.number_input(key="sweep_max_train").set_value(128)
    at.button(key="sweep_run").click().run()
    wait(at, "sweep_job")
    job = at.session_state["sweep_job"]
    assert job.status == "completed", job.error
    assert [p["variant"] for p in job.points] == ["baseline", "facto"]
    assert len(at.get("plotly_chart")) == 2 and at.dataframe
    assert len(RunStore().list_runs()) == 2


def test_sweep_stop_keeps_the_finished_points(home):
    at = app("pages/1_Sweep.py")
    at.multiselect(key="sweep_ranks").set_value(["0.5"])
    at.multiselect(key="sweep_bits").set_value([2, 4])
    at.number_input(key="sweep_epochs").set_value(1)
    at.number_input(key="sweep_max_train").set_value(640)
    at.button(key="sweep_run").click().run()
    wait(at, "sweep_job", until=lambda job: job.points or job.status != "running")  # the baseline is done
    at.button(key="sweep_stop").click().run()
    job = at.session_state["sweep_job"]
    assert job.status == "interrupted" and [p["variant"] for p in job.points] == ["baseline"]
    assert any("Stopped after 1 of 3 runs" in w.value for w in at.warning)
    statuses = [r.status for r in RunStore().list_runs()]
    assert statuses[-1] == "completed" and statuses[0] in ("interrupted", "completed")


def test_history_lists_compares_and_deletes(home):
    store = RunStore()
    for rank in (0.5, 0.25):
        run_id = store.start_run({"model": "simple_cnn", "dataset": "digits", "rank": rank, "bits": 4})
        store.log_metrics(run_id, [(v, "eval", 5, 1, {"accuracy": 90.0, "loss": 0.3}) for v in ("baseline", "facto")])
        store.finish_run(run_id, "completed", {"saving_pct": 80.0, "accuracy_delta": -1.0,
                                               "accuracy": {"baseline": 90.0, "facto": 89.0}})
    at = app("pages/4_History.py")
    assert at.multiselect(key="hist_selected").value == [2, 1]
    assert len(at.get("plotly_chart")) == 2
    assert len(json.loads(at.get("plotly_chart")[0].proto.spec)["data"]) == 4
    at.multiselect(key="hist_selected").set_value([2]).run()
    at.checkbox(key="hist_confirm").check().run()
    at.button(key="hist_delete").click().run()
    assert not at.exception
    assert [r.id for r in RunStore().list_runs()] == [1]


class FakeGpuJob:
    """A finished job as a CUDA run reports it (this machine has no GPU)."""

    status, remembered, run_id = "completed", True, 7

    def view(self) -> dict:
        summary = {"status": "completed", "steps": {"baseline": 10, "facto": 10},
                   "accuracy": {"baseline": 99.0, "facto": 98.5}, "act_bytes": {"baseline": 32e6, "facto": 2e6},
                   "peak_cuda": {"baseline": 900e6, "facto": 300e6}, "step_seconds": {"baseline": .01, "facto": .01},
                   "saving_pct": 93.75, "accuracy_delta": -0.5}
        steps = [dict(variant=v, step=s, epoch=1, loss=1.0, accuracy=50.0, act_bytes=summary["act_bytes"][v],
                      raw_bytes=summary["act_bytes"][v], peak_cuda=summary["peak_cuda"][v]) for s in (1, 2)
                 for v in ("baseline", "facto")]
        return dict(source="session", status="completed", config={"model": "simple_cnn", "dataset": "digits"},
                    run_id=7, steps=steps, evals=[], summary=summary, error=None, stopping=False,
                    layer_bytes={}, report=[], total_steps=10, steps_per_epoch=10,
                    device="NVIDIA H200 (139 GiB)", device_type="cuda", params={"baseline": 10, "facto": 5},
                    trainable={"facto": 2}, train_size=1400, test_size=397)


def test_gpu_runs_show_the_device_and_the_cuda_peak(home):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.session_state["job"] = FakeGpuJob()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "NVIDIA H200 (139 GiB)" in at.markdown[0].value
    assert metric(at, "Peak CUDA memory (Facto)") == "300.00 MB"
    assert "CUDA peak" in at.get("plotly_chart")[1].proto.spec
