"""facto.plots: every builder returns a go.Figure with the expected traces for small inputs."""
from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from facto import plots
from facto.engine.sweep import SweepPoint
from facto.engine.train import EvalEvent, StepEvent

VARIANTS = ("baseline", "facto")


def _steps(n: int = 6) -> list[StepEvent]:
    return [StepEvent(v, s, 1, 2.0 - 0.1 * s, 10.0 + 5 * s, 60_000_000 if v == "baseline" else 9_000_000,
                      60_000_000 if v == "baseline" else 30_000_000, None, 0.1, 1e-3)
            for s in range(1, n + 1) for v in VARIANTS]


def _evals() -> list[EvalEvent]:
    return [EvalEvent(v, s, 1, 1.0, 80.0 + s - (2 if v == "facto" else 0)) for s in (3, 6) for v in VARIANTS]


def _names(fig: go.Figure) -> list[str]:
    """The traces' names as read: a long one is wrapped onto lines (<br>) to fit a narrow chart."""
    return [t.name.replace("<br>", " ") for t in fig.data]


def _check(fig: go.Figure) -> dict:
    assert isinstance(fig, go.Figure)
    spec = json.loads(fig.to_json())  # serialisable, as st.plotly_chart and write_html need
    assert spec["layout"]["title"]["text"]
    return spec


def test_every_variant_trace_keeps_baseline_blue_and_facto_orange():
    """The colour rule holds in every figure that draws variants: any trace named Baseline... is
    blue, any trace named Facto... is orange."""
    figures = [plots.accuracy_curves(_steps(), _evals()), plots.memory_curves(_steps()),
               plots.layer_bytes_bars({"baseline": {"a": 1_000_000}, "facto": {"a": 100_000}})]
    checked = 0
    for fig in figures:
        for trace in fig.data:
            color = (getattr(trace, "line", None) and trace.line.color) or trace.marker.color
            if trace.name.startswith("Baseline"):
                assert color == plots.BASELINE_COLOR, trace.name
                checked += 1
            elif trace.name.startswith("Facto"):
                assert color == plots.FACTO_COLOR, trace.name
                checked += 1
    assert checked >= 8 and plots.BASELINE_COLOR != plots.FACTO_COLOR


def test_accuracy_curves_has_train_and_test_traces_per_variant():
    fig = plots.accuracy_curves(_steps(), _evals())
    _check(fig)
    assert _names(fig) == [f"{n} · {k}" for n in ("Baseline", "Facto")
                           for k in ("train", "train loss", "test", "test loss")]
    test = fig.data[2]
    assert list(test.x) == [3, 6] and list(test.y) == [83.0, 86.0]
    assert test.line.color == plots.BASELINE_COLOR and fig.data[6].line.color == plots.FACTO_COLOR


def test_accuracy_curves_accepts_stored_rows_and_empty_input():
    rows = [dict(variant="facto", kind="eval", step=5, accuracy=91.0, loss=0.3)]
    fig = plots.accuracy_curves([], rows)
    assert list(fig.data[0].y) == [91.0]
    empty = plots.accuracy_curves([], [])
    assert len(empty.data) == 0 and "Waiting" in empty.layout.annotations[0].text


def test_memory_curves_in_mb_with_raw_and_peak():
    steps = _steps(3)
    fig = plots.memory_curves(steps)
    _check(fig)
    assert _names(fig) == ["Baseline · stored", "Facto · stored", "Facto · before compression"]
    assert fig.data[0].y[0] == pytest.approx(60.0) and fig.data[1].y[0] == pytest.approx(9.0)
    assert fig.layout.yaxis.title.text == "MB"
    for s in steps:
        s.peak_cuda = 123_000_000
    assert "Facto · CUDA peak" in _names(plots.memory_curves(steps))
    assert fig.data[0].mode == "lines+markers"  # a short run: a dot per step
    assert plots.memory_curves(_steps(plots.MARKED_POINTS + 1)).data[0].mode == "lines"  # a long one: a line


def test_cuda_memory_curves_draw_what_the_allocator_reserved_where_it_was_measured():
    """On CUDA each variant's step peak, the allocator's reserved peak and what it holds after the
    step stand beside the stored bytes; a run measured without the reserved bytes draws no such line;
    a run tracker's summary keeps each variant's largest reserved peak."""
    from facto.engine.events import RunTracker

    steps = _steps(3)
    for s in steps:
        s.peak_cuda, s.cuda_allocated = 80_000_000 + s.step, 20_000_000
    assert not any("reserved" in n for n in _names(plots.cuda_memory_curves(steps)))
    for s in steps:
        s.cuda_reserved = 100_000_000 + 1_000_000 * s.step
    fig = plots.cuda_memory_curves(steps)
    _check(fig)
    assert [n for n in _names(fig) if n.startswith("Facto")] == [
        "Facto · step peak", "Facto · reserved by the allocator", "Facto · held after step", "Facto · stored for backward"]
    reserved = next(t for t in fig.data if t.name.replace("<br>", " ") == "Baseline · reserved by the allocator")
    assert list(reserved.y) == pytest.approx([101.0, 102.0, 103.0])
    tracker = RunTracker()
    for s in steps:
        tracker.add(s)
    assert tracker.summary().peak_reserved == {"baseline": 103_000_000, "facto": 103_000_000}
    assert RunTracker().summary().peak_reserved == {}


def test_layer_bytes_bars_groups_the_union_of_layers_in_model_order():
    lb = {"baseline": {"f.0": 2_000_000, "f.1": 4_000_000, "f.10": 1_000_000, "head": 10_000},
          "facto": {"f.0": 500_000, "f.1": 250_000, "f.3": 100_000, "f.10": 50_000, "head": 1_000}}
    fig = plots.layer_bytes_bars(lb, {"f.1": "ReLU"})
    _check(fig)
    assert _names(fig) == ["Baseline", "Facto"]
    assert list(fig.data[0].x) == ["f.0", "f.1 · ReLU", "f.3", "f.10", "head"]
    assert list(fig.data[0].y) == pytest.approx([2.0, 4.0, 0.0, 1.0, 0.01])
    assert fig.data[1].marker.color == plots.FACTO_COLOR
    many = {v: {f"layer{i}": 1000 for i in range(30)} for v in VARIANTS}
    assert plots.layer_bytes_bars(many).data[0].orientation == "h"  # long models: horizontal bars


def test_params_bars():
    report = [dict(name="c1", kind="dense", ranks=None, update=None, rel_error=None, params_before=288,
                   params_after=288, trainable_params=288, reason="first conv"),
              dict(name="c2", kind="factorized", ranks=(8, 8), update="core", rel_error=0.4, params_before=9216,
                   params_after=2000, trainable_params=576, reason=None)]
    fig = plots.params_bars(report)
    _check(fig)
    assert _names(fig) == ["Dense", "Facto (all factors)", "Facto (trained)"]
    assert list(fig.data[1].y) == [288, 2000]


def test_tradeoff_scatter_with_session_history_and_live_point():
    live = plots.live_point(_steps(), [], {"model": "simple_cnn", "dataset": "digits", "rank": 0.5})
    assert live["saving_pct"] == pytest.approx(85.0)
    assert "train accuracy" in live["label"]
    points = [dict(saving_pct=80.0, accuracy_delta=-1.0, label="a", source="session"),
              dict(saving_pct=60.0, accuracy_delta=-4.0, label="b", source="history")]
    fig = plots.tradeoff_scatter(points, live)
    _check(fig)
    assert _names(fig) == ["Earlier runs (history)", "Runs of this session", "Current run (live, train accuracy)"]
    assert fig.data[2].marker.symbol == "star" and "train accuracy change" in fig.data[2].hovertemplate
    assert "test accuracy change" in fig.data[1].hovertemplate
    tested = plots.live_point(_steps(), _evals())
    assert tested["accuracy_delta"] == pytest.approx(-2.0) and tested["basis"] == "test"  # test accuracy wins
    assert _names(plots.tradeoff_scatter([], tested))[0] == "Current run (live, test accuracy)"
    assert plots.live_point([], []) is None


@pytest.mark.parametrize("deltas", [[13.85], [-1.0, 13.85], [-22.0, 4.0], [0.2], [-0.3], [40.0, -60.0]])
def test_tradeoff_scatter_y_range_holds_every_point(deltas):
    points = [dict(saving_pct=90.0, accuracy_delta=d, label="", source="session") for d in deltas]
    low, high = plots.tradeoff_scatter(points).layout.yaxis.range
    assert all(low < d < high for d in deltas) and low <= -5 and high >= 3
    assert high - max(deltas) > 0.5 and min(deltas) - low > 0.5  # a marker is not cut at the edge


def test_tradeoff_points_from_stored_runs():
    runs = [dict(id=1, status="completed", config={"model": "m", "dataset": "d", "rank": 0.5},
                 summary={"saving_pct": 85.0, "accuracy_delta": -1.5, "accuracy": {"baseline": 99.0, "facto": 97.5}}),
            dict(id=2, status="interrupted", config={}, summary={"saving_pct": 80.0, "accuracy_delta": None})]
    points = plots.tradeoff_points(runs)
    assert [p["id"] for p in points] == [1]
    assert "run #1" in points[0]["label"] and points[0]["source"] == "history"


def _sweep_points() -> list[SweepPoint]:
    def point(i, variant, rank, bits, update, acc, saving):
        return SweepPoint(i, 5, variant, rank, bits, update, "completed", acc, 1000, 99.0, 10_000, saving,
                          acc - 99.0, 0.1, {})
    return [point(0, "baseline", 0.5, None, "-", 99.0, 0.0), point(1, "facto", 0.5, 4, "core", 98.0, 85.0),
            point(2, "facto", 0.5, 2, "core", 98.5, 90.0), point(3, "facto", 0.25, 4, "core", 96.0, 80.0),
            point(4, "facto", 0.25, 2, "last", 97.0, 92.0)]


def test_pareto_front_marks_the_non_dominated_points():
    fig = plots.pareto_front(_sweep_points())
    _check(fig)
    front_name = "Pareto front (best accuracy at each saving)"
    assert _names(fig) == ["Facto, update=core", "Facto, update=last", front_name, "Baseline 99.0 %"]
    front = fig.data[2]
    # 85 % / 98 % and 80 % / 96 % are dominated: steps from the left edge through 90/98.5 and 92/97
    x0, x1 = fig.layout.xaxis.range
    y0, _ = fig.layout.yaxis.range
    assert list(front.x) == [x0, 90.0, 90.0, 92.0, 92.0] and list(front.y) == [98.5, 98.5, 97.0, 97.0, y0]
    assert list(fig.data[0].text) == ["", "r0.5·2b", ""]  # front points are labelled
    assert fig.layout.shapes[0].y0 == 99.0  # the baseline accuracy line
    assert _names(plots.sweep_figure(_sweep_points()))[2] == front_name
    assert len(plots.pareto_front([]).data) == 0


@pytest.mark.parametrize("n", [1, 2])
def test_pareto_front_is_a_visible_line_with_one_or_two_points(n):
    fig = plots.pareto_front(_sweep_points()[: n + 1])
    front = next(t for t in fig.data if t.name.startswith("Pareto front"))
    assert front.mode == "lines" and len(front.x) >= 3
    assert len({(x, y) for x, y in zip(front.x, front.y)}) >= 3  # not a single dot


def test_accuracy_heatmap_one_panel_per_update():
    fig = plots.accuracy_heatmap(_sweep_points())
    _check(fig)
    assert [t.type for t in fig.data] == ["heatmap", "heatmap"]
    core = fig.data[0]
    assert list(core.y) == ["rank 0.25", "rank 0.5"] and list(core.x) == ["2-bit", "4-bit"]
    assert core.z[1][1] == 98.0 and core.z[0][0] is None


def test_feature_map_images_tiles_channels():
    a = np.random.default_rng(0).normal(size=(9, 4, 5)).astype(np.float32)
    fig = plots.feature_map_images(a, a + 0.1, max_channels=4)
    _check(fig)
    assert _names(fig) == ["original", "compressed", "error"]
    z = np.array(fig.data[2].z, dtype=float)
    assert z.shape == (2 * 4 + 1, 2 * 5 + 1)  # 4 channels of 4 x 5 in a 2 x 2 mosaic, 1-pixel gaps
    assert np.nanmax(np.abs(z - 0.1)) < 1e-5
    with pytest.raises(ValueError):
        plots.feature_map_images(a, a[:2])


def test_error_histogram_and_bits_curves():
    fig = plots.error_histogram(torch.randn(1000))
    _check(fig)
    assert fig.data[0].type == "histogram" and len(fig.data[0].x) == 1000
    rows = [dict(bits=b, rel_error=1.0 / b, bytes=100 * b, raw_bytes=3200) for b in range(1, 9)]
    fig = plots.bits_curves(rows, selected=4)
    _check(fig)
    assert _names(fig) == ["relative error", "stored size", "fp32 size"]


def test_history_chart_keeps_baseline_blue_and_facto_orange_per_run():
    rows = [dict(variant=v, kind="eval", step=s, accuracy=90.0 + s) for s in (1, 2) for v in VARIANTS]
    fig = plots.history_chart([dict(label="#1", rows=rows), dict(label="#2", rows=rows)])
    _check(fig)
    assert _names(fig) == ["#1 · Baseline", "#1 · Facto", "#2 · Baseline", "#2 · Facto"]
    b1, f1, b2, f2 = fig.data
    assert b1.line.color == plots.BASELINE_COLOR and f1.line.color == plots.FACTO_COLOR
    assert b2.line.color in plots.RUN_SHADES["baseline"] and f2.line.color in plots.RUN_SHADES["facto"]
    assert b1.line.color != b2.line.color and f1.line.color != f2.line.color  # a shade per run
    assert b1.line.dash == f1.line.dash != b2.line.dash == f2.line.dash  # a dash per run
    assert b1.marker.symbol == f1.marker.symbol != b2.marker.symbol
    assert not set(plots.RUN_SHADES["baseline"]) & set(plots.RUN_SHADES["facto"])
    assert plots.history_chart([dict(label="#1", rows=rows)], "act_bytes").data == ()
    with pytest.raises(ValueError):
        plots.history_chart([], "speed")


def test_plots_does_not_import_streamlit():
    import ast
    from pathlib import Path

    files = sorted(Path(plots.__file__).parent.glob("*.py"))  # the package and every figure module
    assert len(files) > 1
    for path in files:
        tree = ast.parse(path.read_text())
        imported = {n.name for node in ast.walk(tree) if isinstance(node, ast.Import) for n in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not any(name and name.startswith("streamlit") for name in imported), path.name


def test_methods_figure_one_point_per_non_dense_method():
    from facto.plots import methods_figure

    rows = [dict(model="m", method="dense fp32", saving_pct=0.0, accuracy_mean=99.0),
            dict(model="m", method="compression only 2-bit", saving_pct=90.0, accuracy_mean=98.5),
            dict(model="m", method="Facto + recompute", saving_pct=96.0, accuracy_mean=98.9)]
    fig = methods_figure(rows)
    assert [t.x[0] for t in fig.data] == [90.0, 96.0]
    assert [round(t.y[0], 2) for t in fig.data] == [-0.5, -0.1]


def test_wrap_breaks_at_spaces_and_keeps_given_lines():
    from facto.plots.style import wrap

    assert wrap("Error distribution at 4 bits (whole batch)", 20) == "Error distribution<br>at 4 bits (whole<br>batch)"
    assert wrap("short", 20) == "short"
    assert wrap("a_long_layer_name.0.conv x", 10) == "a_long_layer_name.0.conv<br>x"  # a long word: a line of its own
    assert wrap("one<br>two three", 5) == "one<br>two<br>three"


def test_titles_and_legend_names_fit_the_narrowest_chart():
    """At 1024x768 with the sidebar open a half-width chart is about 270 px wide (style.HALF): its
    title and legend entries are wrapped to fit there; a chart across the page keeps a longer line."""
    from facto.plots.style import HALF, LEGEND_SIZE, TITLE_SIZE, WIDE, chars

    half = plots.error_histogram(torch.randn(100), title="Error distribution at 4 bits (whole batch)")
    assert half.layout.title.text.count("<br>") == 1
    memory = plots.memory_curves(_steps(3))
    for fig, width in ((half, HALF), (memory, HALF), (plots.cuda_memory_curves([]), WIDE)):
        assert all(len(line) <= chars(width, TITLE_SIZE) for line in fig.layout.title.text.split("<br>"))
        for trace in fig.data:
            assert all(len(line) <= chars(width, LEGEND_SIZE) for line in trace.name.split("<br>"))
    assert plots.cuda_memory_curves([]).layout.title.text.count("<br>") == 0
