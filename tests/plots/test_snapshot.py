"""facto.plots.figure_svg: the live view's pictures show what the interactive figures show.

The checks read the SVG back as XML and test geometry that holds whatever the drawing code does:
a straight line in the data stays straight, bars are as long as their values, every point lies
inside the plotting area, and each trace keeps its name and colour."""
from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import plotly.graph_objects as go
import pytest

from facto import plots
from facto.engine.train import EvalEvent, StepEvent

SVG = "{http://www.w3.org/2000/svg}"


def _steps(n: int = 6) -> list[StepEvent]:
    return [StepEvent(v, s, 1, 2.0 - 0.1 * s, 10.0 + 5 * s + (8 if v == "baseline" else 0),
                      60_000_000 if v == "baseline" else 9_000_000, 60_000_000 if v == "baseline" else 30_000_000,
                      None, 0.1, 1e-3)
            for s in range(1, n + 1) for v in ("baseline", "facto")]


def _evals() -> list[EvalEvent]:
    return [EvalEvent(v, s, 1, 1.0, 80.0 + s - (2 if v == "facto" else 0))
            for s in (3, 6) for v in ("baseline", "facto")]


def _svg(fig: go.Figure, width: int = 600) -> ET.Element:
    root = ET.fromstring(plots.figure_svg(fig, width))  # well-formed XML, or this raises
    assert root.tag == SVG + "svg" and root.get("viewBox") == f"0 0 {width} {fig.layout.height or 450}"
    return root


def _texts(root: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in root.iter(SVG + "text")]


def _plot_area(root: ET.Element) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the plotting area: the clip rectangle less its 8-pixel slack."""
    rect = next(root.iter(SVG + "clipPath")).find(SVG + "rect")
    x, y, w, h = (float(rect.get(k)) for k in ("x", "y", "width", "height"))
    return x + 8, y + 8, x + w - 8, y + h - 8


def _traces(root: ET.Element) -> ET.Element:
    """The group that holds the data (not the legend's samples)."""
    return next(g for g in root.iter(SVG + "g") if g.get("class") == "traces")


def _lines(root: ET.Element, color: str) -> list[list[tuple[float, float]]]:
    return [[tuple(map(float, p.split(","))) for p in line.get("points").split()]
            for line in _traces(root).iter(SVG + "polyline") if line.get("stroke") == color]


def test_straight_data_stays_straight_and_inside_the_plot():
    fig = plots.accuracy_curves(_steps(), _evals())
    root = _svg(fig)
    left, top, right, bottom = _plot_area(root)
    accuracy = [line for line in _lines(root, plots.BASELINE_COLOR) if len(line) == 6][0]  # train accuracy, 6 steps
    (x0, y0), (x1, y1) = accuracy[0], accuracy[-1]
    for x, y in accuracy:  # accuracy rises by 5 points a step: collinear points
        assert left <= x <= right and top <= y <= bottom
        assert y == pytest.approx(y0 + (y1 - y0) * (x - x0) / (x1 - x0), abs=0.15)
    assert x0 < x1 and y1 < y0  # later steps to the right, higher accuracy further up
    facto = [line for line in _lines(root, plots.FACTO_COLOR) if len(line) == 6][0]
    assert all(fy > by for (_, by), (_, fy) in zip(accuracy, facto))  # Facto's lower curve is drawn lower


def test_names_titles_and_train_or_test_labels_are_kept():
    texts = _texts(_svg(plots.accuracy_curves(_steps(), _evals())))
    assert "Accuracy and loss vs step" in texts
    assert {"Baseline · train", "Baseline · test", "Facto · train", "Facto · test"} <= set(texts)
    assert "training step" in texts and "accuracy (%)" in texts


def test_tick_labels_are_round_numbers_within_the_data():
    root = _svg(plots.memory_curves(_steps()))
    labels = [t for t in _texts(root) if re.fullmatch(r"[\d,.−]+", t)]
    values = sorted(float(t.replace(",", "").replace("−", "-")) for t in labels)
    assert values and all(v == round(v) for v in values)
    assert max(values) <= 70 and "60" in labels  # 60 MB: the baseline's stored bytes


@pytest.mark.parametrize("layers", [3, 25])  # vertical bars with slanted names; horizontal past 20 layers
def test_bars_are_as_long_as_their_values(layers):
    names = [f"conv{i}" for i in range(layers)]
    baseline = {n: 1_000_000 * (1 + i % 4) for i, n in enumerate(names)}
    facto = {n: 250_000 * (1 + i % 3) for i, n in enumerate(names)}
    fig = plots.layer_bytes_bars({"baseline": baseline, "facto": facto})
    horizontal = fig.data[0].orientation == "h"
    root = _svg(fig)
    for color, values in ((plots.BASELINE_COLOR, baseline), (plots.FACTO_COLOR, facto)):
        rects = [r for r in _traces(root).iter(SVG + "rect") if r.get("fill") == color]
        lengths = [float(r.get("width" if horizontal else "height")) for r in rects]
        assert len(lengths) == layers
        scale = lengths[0] / values[names[0]]
        for length, name in zip(lengths, names):  # bars from zero: length proportional to bytes
            assert length == pytest.approx(values[name] * scale, abs=0.15)
    assert set(names) <= set(_texts(root))
    assert bool(horizontal) == (layers > 20)


@pytest.mark.parametrize("delta", [-40.0, -2.0, 13.85, 30.0])
def test_every_tradeoff_point_is_inside_the_plot(delta):
    """The issue's point at +13.85 had no dot: in the picture too every point lies inside."""
    points = [dict(saving_pct=90.0, accuracy_delta=delta, label="run", source="session", id=1),
              dict(saving_pct=10.0, accuracy_delta=0.5, label="old", source="history", id=2)]
    root = _svg(plots.tradeoff_scatter(points))
    left, top, right, bottom = _plot_area(root)
    centres = [(float(c.get("cx")), float(c.get("cy"))) for c in _traces(root).iter(SVG + "circle")]
    for polygon in _traces(root).iter(SVG + "polygon"):  # symbols drawn as outlines: their centre
        corners = [tuple(map(float, p.split(","))) for p in polygon.get("points").split()]
        centres.append((sum(x for x, _ in corners) / len(corners), sum(y for _, y in corners) / len(corners)))
    assert len(centres) >= 2
    for x, y in centres:
        assert left <= x <= right and top <= y <= bottom


def test_the_live_star_and_an_empty_chart():
    live = plots.live_point(_steps(), _evals(), {"bits": 4})
    root = _svg(plots.tradeoff_scatter([], live))
    assert any(len(p.get("points").split()) == 10 for p in _traces(root).iter(SVG + "polygon"))  # a 5-point star
    empty = _svg(plots.accuracy_curves([], []))
    assert plots.WAITING in _texts(empty) and not list(empty.iter(SVG + "polyline"))


def test_gaps_break_lines_and_text_is_escaped():
    fig = go.Figure(go.Scatter(x=[1, 2, 3, 4, 5], y=[1, 2, None, 4, math.nan], mode="lines", name="a <b>&</b> b",
                               line=dict(color="#123456")))
    fig.update_layout(title="x < y & <br>second line", showlegend=True)
    root = _svg(fig)
    assert [len(line) for line in _lines(root, "#123456")] == [2]  # (1,2) joined; 4 stands alone between gaps
    texts = _texts(root)
    assert "a & b" in texts and "x < y & " in texts and "second line" in texts


def test_a_full_width_cuda_chart():
    cuda = plots.cuda_memory_curves([dict(s.__dict__, peak_cuda=80e6) for s in _steps()])
    texts = _texts(_svg(cuda, 1200))
    assert cuda.layout.title.text in texts


def test_long_tick_labels_push_the_plot_right_and_stay_in_the_picture():
    fig = go.Figure(go.Scatter(x=[0, 1, 2], y=[1e7, 2e7, 3.5e7], mode="lines"))
    fig.update_layout(margin=dict(l=20, r=20, t=40, b=40), yaxis_title="bytes")
    root = _svg(fig)
    size = 12  # Plotly's default font size
    labels = [t for t in root.iter(SVG + "text") if t.get("text-anchor") == "end" and "," in "".join(t.itertext())]
    assert labels and all(float(t.get("x")) - len("".join(t.itertext())) * size * 0.5 > 0 for t in labels)
    left = _plot_area(root)[0]
    assert all(float(t.get("x")) < left for t in labels)  # left of the plot, not over it


def test_a_long_first_slanted_label_stays_in_the_picture():
    names = ["layer2.0.downsample.0.conv_with_a_long_name"] + [f"c{i}" for i in range(5)]
    fig = plots.layer_bytes_bars({"baseline": dict.fromkeys(names, 1_000_000), "facto": dict.fromkeys(names, 100_000)})
    root = _svg(fig)
    (label,) = [t for t in root.iter(SVG + "text") if "".join(t.itertext()) == names[0]]
    x = float(re.search(r"translate\(([\d.]+),", label.get("transform")).group(1))
    angle = math.radians(abs(fig.layout.xaxis.tickangle))
    assert x - len(names[0]) * (fig.layout.xaxis.tickfont.size or 12) * 0.5 * math.cos(angle) > 0


def test_the_same_figure_gives_the_same_picture_in_another_process():
    """The picture depends on the figure only, not on Python's hash seed (no set decides an order)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import facto

    # facto's figures and events without the package's __init__ (no torch): a process a second, not three
    code = ("import sys, types; package = types.ModuleType('facto'); package.__path__ = [sys.argv[1]]; "
            "sys.modules['facto'] = package; "
            "from facto import plots; from facto.engine.events import StepEvent; "
            "steps = [StepEvent(v, s, 1, 1.0, 10.0 * s, 1e6, 1e6, None, 0.1, 1e-3) for s in range(1, 5) "
            "for v in ('baseline', 'facto')]; print(plots.figure_svg(plots.accuracy_curves(steps)))")
    folder = str(Path(facto.__file__).parent)
    pictures = {subprocess.run([sys.executable, "-c", code, folder], capture_output=True, text=True, check=True,
                               env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in (1, 2, 3)}
    assert len(pictures) == 1 and "<svg" in next(iter(pictures))

@pytest.mark.parametrize("width", [300, 480, 960])
def test_the_legend_sits_between_the_title_and_the_plot(width):
    """As in the interactive chart: the title's lines, under them the legend's rows (as many as the
    width needs), under those the plot."""
    fig = plots.memory_curves(_steps())
    root = _svg(fig, width)
    _, top, _, _ = _plot_area(root)
    texts = {"".join(t.itertext()): float(t.get("y")) for t in root.iter(SVG + "text") if t.get("y")}
    title = [texts[line] for line in fig.layout.title.text.split("<br>")]
    legend = [texts[t.name] for t in fig.data]
    size = fig.layout.legend.font.size
    assert max(title) + fig.layout.title.font.size < min(legend) - size / 2
    assert max(legend) + size / 2 < top
