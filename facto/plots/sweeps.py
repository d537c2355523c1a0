"""Sweep charts: the Pareto front of memory saving vs accuracy, and the rank x bits heatmap."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .style import BASELINE_COLOR, FACTO_COLOR, FONT_SIZE, INK, apply_style, as_rows, empty_figure, fmt_bits

UPDATE_SYMBOLS = {"core": "circle", "last": "square", "first": "diamond", "all": "triangle-up",
                  "cycle": "star"}


def _front(points: list[dict]) -> list[dict]:
    """Non-dominated points (higher saving and higher accuracy are better), by saving."""
    done = [p for p in points if p.get("accuracy") is not None]
    front = [p for p in done if not any(
        q["saving_pct"] >= p["saving_pct"] and q["accuracy"] >= p["accuracy"]
        and (q["saving_pct"] > p["saving_pct"] or q["accuracy"] > p["accuracy"]) for q in done)]
    return sorted(front, key=lambda p: p["saving_pct"])


def _point_text(p: Mapping) -> str:
    return f"r{p.get('rank')}·{'fp32' if p.get('bits') is None else str(p.get('bits')) + 'b'}"


def pareto_front(points: Iterable[Any], title: str | None = None) -> go.Figure:
    """Sweep points, memory saving (%) vs Facto test accuracy (%), with their Pareto front.

    The baseline (variant 'baseline', 0 % saving) is drawn as a dotted accuracy line, so the
    x axis can zoom on the Facto points. Points on the front are labelled (rank, bits). The
    front is drawn as a staircase (the best accuracy reachable at each saving) that runs to
    the plot's edges, so it is a visible line even with one or two points.

    Args:
        points: `facto.engine.sweep.SweepPoint`s or dicts with variant, rank, bits, update, accuracy,
            saving_pct.
    """
    title = title or "Sweep: memory saving vs test accuracy"
    pts = [p for p in as_rows(points) if p.get("saving_pct") is not None]
    base = [p for p in pts if p.get("variant") == "baseline" and p.get("accuracy") is not None]
    facto = [p for p in pts if p.get("variant") != "baseline"]
    if not pts:
        return empty_figure(title, "Sweep points appear here as runs finish")
    fig = go.Figure()
    front = _front(facto)
    rank_on_front = {id(p): i for i, p in enumerate(front)}  # labels alternate above / below the front
    for update in dict.fromkeys(p.get("update") for p in facto):
        group = [p for p in facto if p.get("update") == update]
        fig.add_trace(go.Scatter(
            x=[p["saving_pct"] for p in group], y=[p.get("accuracy") for p in group], mode="markers+text",
            name=f"Facto, update={update}", text=[_point_text(p) if id(p) in rank_on_front else "" for p in group],
            textposition=["bottom center" if rank_on_front.get(id(p), 0) % 2 else "top center" for p in group],
            textfont=dict(size=FONT_SIZE - 2, color=INK),
            marker=dict(size=14, color=FACTO_COLOR, symbol=UPDATE_SYMBOLS.get(update, "circle"),
                        line=dict(color="white", width=1)),
            hovertext=[f"rank {p.get('rank')} · {fmt_bits(p.get('bits'))} · update {p.get('update')}"
                       + (f" ({p['status']})" if p.get("status") not in (None, "completed") else "")
                       for p in group],
            hovertemplate="%{hovertext}<br>saving %{x:.1f} %<br>test accuracy %{y:.2f} %<extra></extra>"))
    y_range = x_range = None
    accs = [p["accuracy"] for p in pts if p.get("accuracy") is not None]
    if accs:
        lo, hi = min(accs), max(accs)
        pad = max(3.0, 0.1 * (hi - lo))  # room for the labels above and below
        y_range = [max(0.0, lo - pad), min(101.0, hi + pad)]
    savings = [p["saving_pct"] for p in facto]
    if savings:
        lo, hi = min(savings), max(savings)
        pad = max(2.0, 0.15 * (hi - lo))
        x_range = [max(-1.0, lo - pad), min(101.0, hi + pad)]
    if front and x_range and y_range:
        xs, ys = _staircase(front, x_range, y_range)
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="lines", name="Pareto front (best accuracy at each saving)",
            line=dict(color=INK, width=2, dash="dash"), hoverinfo="skip"))
    for p in base:  # a line across the plot, and a legend entry
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=f"Baseline {p['accuracy']:.1f} %",
                                 line=dict(color=BASELINE_COLOR, width=2, dash="dot")))
        fig.add_hline(y=p["accuracy"], line=dict(color=BASELINE_COLOR, width=2, dash="dot"))
    if y_range:
        fig.update_yaxes(range=y_range)
    if x_range:
        fig.update_xaxes(range=x_range)
    fig.update_xaxes(title_text="memory saved vs baseline (%)")
    fig.update_yaxes(title_text="test accuracy (%)")
    return apply_style(fig, title, height=480)


def _staircase(front: Sequence[Mapping], x_range: Sequence[float], y_range: Sequence[float]) -> tuple[list, list]:
    """The front as steps: from the left edge at the best accuracy, across and down through each
    front point (by increasing saving), to the bottom edge below the largest saving."""
    xs, ys = [x_range[0]], [front[0]["accuracy"]]
    for i, p in enumerate(front):
        if i:
            xs.append(front[i - 1]["saving_pct"])
            ys.append(p["accuracy"])
        xs.append(p["saving_pct"])
        ys.append(p["accuracy"])
    xs.append(front[-1]["saving_pct"])
    ys.append(y_range[0])
    return xs, ys


def sweep_figure(points: Iterable[Any]) -> go.Figure:
    """The sweep chart the CLI writes with --html (same as `pareto_front`)."""
    return pareto_front(points)


def accuracy_heatmap(points: Iterable[Any], title: str | None = None) -> go.Figure:
    """Facto test accuracy (%) over rank x bits, one panel per update mode (the trained factor)."""
    title = title or "Facto test accuracy (%) by rank and bits, per trained factor"
    pts = [p for p in as_rows(points) if p.get("variant", "facto") != "baseline"]
    if not pts:
        return empty_figure(title, "Sweep points appear here as runs finish")
    updates = list(dict.fromkeys(p.get("update") for p in pts))
    ranks = sorted({str(p.get("rank")) for p in pts}, key=_rank_sort)
    bits = sorted({p.get("bits") for p in pts}, key=lambda b: 99 if b is None else b)
    fig = make_subplots(rows=1, cols=len(updates), subplot_titles=[str(u) for u in updates],
                        horizontal_spacing=0.08, shared_yaxes=True)
    accs = [p["accuracy"] for p in pts if p.get("accuracy") is not None]
    zmin, zmax = (min(accs), max(accs)) if accs else (0, 100)
    if zmax - zmin < 1:
        zmin, zmax = zmin - 0.5, zmax + 0.5
    cells = len(updates) * len(bits)  # columns of cells across a chart half the page wide: numbers where they fit
    size = FONT_SIZE if cells <= 4 else FONT_SIZE - 3
    shown = "%{text}" if cells <= 6 else ""  # the hover text still has each number
    for col, update in enumerate(updates, start=1):
        grid = [[None] * len(bits) for _ in ranks]
        for p in pts:
            if p.get("update") == update and p.get("accuracy") is not None:
                grid[ranks.index(str(p.get("rank")))][bits.index(p.get("bits"))] = p["accuracy"]
        text = [["" if v is None else f"{v:.1f}" for v in row] for row in grid]
        fig.add_trace(go.Heatmap(
            z=grid, x=[fmt_bits(b) for b in bits], y=[f"rank {r}" for r in ranks], text=text,
            texttemplate=shown, textfont=dict(size=size), coloraxis="coloraxis", xgap=2, ygap=2,
            name=f"update={update}",
            hovertemplate=f"update {update}<br>%{{y}} · %{{x}}<br>accuracy %{{z:.2f}} %<extra></extra>"),
            row=1, col=col)
    fig.update_layout(coloraxis=dict(colorscale="Oranges", cmin=zmin, cmax=zmax,
                                     colorbar=dict(title=dict(text="%"), thickness=14)))
    fig.update_xaxes(type="category")  # the tick labels say "2-bit", "4-bit", ...
    fig.update_yaxes(type="category")
    return apply_style(fig, title, height=max(320, 150 + 60 * len(ranks)), legend=False)


def _rank_sort(text: str):
    try:
        return (0, float(text))
    except ValueError:
        return (1, text)
