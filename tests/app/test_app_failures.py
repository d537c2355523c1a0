"""The app when things break: out of memory, no usable history. It says so and stays usable.

AppTest runs the pages in this process; the job registry is server-wide (st.cache_resource),
so every test starts from empty caches and stops what it started.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

from .apptest import app_test

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 120
RUN_LIMIT = 240


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FACTO_JOBS", "thread")  # the pages' logic; the browser tests run runs in children
    monkeypatch.syspath_prepend(str(ROOT))
    st.cache_resource.clear()
    yield tmp_path / "home"
    import ui

    for job in ui.registry().jobs(active_only=True):
        job.stop(wait_s=30)
    st.cache_resource.clear()


def start_tiny_run(at: AppTest) -> None:
    at.number_input(key="epochs").set_value(1)
    at.number_input(key="max_train").set_value(128)
    at.number_input(key="max_test").set_value(64)
    at.button(key="run").click().run()
    assert not at.exception, [e.value for e in at.exception]


def wait_until_done(at: AppTest) -> None:
    import ui

    deadline = time.monotonic() + RUN_LIMIT
    while not ui.registry().get(at.session_state["watch"]).finished:
        assert time.monotonic() < deadline
        time.sleep(0.3)
        at.run()
    at.run()
    assert not at.exception, [e.value for e in at.exception]


def test_out_of_memory_in_facto_is_explained_and_the_app_stays_usable(home, monkeypatch):
    from ..engine.test_train import _sabotage

    def oom(out):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    _sabotage(monkeypatch, oom)
    monkeypatch.setenv("FACTO_JOBS", "thread")  # the sabotage patches this process: train here, not in a child
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    start_tiny_run(at)
    wait_until_done(at)
    errors = [e.value for e in at.error]
    assert any("Facto stopped: out of memory" in e and "smaller batch" in e for e in errors), errors
    assert not at.button(key="run").disabled  # ready for the next run
    from facto.store.history import RunStore

    (run,) = RunStore(home / "runs.db").list_runs()
    assert "facto failed: out of memory" in run.error


@pytest.mark.parametrize("breakage", ["home is a file", "corrupt history"])
def test_unusable_history_is_said_and_runs_still_train(home, breakage):
    if breakage == "home is a file":
        home.parent.mkdir(parents=True, exist_ok=True)
        home.write_text("not a folder")
        before = home.read_bytes()
    else:
        home.mkdir(parents=True)
        (home / "runs.db").write_bytes(b"garbage" * 200)
        before = (home / "runs.db").read_bytes()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Run history is off" in e.value and str(home) in e.value for e in at.error)
    start_tiny_run(at)
    wait_until_done(at)
    assert any("Not stored (history off)" in s.value for s in [*at.success, *at.warning])
    after = home.read_bytes() if breakage == "home is a file" else (home / "runs.db").read_bytes()
    assert after == before  # the user's file is left alone


@pytest.mark.slow
@pytest.mark.parametrize("page", ["pages/5_how-it-works.py", "pages/6_fit-my-gpu.py"])
def test_teaching_and_planning_pages_take_every_control(home, page):
    at = app_test(page, 300)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.get("plotly_chart")
    changes = {
        "pages/5_how-it-works.py": [
            ("selectbox", "how_model", "simple_cnn"), ("select_slider", "how_rank", "0.25"),
            ("selectbox", "how_update", "last"), ("selectbox", "how_bits", 2), ("checkbox", "how_recompute", False),
            ("select_slider", "how_batch_size", 8), ("radio", "how_data", "random noise")],
        "pages/6_fit-my-gpu.py": [
            ("text_input", "fit_model", "simple_cnn"), ("text_input", "fit_input", "1x32x32"),
            ("number_input", "fit_classes", 10), ("text_input", "fit_budget", "2GB"),
            ("selectbox", "fit_optimizer", "adam"), ("selectbox", "fit_precision", "bf16"),
            ("multiselect", "fit_variants", ["dense", "balanced"])],
    }[page]
    for kind, key, value in changes:
        widget = getattr(at, kind)(key=key)
        (widget.input(value) if kind == "text_input" else widget.set_value(value)).run()
        assert not at.exception, (key, [e.value for e in at.exception])
        assert at.get("plotly_chart"), key


def test_planner_page_numbers_follow_the_budget(home):
    at = app_test("pages/6_fit-my-gpu.py", 300)
    at.run()
    at.text_input(key="fit_model").input("simple_cnn").run()
    at.text_input(key="fit_input").input("1x32x32").run()
    at.multiselect(key="fit_variants").set_value(["dense", "balanced"]).run()
    batches = {}
    for budget in ("1GB", "2GB"):
        at.text_input(key="fit_budget").input(budget).run()
        batches[budget] = [int(m.value.replace(",", "")) for m in at.metric]
    assert batches["1GB"][0] < batches["2GB"][0] and batches["1GB"][0] < batches["1GB"][1]  # dense < Facto
    assert not any(i.value.startswith("not even batch 1") for i in at.info)
    at.text_input(key="fit_budget").input("100MB").run()  # below the reserve: nothing fits, and it says so
    assert [int(m.value.replace(",", "")) for m in at.metric] == [0, 0]
    assert any(i.value.startswith("not even batch 1 fits in 100.0 MB") for i in at.info), [i.value for i in at.info]
    at.text_input(key="fit_budget").input("lots").run()  # under its input, in plain words; the plan waits
    assert [e.value for e in at.error] == ["Memory budget 'lots' is not allowed: use a number and a unit: B, "
                                           "KB/MB/GB/TB (powers of 1000), KiB/MiB/GiB/TiB or k/m/g/t (powers of "
                                           "1024), e.g. 8GB, '8 GiB', 500MB, 4g"] and not at.metric
    assert at.title[0].value == "Fit my GPU"  # the page stays
    at.text_input(key="fit_budget").input("8").run()  # a bare number is not read as 8 bytes
    assert [e.value for e in at.error] == ["Memory budget '8' has no unit: write it like 8GB, 512MiB or 1.5GiB"]
    at.text_input(key="fit_budget").input("0GB").run()
    assert "must be above zero" in at.error[0].value
    at.text_input(key="fit_budget").input("1GB").run()
    assert not at.error and [int(m.value.replace(",", "")) for m in at.metric] == batches["1GB"]  # gone once fixed


def test_planner_page_shows_a_card_for_every_variant(home):
    """Seven variants: seven cards (in lines of five), not only the first five."""
    at = app_test("pages/6_fit-my-gpu.py", 300)
    at.run()
    at.text_input(key="fit_model").input("simple_cnn").run()
    at.text_input(key="fit_input").input("1x32x32").run()
    every = at.multiselect(key="fit_variants").options
    at.multiselect(key="fit_variants").set_value(every).run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(every) > 5 and [m.label for m in at.metric] == every


@pytest.fixture()
def no_planning(monkeypatch):
    """Measuring a variant fails the test: a limit must stop the page before the planner works."""
    from facto.memory import plan

    monkeypatch.setattr(plan, "profile_variant", lambda *a, **k: pytest.fail("planned although above the limit"))


@pytest.mark.parametrize(("room", "shape", "message"), [
    ("", "3x2048x2048", "Input shape 3x2048x2048 has 12,582,912 values per image (C x H x W), "
                        "above the limit of 150,528 here (e.g. 3x224x224). `facto plan` on your own machine has "
                        "no such limit."),
    ("1", "3x224x224", "Input shape 3x224x224 has 150,528 values per image (C x H x W), "
                       "above the limit of 49,152 here (e.g. 3x128x128)."),
])
def test_planner_page_refuses_an_input_above_the_servers_limit(home, monkeypatch, no_planning, room, shape, message):
    monkeypatch.setenv("FACTO_ROOM", room)
    at = app_test("pages/6_fit-my-gpu.py", 300)
    at.session_state["fit_input"] = shape
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [e.value for e in at.error] and at.error[0].value.startswith(message), [e.value for e in at.error]
    assert not at.metric


def test_planner_page_refuses_a_model_above_the_parameter_limit(home, no_planning):
    at = app_test("pages/6_fit-my-gpu.py", 300)
    at.session_state["fit_model"] = "tv:resnet101"
    at.session_state["fit_input"] = "3x224x224"
    at.session_state["fit_classes"] = 1000  # torchvision's ImageNet head: 44,549,160 parameters, as its docs say
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [e.value for e in at.error] == [
        "Model 'tv:resnet101' has 44,549,160 parameters, above the limit of 30,000,000 here. "
        "`facto plan` on your own machine has no such limit."]


@pytest.mark.parametrize("page", ["pages/2_layers.py", "pages/5_how-it-works.py"])
def test_layer_pages_offer_no_batch_above_the_rooms_limit(home, monkeypatch, page):
    """The batch slider stops at the room's limit, and a larger value in the session (a crafted
    state, or one set before the room's limit was) is taken as the limit: nothing above it is measured."""
    from facto.memory import analysis, explain

    monkeypatch.setenv("FACTO_ROOM", "1")
    monkeypatch.setenv("FACTO_ROOM_MAX_BATCH", "16")
    measured = []
    for module, builder in ((analysis, "dense_model"), (explain, "starting_model")):
        real = getattr(module, builder)
        monkeypatch.setattr(module, builder, lambda *a, _real=real, **k: measured.append(1) or _real(*a, **k))
    prefix = "layers_" if "layers" in page else "how_"
    at = app_test(page, 300)
    at.session_state[prefix + "batch_size"] = 32
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    slider = at.select_slider(key=prefix + "batch_size")
    assert max(map(float, slider.options)) == 16 and slider.value == 16 and measured
    assert "This room allows at most 16." in slider.help


@pytest.mark.parametrize("value", ["²", "３", "1e3"])
def test_a_server_setting_not_in_ascii_digits_is_named_and_every_page_still_runs(home, monkeypatch, value):
    """'²'.isdigit() holds but int('²') raises: the setting used to bring every page down with a traceback."""
    monkeypatch.setenv("FACTO_ROOM", "1")
    monkeypatch.setenv("FACTO_ROOM_MAX_EPOCHS", value)
    at = app_test("app.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    expected = f"Server setting ignored: FACTO_ROOM_MAX_EPOCHS={value!r} is not allowed: use an integer >= 1. Using 10."
    assert expected in [e.value for e in at.error], [e.value for e in at.error]
    assert any("Room mode: at most 10 epochs" in t.value for t in [*at.info, *at.caption])
    st.cache_resource.clear()
    page = app_test("pages/6_fit-my-gpu.py", 300)
    page.run()
    assert not page.exception, [e.value for e in page.exception]
