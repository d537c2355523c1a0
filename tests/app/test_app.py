"""The Streamlit app and its pages, driven headless with streamlit.testing.v1.AppTest.

Every test uses a temporary FACTO_HOME, so the run store starts empty, and a fresh server
state: jobs belong to the server's registry (`ui.registry()`, an st.cache_resource shared by
every AppTest of this process), so the fixture clears the cached resources before a test and
stops what is still going after it. Training runs use one epoch on a 128-image subset (2
steps per variant) to stay fast. Runs with made-up events (a GPU run, a run too short to
compare, a sweep at chance level) are real `facto.engine.jobs.Job`s fed by a list of events.
"""
from __future__ import annotations

import base64
import functools
import json
import re
import threading
import time
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from facto.config import RunConfig
from facto.engine.events import EvalEvent, RunTracker, StartEvent, StepEvent, SummaryEvent
from facto.engine.jobs import Job
from facto.engine.sweep import SweepPoint, SweepStart, SweepTracker
from facto.store.history import RunStore

from .apptest import app_test

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 120  # seconds per script run: the first one imports torch and factorizes
RUN_LIMIT = 240  # seconds for a whole tiny training run on a busy 2-core machine
PAGES = ["pages/1_sweep.py", "pages/2_layers.py", "pages/3_compression.py", "pages/4_history.py"]


@pytest.fixture()
def ui(tmp_path, monkeypatch):
    """The `ui` module the app imports, with a fresh server state and an empty FACTO_HOME."""
    monkeypatch.setenv("FACTO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FACTO_ROOM", raising=False)
    # runs train in threads here (the pages' logic); the real-browser tests run the server's default,
    # a child process per run, and tests/engine/test_jobs.py the child itself
    monkeypatch.setenv("FACTO_JOBS", "thread")
    monkeypatch.syspath_prepend(str(ROOT))  # the app imports ui and facto from the repo root
    import ui as module

    st.cache_resource.clear()  # registry, history, room settings, owners: new for this test
    yield module
    for job in module.registry().jobs(active_only=True):
        job.stop(wait_s=60)
    st.cache_resource.clear()


def app(page: str = "app.py", visitor: str | None = None, **query: str) -> AppTest:
    """`page` opened and run once; `visitor`: who opens it (AppTest sends no browser cookie, so
    the app takes the visitor of the session)."""
    at = app_test(page, TIMEOUT)
    at.query_params.update(query)
    if visitor is not None:
        at.session_state["visitor"] = visitor
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def tiny(at: AppTest, train: int = 128) -> None:
    at.number_input(key="epochs").set_value(1)
    at.number_input(key="max_train").set_value(train)
    at.number_input(key="max_test").set_value(64)


def wait(at: AppTest, job: Job, until=lambda job: job.finished) -> None:
    """Redraw the page (as the live fragment does every second) until `until(job)` holds."""
    deadline = time.monotonic() + RUN_LIMIT
    while not until(job):
        assert time.monotonic() < deadline, "the run did not get there in time"
        time.sleep(0.3)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
    at.run()  # the first redraw after the end re-enables the controls


def watched(ui, at: AppTest, key: str = "watch") -> Job:
    return ui.registry().get(at.session_state[key])


def steady_style(at: AppTest) -> bool:
    """Whether the page carries the style that keeps live-redrawn elements from fading."""
    return any("data-stale" in (e.proto.body or "") for e in at.get("html"))


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def number(text: str) -> float:
    return float(re.search(r"[-+]?\d+(?:\.\d+)?", text.replace(",", "")).group())


def spec(chart) -> dict:
    return json.loads(chart.proto.spec)


def texts(at: AppTest, kind: str) -> list[str]:
    return [e.value for e in getattr(at, kind)]


def fake_job(ui, events: list, accumulator, meta: dict, owner: str | None = None) -> Job:
    """A real job of the server's registry, fed by made-up events; finished when returned."""
    job = ui.registry().submit(Job(lambda: iter(events), accumulator, label="made up", owner=owner, meta=meta))
    assert job.wait(30) and job.status == "completed", job.error
    return job


def run_events(accuracy: dict, peak: dict | None = None, device: str = "CPU", steps: int = 2) -> list:
    """A finished comparison: start, steps of both variants, one test each, summary."""
    config = RunConfig(epochs=1).to_dict()
    act = {"baseline": 32_000_000, "facto": 2_000_000}
    peak = peak or {"baseline": None, "facto": None}
    events = [StartEvent(config=config, device="cuda" if peak["facto"] else "cpu", device_name=device,
                         steps_per_epoch=steps, total_steps=steps, train_size=1400, test_size=397,
                         params={"baseline": 10, "facto": 5}, trainable_params={"baseline": 10, "facto": 2},
                         layer_bytes={v: {"features.0": b} for v, b in act.items()}, report=[], evals_planned=1)]
    events += [StepEvent(v, s, 1, 1.0, 50.0, act[v], act[v], peak[v], 0.01, 1e-3)
               for s in range(1, steps + 1) for v in ("baseline", "facto")]
    events += [EvalEvent(v, steps, 1, 0.5, accuracy[v]) for v in ("baseline", "facto")]
    events.append(SummaryEvent("completed", {v: steps for v in act}, accuracy, act, peak, {v: 0.01 for v in act},
                               {"baseline": 10, "facto": 5}, 1.0, 93.75, accuracy["facto"] - accuracy["baseline"]))
    return events


def stored_run(store: RunStore, rank: float, status: str = "completed", delta: float = -1.0,
               baseline: float = 90.0, **config) -> int:
    run_id = store.start_run(RunConfig(rank=rank, epochs=1, **config).to_dict(), kind="compare")
    store.log_metrics(run_id, [(v, "eval", 5, 1, {"accuracy": 90.0, "loss": 0.3}) for v in ("baseline", "facto")])
    store.log_metrics(run_id, [(v, "step", s, 1, {"accuracy": 50.0, "loss": 1.0, "act_bytes": 3e7})
                               for s in (1, 2) for v in ("baseline", "facto")])
    store.finish_run(run_id, status, {
        "saving_pct": 80.0, "accuracy_delta": delta, "accuracy": {"baseline": baseline, "facto": baseline + delta},
        "act_bytes": {"baseline": 31_868_672, "facto": 1_781_760}, "steps": {"baseline": 5, "facto": 5},
        "peak_cuda": {"baseline": None, "facto": None}, "step_seconds": {"baseline": 0.05, "facto": 0.07},
        "params": {"baseline": 72_666, "facto": 27_674}, "wall_seconds": 31.2,
        "process_peak": {"baseline": 900_000_000, "facto": 500_000_000}})
    return run_id


# ----------------------------------------------------------------------------- main page

def test_main_page_loads_with_the_runconfig_defaults(ui):
    at = app()
    defaults = RunConfig()
    assert at.title[0].value.startswith("Facto")
    assert at.selectbox(key="model").value == defaults.model
    assert at.selectbox(key="dataset").value == defaults.dataset
    assert at.text_input(key="rank").value == str(defaults.rank)
    assert at.selectbox(key="bits").value == defaults.bits
    assert at.number_input(key="epochs").value == defaults.epochs
    assert at.checkbox(key="recompute").value is defaults.recompute
    assert at.radio(key="preset").value == "balanced"
    assert not at.button(key="run").disabled and at.button(key="stop").disabled
    assert any("press **Run**" in i.value for i in at.info)


def test_run_completes_with_metrics_charts_and_a_stored_run(ui):
    at = app()
    tiny(at)
    at.button(key="run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    job = watched(ui, at)
    if not job.finished:  # controls are locked while it trains
        assert at.number_input(key="epochs").disabled and at.text_input(key="rank").disabled
        assert at.button(key="run").disabled and not at.button(key="stop").disabled
    wait(at, job)
    assert job.status == "completed", job.error
    assert number(metric(at, "Memory saving")) > 0
    assert number(metric(at, "Facto activations")) < number(metric(at, "Baseline activations"))
    assert metric(at, "Baseline accuracy").endswith("%") and metric(at, "Facto accuracy").endswith("%")
    charts = at.get("plotly_chart")
    assert [spec(c)["layout"]["title"]["text"].replace("<br>", " ") for c in charts] == [
        "Accuracy and loss vs step", "Activations stored for backward",
        "Process memory per step: stored vs what the machine gave the process (MB)",  # on a CPU under Linux
        "Stored per layer (one batch)", "Memory saving vs accuracy change"]
    process = spec(charts[2])["data"]
    assert {t["name"] for t in process} == {"Baseline · step peak", "Baseline · stored for backward",
                                            "Facto · step peak", "Facto · stored for backward"}, [t["name"] for t in process]
    assert all(spec(c)["data"] for c in charts)
    assert "Stored as run #1" in at.success[0].value
    assert not at.dataframe  # the factorization report is drawn only when opened
    at.session_state["report_open"] = True
    at.run()
    (table,) = at.dataframe
    report = job.read(lambda t: t.start.report)
    assert list(table.value["layer"]) == [r["name"] for r in report]
    assert (table.value["kept"] == "dense").any() and (table.value["kept"] == "factorized").any()
    assert "—" in str(table.proto)  # empty cells (dense layers' ranks, error) show a dash, not None
    at.session_state["report_open"] = False
    at.run()
    assert not at.button(key="run").disabled and not at.number_input(key="epochs").disabled
    (run,) = RunStore().list_runs()
    assert run.status == "completed" and run.config["epochs"] == 1 and run.config["max_train"] == 128
    assert run.summary["saving_pct"] > 0
    assert ui.runs_started_by(at.session_state["visitor"]) == {run.id}  # remembered for room mode

    at.run()  # a rerun neither restarts nor loses the run
    assert watched(ui, at) is job and len(RunStore().list_runs()) == 1

    fresh = app()  # a new tab shows the stored run
    assert any("last stored run #1" in i.value for i in fresh.info)
    assert number(metric(fresh, "Memory saving")) == pytest.approx(run.summary["saving_pct"], abs=0.06)
    assert len(fresh.get("plotly_chart")) == 5  # the process memory chart too (a CPU under Linux)

    again = app(job=str(job.id))  # a reloaded tab (?job=N) reattaches to the run
    assert again.session_state["watch"] == job.id and "Stored as run #1" in again.success[0].value


def test_stop_keeps_what_was_done_as_interrupted(ui):
    at = app()
    tiny(at, train=640)  # 10 steps: plenty of time to stop
    at.button(key="run").click().run()
    job = watched(ui, at)
    wait(at, job, until=lambda job: job.read(lambda t: bool(t.steps)) or job.finished)
    assert steady_style(at)  # redrawn live: no fade of stale elements
    assert not any("Runs on this server" in m.value for m in at.markdown)  # the only run: its progress says it
    at.button(key="stop").click().run()
    assert job.status == "interrupted" and job.read(lambda t: bool(t.steps))
    assert not steady_style(at)  # a stored run is no live view
    assert any("Stopped after" in w for w in texts(at, "warning"))
    assert number(metric(at, "Memory saving")) > 0  # what was done is still shown
    (run,) = RunStore().list_runs()
    assert run.status == "interrupted" and run.summary["steps"]["baseline"] >= 1
    at.run()
    assert watched(ui, at).status == "interrupted"  # not restarted by a rerun


def test_bad_rank_shows_a_plain_error_next_to_the_input_before_run(ui):
    at = app()
    at.text_input(key="rank").input("2.0").run()
    assert not at.exception
    errors = texts(at, "error")  # at once, before Run, in plain words, under the input and named next to Run
    assert errors[0] == "Can't run yet: fix Rank (marked below)." and len(errors) == 2
    assert errors[1].startswith("Rank: '2.0' is not allowed. Use a fraction of the channels")
    at.button(key="run").click().run()
    assert not ui.registry().jobs() and not RunStore().list_runs()
    at.text_input(key="rank").input("0.5").run()
    assert texts(at, "error") == []  # gone once the input is fixed


def test_missing_dataset_shows_the_fix(ui, tmp_path):
    at = app()
    at.selectbox(key="dataset").set_value("cifar10")
    at.text_input(key="data_dir").input(str(tmp_path / "empty"))
    at.button(key="run").click().run()
    job = watched(ui, at)
    wait(at, job)
    assert job.status == "failed"
    assert any("cifar10" in e and "To fix" in e for e in texts(at, "error"))


def test_presets_set_the_controls_and_hand_edits_make_custom(ui):
    at = app()
    at.radio(key="preset").set_value("max-saving").run()
    assert at.selectbox(key="bits").value == 2 and at.checkbox(key="recompute").value
    at.radio(key="preset").set_value("paper").run()
    assert at.selectbox(key="update").value == "last" and not at.checkbox(key="recompute").value
    at.text_input(key="rank").input("0.25").run()
    assert at.radio(key="preset").value == "custom"


def test_too_short_run_is_flagged_and_tradeoff_chart_shows_every_point(ui):
    """A made-up finished run at +13.85 points: the baseline at 40 % is too short to compare,
    and the run's point lies inside the tradeoff chart's y range."""
    job = fake_job(ui, run_events({"baseline": 40.0, "facto": 53.85}), RunTracker(),
                   meta={"config": RunConfig(epochs=1).to_dict()})
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.session_state["watch"] = job.id
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("only 40.0 % test accuracy" in w and "Train longer" in w for w in texts(at, "warning"))
    tradeoff = next(spec(c) for c in at.get("plotly_chart")
                    if spec(c)["layout"]["title"]["text"] == "Memory saving vs accuracy change")
    low, high = tradeoff["layout"]["yaxis"]["range"]
    (point,) = [y for t in tradeoff["data"] for y in t["y"]]
    assert point == pytest.approx(13.85) and low < point < high


def test_gpu_runs_show_the_device_and_the_cuda_peak(ui):
    events = run_events({"baseline": 99.0, "facto": 98.5}, peak={"baseline": 900e6, "facto": 300e6},
                        device="NVIDIA H200 (139 GiB)")
    job = fake_job(ui, events, RunTracker(), meta={"config": RunConfig(epochs=1).to_dict()})
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.session_state["watch"] = job.id
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("NVIDIA H200 (139 GiB)" in m.value for m in at.markdown)
    assert metric(at, "Peak CUDA memory (Facto)") == "300.00 MB"
    assert metric(at, "Peak CUDA memory (baseline)") == "900.00 MB"
    assert "CUDA peak" in at.get("plotly_chart")[1].proto.spec
    gpu = spec(at.get("plotly_chart")[2])  # what the allocator holds per step, beside the stored bytes
    assert gpu["layout"]["title"]["text"].startswith("GPU memory per step")
    assert {t["name"] for t in gpu["data"]} >= {"Baseline · step peak", "Facto · step peak",
                                                "Facto · stored for backward"}


def test_a_watched_run_draws_pictures_while_it_goes_and_interactive_charts_when_done(ui):
    """While a run goes its charts are SVG pictures drawn on the server (cheap for the browser to
    replace, no chart library to load); when it ends, the same figures as Plotly charts."""
    events = run_events({"baseline": 90.0, "facto": 89.0})
    finish = threading.Event()

    def produce():
        yield from events[:-1]
        finish.wait(60)
        yield events[-1]

    job = ui.registry().submit(Job(produce, RunTracker(), label="made up",
                                   meta={"config": RunConfig(epochs=1).to_dict()}))
    deadline = time.monotonic() + 30
    while not job.read(lambda t: bool(t.evals)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.session_state["watch"] = job.id
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert job.status == "running" and not at.get("plotly_chart")
    pictures = [base64.b64decode(url.split(",", 1)[1]).decode() for image in at.image for url in image.value
                if url.startswith("data:image/svg+xml;base64,")]
    titles = ["Accuracy and loss vs step", "Activations stored for backward",
              "Stored per layer (one batch)", "Memory saving vs accuracy change"]
    assert len(pictures) == 4 and all(title in svg for title, svg in zip(titles, pictures))
    assert "Facto · test" in pictures[0] and "Current run (live" in pictures[3]
    finish.set()
    assert job.wait(30) and job.status == "completed"
    at.run()
    assert not at.image and [spec(c)["layout"]["title"]["text"].replace("<br>", " ")
                             for c in at.get("plotly_chart")] == titles


# ----------------------------------------------------------------------------- navigation

def test_navigation_reaches_every_page(ui):
    at = app()
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert at.title[0].value in ("Sweep", "Layers", "Compression", "History")


def test_the_main_page_opens_a_sweep_of_the_server_on_the_sweep_page(ui):
    """A sweep in the main page's list of the server's runs: Open switches to the Sweep page (at
    its file in pages/), watching that sweep."""
    config = RunConfig(epochs=1).to_dict()
    release = threading.Event()

    def events():
        yield SweepStart(2, [config])
        release.wait(60)  # still going while the main page lists it

    job = ui.registry().submit(Job(events, SweepTracker(), label="made up", owner="alice",
                                   meta={"config": config, "kind": "sweep"}))
    try:
        at = app(visitor="bob")
        at.button(key=f"watch_{job.id}").click().run()
        assert not at.exception, [e.value for e in at.exception]
        assert at.title[0].value == "Sweep" and at.session_state["sweep_watch"] == job.id
    finally:
        release.set()
        assert job.wait(30)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_loads(ui, page):
    at = app(page)
    assert not at.error, texts(at, "error")


# ----------------------------------------------------------------------------- sweep

def sweep_page(ranks: list[str], bits: list, train: int) -> AppTest:
    at = app("pages/1_sweep.py")
    at.multiselect(key="sweep_ranks").set_value(ranks)
    at.multiselect(key="sweep_bits").set_value(bits)
    at.number_input(key="sweep_epochs").set_value(1)
    at.number_input(key="sweep_max_train").set_value(train)
    return at


def test_sweep_base_settings_start_at_the_runconfig_defaults(ui):
    at = app("pages/1_sweep.py")
    d = RunConfig()
    assert at.selectbox(key="sweep_model").value == d.model and at.selectbox(key="sweep_dataset").value == d.dataset
    assert at.number_input(key="sweep_epochs").value == d.epochs and at.number_input(key="sweep_seed").value == d.seed
    assert at.checkbox(key="sweep_recompute").value is d.recompute
    assert at.number_input(key="sweep_max_train").value == 0  # all images
    assert str(d.rank) in at.multiselect(key="sweep_ranks").value and d.bits in at.multiselect(key="sweep_bits").value
    assert at.multiselect(key="sweep_bits").options == [ui.SETTINGS["bits"].format(b)
                                                         for b in ui.SETTINGS["bits"].allowed()]
    at.multiselect(key="sweep_ranks").set_value(["0.5", "two"]).run()
    assert any(e.startswith("Rank 'two' is not allowed") for e in texts(at, "error"))  # at once, before Run
    assert "Can't run yet: fix the grid (marked below)." in texts(at, "error")
    at.button(key="sweep_run").click().run()
    assert not ui.registry().jobs()
    at.multiselect(key="sweep_ranks").set_value(["0.5"]).run()
    assert texts(at, "error") == []  # gone once the rank is fixed


def test_sweep_runs_stores_draws_and_reattaches(ui):
    at = sweep_page(["0.5"], [2], train=128)
    at.button(key="sweep_run").click().run()
    job = watched(ui, at, "sweep_watch")
    wait(at, job)
    assert job.status == "completed", job.error
    points = job.read(lambda t: list(t.points))
    assert [p.variant for p in points] == ["baseline", "facto"]
    assert len(at.get("plotly_chart")) == 2 and at.dataframe
    assert any("Sweep done: 2 runs" in s for s in texts(at, "success"))
    runs = RunStore().list_runs()
    assert len(runs) == 2 and {r.kind for r in runs} == {"sweep"}
    assert ui.runs_started_by(at.session_state["visitor"]) == {r.id for r in runs}
    front = next(t for t in spec(at.get("plotly_chart")[0])["data"] if t["name"].startswith("Pareto front"))
    assert len(front["x"]) >= 3  # a visible line with a single Facto point

    again = app("pages/1_sweep.py", sweep=str(job.id))  # a reloaded tab (?sweep=N) finds the sweep again
    assert again.session_state["sweep_watch"] == job.id
    assert any("Sweep done" in s for s in texts(again, "success"))


def test_sweep_stop_keeps_the_finished_points(ui):
    at = sweep_page(["0.5"], [2, 4], train=640)
    at.button(key="sweep_run").click().run()
    job = watched(ui, at, "sweep_watch")
    wait(at, job, until=lambda job: job.read(lambda t: bool(t.points)) or job.finished)  # the baseline is done
    assert steady_style(at)
    at.button(key="sweep_stop").click().run()
    assert job.status == "interrupted" and not steady_style(at)
    assert [p.variant for p in job.read(lambda t: list(t.points))] == ["baseline"]
    assert any("Stopped after 1 of 3 runs" in w for w in texts(at, "warning"))
    statuses = [r.status for r in RunStore().list_runs()]
    assert statuses[-1] == "completed" and statuses[0] in ("interrupted", "completed")


def test_another_visitors_sweep_is_listed_with_its_progress_and_can_be_watched(ui):
    alice = sweep_page(["0.5"], [2, 4], train=640)
    alice.session_state["visitor"] = "alice"
    alice.button(key="sweep_run").click().run()
    job = watched(ui, alice, "sweep_watch")
    bob = app("pages/1_sweep.py", visitor="bob")
    rows = [m.value for m in bob.markdown if m.value.startswith(f"#{job.id} ·")]
    assert rows and re.search(r"started by visitor \w+ · (run \d of 3|starting)$", rows[0]), rows
    bob.button(key=f"sweep_watch_{job.id}").click().run()
    assert bob.session_state["sweep_watch"] == job.id
    assert any(f"Watching sweep #{job.id}, started by" in c for c in texts(bob, "caption"))
    assert not any(m.value.startswith(f"#{job.id} ·") for m in bob.markdown)  # watched: no longer in the list
    job.stop(wait_s=60)


def test_sweep_too_short_says_what_to_change(ui):
    config = RunConfig(epochs=1, max_train=128).to_dict()

    def point(i, variant, acc):
        return SweepPoint(i, 3, variant, "0.5", 4 if i else None, "core" if i else "-", "completed", acc, 10,
                          92.0, 100, 90.0, acc - 92.0, 0.01, config)

    events = [SweepStart(3, [config, config]), point(0, "baseline", 92.0), point(1, "facto", 10.5),
              point(2, "facto", 12.0)]
    job = fake_job(ui, events, SweepTracker(), meta={"config": config, "kind": "sweep"})
    at = app_test("pages/1_sweep.py", TIMEOUT)
    at.session_state["sweep_watch"] = job.id
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (warning,) = [w for w in texts(at, "warning") if "chance level" in w]
    assert "more epochs per run (now 1)" in warning and "(now 128)" in warning


# ----------------------------------------------------------------------------- layers, compression

def test_layers_page_reports_measures_and_explains(ui):
    at = app("pages/2_layers.py")
    d = RunConfig()
    assert at.checkbox(key="layers_recompute").value is d.recompute  # the main page's defaults
    assert at.text_input(key="layers_rank").value == str(d.rank) and at.selectbox(key="layers_bits").value == d.bits
    assert len(at.get("plotly_chart")) == 3  # stored bytes per layer, their types, the weights' spectrum
    assert number(metric(at, "Memory saving")) > 0
    at.checkbox(key="layers_recompute").uncheck().run()
    explained = [i.value for i in at.info if "more in Facto than in the baseline" in i.value]
    assert any("MaxPool2d" in e and "ReLU → MaskReLU" in e and "1 bit per value" in e for e in explained)
    at.text_input(key="layers_rank").input("-1").run()
    assert not at.exception and any("Rank: '-1' is not allowed" in e for e in texts(at, "error"))


def test_compression_page_error_shrinks_with_bits(ui):
    at = app("pages/3_compression.py")
    assert len(at.get("plotly_chart")) == 3
    assert at.select_slider(key="cmp_batch_size").value == RunConfig().batch_size
    assert at.select_slider(key="cmp_block").value == RunConfig().block
    at.select_slider(key="cmp_bits").set_value(2).run()
    err2 = number(metric(at, "Relative error"))
    at.select_slider(key="cmp_bits").set_value(8).run()
    assert not at.exception and number(metric(at, "Relative error")) < err2


# ----------------------------------------------------------------------------- history

def test_history_lists_compares_and_deletes(ui):
    store = RunStore()
    stored_run(store, 0.5)
    stored_run(store, 0.25, status="interrupted")
    at = app("pages/4_history.py")
    assert at.multiselect(key="hist_selected").value == [2]  # the newest run, although interrupted
    listed = at.dataframe[0].value
    assert list(listed["#"]) == [2, 1] and set(listed["status"]) == {"completed", "stopped (kept)"}
    assert list(listed["accuracy"]) == ["90.0 → 89.0", "90.0 → 89.0"]
    assert "None" not in listed.astype(str).to_string() and "nan" not in listed.astype(str).to_string()
    at.multiselect(key="hist_selected").set_value([2, 1]).run()
    history, tradeoff = at.get("plotly_chart")
    traces = spec(history)["data"]
    assert [t["name"] for t in traces] == ["#2 · Baseline", "#2 · Facto", "#1 · Baseline", "#1 · Facto"]
    assert len({t["line"]["dash"] for t in traces}) == 2  # one dash per run
    table = at.dataframe[1].value
    assert list(table.columns) == ["#2", "#1"]
    assert {"Memory saving", "Facto: stored for backward", "Rank"} <= set(table.index)
    assert table.loc["Facto: stored for backward", "#2"] == "1.78 MB"
    assert table.loc["Facto: process peak (what the machine gave it)", "#2"] == "500.00 MB"
    assert table.loc["Test accuracy change", "#1"] == "-1.00 points"
    assert not any(re.search(r"\bNone\b|\bnan\b|act_bytes|wall_seconds", v) for v in table.to_numpy().ravel())
    at.multiselect(key="hist_selected").set_value([2]).run()
    at.checkbox(key="hist_confirm").check().run()
    at.button(key="hist_delete").click().run()
    assert not at.exception
    assert [r.id for r in RunStore().list_runs()] == [1]


def test_main_page_opens_on_the_newest_run_that_trained(ui):
    """A run stopped before its first step is skipped (it has nothing to show) unless the URL names it;
    then its charts say it stored no step instead of waiting for one."""
    store = RunStore()
    stored_run(store, 0.5)
    empty = store.start_run(RunConfig().to_dict(), kind="compare")
    store.finish_run(empty, "interrupted", {"steps": {"baseline": 0, "facto": 0}})
    at = app()
    assert any("last stored run #1" in i.value for i in at.info)
    named = app(run=str(empty))
    assert any(f"last stored run #{empty}" in i.value for i in named.info)
    words = [a["text"] for c in named.get("plotly_chart")[:2] for a in spec(c)["layout"]["annotations"]]
    assert words == ["This run stored no training step."] * 2


def test_history_warns_when_a_selected_run_is_too_short_to_compare(ui):
    store = RunStore()
    stored_run(store, 0.5, baseline=25.0, delta=-15.0)
    stored_run(store, 0.5)
    at = app("pages/4_history.py")
    assert not [w for w in texts(at, "warning") if "too short" in w]  # the newest run learned
    at.multiselect(key="hist_selected").set_value([2, 1]).run()
    (warning,) = [w for w in texts(at, "warning") if "too short" in w]
    assert warning.startswith("#1: the baseline reached only 25.0 % test accuracy") and "#2" not in warning


def test_history_filters_survive_deleting_the_runs_they_matched(ui):
    store = RunStore()
    stored_run(store, 0.5)
    at = app("pages/4_history.py")
    at.multiselect(key="hist_models").set_value(["simple_cnn"]).run()
    at.checkbox(key="hist_confirm").check().run()
    at.button(key="hist_delete").click().run()
    assert not at.exception and not RunStore().list_runs()
    stored_run(store, 0.25, model="resnet20")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.multiselect(key="hist_models").value == ["simple_cnn"]  # kept, although no run has it now
    assert at.subheader[0].value == "0 of 1 run"


def test_history_in_room_mode_shows_and_deletes_only_the_visitors_runs(ui, monkeypatch):
    monkeypatch.setenv("FACTO_ROOM", "1")
    store = RunStore()
    mine, theirs = stored_run(store, 0.5), stored_run(store, 0.25)
    ui.run_owners().add("me", mine)
    ui.run_owners().add("them", theirs)
    at = app("pages/4_history.py", visitor="me")
    assert list(at.dataframe[0].value["#"]) == [mine]  # their run is not even listed
    (option,) = at.multiselect(key="hist_selected").options
    assert option.startswith(f"#{mine} · ")
    at.checkbox(key="hist_confirm").check().run()
    at.button(key="hist_delete").click().run()
    assert [r.id for r in RunStore().list_runs()] == [theirs]  # only the visitor's own run went
    other = app("pages/4_history.py", visitor="them")
    assert list(other.dataframe[0].value["#"]) == [theirs]


def test_history_drops_another_visitors_run_from_a_selection_in_room_mode(ui, monkeypatch):
    """A selection naming another visitor's run (a crafted session state) is dropped: it can't
    be compared nor deleted, and the delete button stays off."""
    monkeypatch.setenv("FACTO_ROOM", "1")
    theirs = stored_run(RunStore(), 0.25)
    ui.run_owners().add("them", theirs)
    at = app_test("pages/4_history.py", TIMEOUT)
    at.session_state["visitor"] = "me"
    at.session_state["hist_selected"] = [theirs]
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("You have not started a run" in i.value for i in at.info)  # nothing of theirs is shown
    assert not [b for b in at.button if b.key == "hist_delete"]
    assert [r.id for r in RunStore().list_runs()] == [theirs]


@pytest.mark.parametrize("state", ["read-only", "off"])
def test_history_says_when_it_is_read_only_or_off_and_disables_delete(ui, monkeypatch, tmp_path, state):
    import facto.store.history

    if state == "read-only":
        stored_run(RunStore(), 0.5)
        monkeypatch.setattr(facto.store.history, "RunStore", functools.partial(facto.store.history.RunStore, read_only=True))
    else:
        (tmp_path / "a file").write_text("not a folder")
        monkeypatch.setenv("FACTO_HOME", str(tmp_path / "a file"))
    at = app("pages/4_history.py")
    if state == "read-only":
        assert any("read-only" in w for w in texts(at, "warning"))
        assert at.checkbox(key="hist_confirm").disabled and at.button(key="hist_delete").disabled
        assert any("Delete is off" in c.value for c in at.caption)
        assert len(RunStore().list_runs()) == 1
    else:
        assert any("Run history is off" in e for e in texts(at, "error"))
        assert any("Nothing to show" in i.value for i in at.info)
        assert not [b for b in at.button if b.key == "hist_delete"]


# ----------------------------------------------------------------------------- room mode (main page)

def room_text(at: AppTest) -> str:
    """The room's limits as the page shows them (next to Run, or at the end of the sidebar)."""
    return " ".join(texts(at, "caption") + [i.value for i in at.info])


def test_room_mode_shows_its_bounds_fixes_the_data_and_offers_no_more_than_them(ui, monkeypatch, tmp_path):
    monkeypatch.setenv("FACTO_ROOM", "1")
    monkeypatch.setenv("FACTO_ROOM_MAX_EPOCHS", "3")
    monkeypatch.setenv("FACTO_DATA_DIR", str(tmp_path / "room-data"))
    st.cache_resource.clear()
    at = app()
    assert "Room mode: at most 3 epochs" in room_text(at)
    assert at.text_input(key="data_dir").disabled and at.text_input(key="data_dir").value == str(tmp_path / "room-data")
    assert at.checkbox(key="download").disabled and not at.checkbox(key="download").value
    assert at.number_input(key="epochs").max == 3 and at.number_input(key="max_train").max == 20_000
    assert max(at.select_slider(key="batch_size").options, key=float) == "256"  # the room's largest batch
    assert "This room allows at most 3." in at.number_input(key="epochs").help
    assert not texts(at, "error") and "runs.db" not in room_text(at)  # the server's folders are not shown
    assert "Run history: kept on the server" in texts(at, "caption")


def test_room_mode_runs_its_defaults_and_says_what_a_run_will_do(ui, monkeypatch):
    """Train images "all" is digits' 1,400 images, within the room's 20,000: the default run starts."""
    monkeypatch.setenv("FACTO_ROOM", "1")
    st.cache_resource.clear()
    at = app(visitor="alice")
    assert at.number_input(key="max_train").value == 0 and not texts(at, "error")
    assert "88 steps (22 per epoch) on 1,400 images, 4 tests" in texts(at, "caption")  # no timing in a room
    at.button(key="run").click().run()
    job = watched(ui, at)
    assert job is not None and job.owner == "alice" and job.meta["config"]["max_train"] is None
    job.stop(wait_s=60)


def test_server_settings_a_host_got_wrong_are_said_on_the_page_and_the_safe_side_is_used(ui, monkeypatch):
    """A typo in the server's environment is named on the page (not passed over in silence), and
    what runs is the default or the safe side: FACTO_ROOM=y still makes a room."""
    for name, value in {"FACTO_MAX_RUNS": "0", "FACTO_ROOM": "y", "FACTO_ROOM_MAX_EPOCHS": "three",
                        "FACTO_ROOM_DOWNLOAD": "sure", "FACTO_JOBS": "fork"}.items():
        monkeypatch.setenv(name, value)
    st.cache_resource.clear()
    at = app()
    errors = texts(at, "error")
    for expected in ("FACTO_MAX_RUNS='0' is not allowed: use an integer >= 1. Using 1.",
                     "FACTO_ROOM='y' is not allowed: use 1 (on) or 0 (off). Taken as on.",
                     "FACTO_ROOM_MAX_EPOCHS='three' is not allowed",
                     "FACTO_ROOM_DOWNLOAD='sure' is not allowed: use 1 (on) or 0 (off). Taken as off.",
                     "FACTO_JOBS='fork' is not allowed: use process or thread"):
        assert any(expected in e for e in errors), (expected, errors)
    room = ui.room()
    assert room.enabled and room.max_epochs == 10 and not room.download
    assert ui.registry().max_running == 1 and ui.jobs_mode() == "process"
    assert "Room mode: at most 10 epochs" in room_text(at)


def test_good_server_settings_show_no_error(ui, monkeypatch):
    monkeypatch.setenv("FACTO_MAX_RUNS", "2")
    monkeypatch.setenv("FACTO_ROOM", "off")
    st.cache_resource.clear()
    at = app()
    assert texts(at, "error") == [] and not ui.room().enabled and ui.registry().max_running == 2


def test_room_mode_one_run_per_visitor_and_only_its_owner_stops_it(ui, monkeypatch):
    monkeypatch.setenv("FACTO_ROOM", "1")
    st.cache_resource.clear()
    owner = app(visitor="alice")
    owner.number_input(key="epochs").set_value(1)
    owner.number_input(key="max_train").set_value(640)
    owner.number_input(key="max_test").set_value(64)
    owner.button(key="run").click().run()
    job = watched(ui, owner)
    assert job.owner == "alice"
    assert owner.button(key="run").disabled  # locked while her run goes: one run per visitor
    assert len(ui.registry().jobs()) == 1
    other = app(visitor="bob")
    assert any("started by visitor alice" in m.value for m in other.markdown)
    other.button(key=f"watch_{job.id}").click().run()
    assert other.session_state["watch"] == job.id and other.button(key="stop").disabled  # not his run
    job.stop(wait_s=60)


def test_outside_room_mode_any_visitor_may_stop_a_run(ui):
    owner = app(visitor="alice")
    tiny(owner, train=1280)  # 20 steps: still going when bob presses Stop
    owner.button(key="run").click().run()
    job = watched(ui, owner)
    other = app(visitor="bob")
    other.button(key=f"watch_{job.id}").click().run()
    assert other.session_state["watch"] == job.id and not other.button(key="stop").disabled
    other.button(key="stop").click().run()
    assert job.status == "interrupted"


def test_a_long_run_asks_first_and_says_how_long(ui):
    """Outside room mode nothing bounds the epochs: a run estimated over 30 minutes starts only when confirmed."""
    at = app()
    at.number_input(key="epochs").set_value(100_000).run()
    line = next(c for c in texts(at, "caption") if " steps (22 per epoch)" in c)
    assert line.startswith("2,200,000 steps (22 per epoch) on 1,400 images, 100,000 tests · about ")
    at.button(key="run").click().run()
    assert not ui.registry().jobs()
    (warning,) = [w for w in texts(at, "warning") if w.startswith("This run takes about ")]
    assert warning.endswith(" h on this machine.")
    at.button(key="cancel_run").click().run()
    assert not [w for w in texts(at, "warning") if w.startswith("This run takes")] and not ui.registry().jobs()
    at.button(key="run").click().run()
    at.button(key="confirm_run").click().run()
    job = watched(ui, at)
    assert job is not None and job.meta["config"]["epochs"] == 100_000
    job.stop(wait_s=60)


def test_a_second_run_waits_in_the_queue_with_its_position(ui):
    first = app(visitor="alice")
    first.number_input(key="max_train").set_value(1280)  # 80 steps: still going when bob presses Run
    first.button(key="run").click().run()
    second = app(visitor="bob")
    tiny(second)
    second.button(key="run").click().run()
    waiting = watched(ui, second)
    assert not watched(ui, first).finished and waiting.status == "queued" and ui.registry().queue_position(waiting) == 1
    assert any("position 1 in the queue" in i.value for i in second.info)
    assert any("waiting, position 1" in m.value for m in second.markdown)
    assert any(re.search(r"started by visitor \w+ · (step \d+ of \d+|starting)", m.value) for m in second.markdown)
    watched(ui, first).stop(wait_s=60)
    assert waiting.wait(RUN_LIMIT) and waiting.status == "completed"  # it ran once the slot was free


# Two cookies Streamlit set for one browser (the masked key changes per response) and one of another browser.
ONE_BROWSER = ("2|6a52d7f7|0c3f421ed7696356fdc6604fbe535eea|1796649460",
               "2|68f94d4e|0e94d8a7d5c2f9efff6dfaf6bcf8c453|1796649460")
OTHER_BROWSER = "2|334cbc6d|927ca5349f2363325cc6de6d4b85aed6|1796649469"


def test_a_visitor_is_the_browser_key_of_streamlits_cookie_hashed_with_the_servers_secret(ui):
    first, second = (ui.browser_key(c) for c in ONE_BROWSER)
    assert first == second == bytes.fromhex("666d95e9bd3bb4a19794b7b8d401891d")  # unmasked by hand
    other = ui.browser_key(OTHER_BROWSER)
    assert other != first
    secret, another_server = b"s" * 32, b"t" * 32
    assert ui.visitor_id(first, secret) == ui.visitor_id(second, secret) != ui.visitor_id(other, secret)
    assert ui.visitor_id(first, secret) != ui.visitor_id(first, another_server)  # ids can't be made elsewhere
    for broken in (None, "", "2|zz|00|1", "2|6a52d7f7|0c3f|1", "3|a|b|c", "2|6a52d7f7"):
        assert ui.browser_key(broken) is None


def test_the_cards_compare_both_variants_at_the_same_test_point(ui):
    """The baseline tested after epoch 2, Facto not yet: the cards show both after epoch 1."""
    from facto.engine.events import RunTracker

    start = StartEvent(config=RunConfig().to_dict(), device="cpu", device_name="cpu", steps_per_epoch=22,
                       total_steps=88, train_size=1400, test_size=397, params={"baseline": 1, "facto": 1},
                       trainable_params={"baseline": 1, "facto": 1}, layer_bytes={}, report=[], evals_planned=4)
    events = [start]
    for step in range(1, 45):
        events += [StepEvent(v, step, 1 + (step > 22), 1.0, 50.0, 100 if v == "baseline" else 10, 400, None,
                             0.01, 0.01) for v in ("baseline", "facto")]
        if step in (22, 44):
            events.append(EvalEvent("baseline", step, step // 22, 0.5, 90.0 + step / 22))
            if step == 22:
                events.append(EvalEvent("facto", step, 1, 0.5, 89.0))
    job = fake_job(ui, events, RunTracker(), {"config": RunConfig().to_dict()})
    at = app_test("app.py", TIMEOUT)
    at.query_params["job"] = str(job.id)
    at.run()
    assert number(metric(at, "Baseline accuracy")) == pytest.approx(91.0)  # epoch 1's, not epoch 2's 92.0
    assert number(metric(at, "Facto accuracy")) == pytest.approx(89.0)
    assert metric(at, "Change after epoch 1") == "-2.00 points"


def test_counts_in_plain_words():
    """'1 run', '3 runs': no 'run(s)' on any page."""
    import ui

    assert [ui.count(n, "run") for n in (0, 1, 3, 1200)] == ["0 runs", "1 run", "3 runs", "1,200 runs"]
    pages = [ROOT / "app.py", ROOT / "ui.py", ROOT / "room.py", *sorted((ROOT / "pages").glob("*.py"))]
    assert not [p.name for p in pages if "(s)" in p.read_text()]


def test_a_run_stopped_before_its_first_step_is_still_its_visitors(ui):
    """The run is stored from its first phase (loading, warm-up) on: the visitor who started it owns it
    from then, so a Stop in its warm-up leaves a run its visitor can see and delete."""
    import threading

    from facto.engine.events import PhaseEvent

    reached = threading.Event()

    def events():
        yield PhaseEvent(phase="warm-up", config={}, variants=["facto"], run_id=41)
        reached.set()
        while True:  # a long warm-up that sends nothing more
            yield None

    job = ui.submit(events, label="made up")
    assert reached.wait(30)
    job.stop(wait_s=30)
    assert 41 in ui.runs_started_by()
