"""Several runs on one chart (History page), and the benchmark's method comparison."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import plotly.graph_objects as go

from .style import (
    BASELINE_COLOR,
    FACTO_COLOR,
    INK,
    MB,
    RUN_DASHES,
    RUN_SHADES,
    RUN_SYMBOLS,
    WIDE,
    apply_style,
    as_rows,
    empty_figure,
    variant_name,
    variant_order,
)

HISTORY_AXES = {"accuracy": "test accuracy (%)", "loss": "training loss", "act_bytes": "stored for backward (MB)"}
HISTORY_METRICS = {
    "accuracy": ("eval", "accuracy", "Test accuracy (%)", "%"),
    "loss": ("step", "loss", "Training loss", "loss"),
    "act_bytes": ("step", "act_bytes", "Activation memory stored (MB)", "MB"),
}


def run_style(index: int, variant: str) -> dict:
    """How run number `index` of a chart with several runs is drawn: the variant's hue family
    (baseline blues, Facto oranges, so the colour rule holds), one shade, line dash and marker
    per run."""
    shades = RUN_SHADES.get(variant, (INK,))
    return dict(color=shades[index % len(shades)], dash=RUN_DASHES[index % len(RUN_DASHES)],
                symbol=RUN_SYMBOLS[index % len(RUN_SYMBOLS)])


def history_chart(runs: Iterable[Mapping], metric: str = "accuracy", title: str | None = None) -> go.Figure:
    """Several stored runs on one chart: baseline in blues, Facto in oranges; each run has its
    own shade, line dash and marker (`run_style`).

    Args:
        runs: dicts with label and rows (metric rows from `RunStore.metrics`, both kinds).
        metric: accuracy (test) | loss (training) | act_bytes.
    """
    if metric not in HISTORY_METRICS:
        raise ValueError(f"metric={metric!r} is not allowed: choose one of {', '.join(HISTORY_METRICS)}")
    kind, key, label, unit = HISTORY_METRICS[metric]
    title = title or f"{label} of the selected runs"
    runs = list(runs)
    if not runs:
        return empty_figure(title, "Select runs to compare")
    fig = go.Figure()
    for i, run in enumerate(runs):
        rows = [r for r in run.get("rows", []) if r.get("kind") == kind and r.get(key) is not None]
        for v in variant_order(r["variant"] for r in rows):
            if v == "warmup":
                continue
            style = run_style(i, v)
            s = [r for r in rows if r["variant"] == v]
            y = [r[key] / MB if metric == "act_bytes" else r[key] for r in s]
            fig.add_trace(go.Scatter(
                x=[r["step"] for r in s], y=y, mode="lines+markers" if kind == "eval" else "lines",
                name=f"{run['label']} · {variant_name(v)}", legendgroup=run["label"],
                line=dict(color=style["color"], width=3 if v == "facto" else 2, dash=style["dash"]),
                marker=dict(size=9, symbol=style["symbol"], color=style["color"],
                            line=dict(color="white", width=1)),
                hovertemplate=f"{run['label']} · {variant_name(v)}<br>step %{{x}}<br>%{{y:.3f}} {unit}<extra></extra>"))
    if not fig.data:  # e.g. a run stopped before its first step, or one still starting
        return empty_figure(title, "Nothing of this kind stored for the selected runs (yet)", 460)
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(title_text=HISTORY_AXES[metric], rangemode="tozero" if metric != "accuracy" else "normal")
    return apply_style(fig, title, height=max(460, 400 + 20 * len(runs)))  # a legend row per run, about


METHOD_COLORS = {"dense": BASELINE_COLOR, "checkpointing": "#54A24B", "compression only": "#B279A2",
                 "Facto paper": "#E45756", "Facto": FACTO_COLOR}


def methods_figure(rows: Iterable[Any], title: str | None = None) -> go.Figure:
    """Benchmark rows (model, method, saving_pct, accuracy delta vs dense): one colour per method
    family, one symbol per model, labels on the points."""
    rows = as_rows(rows)
    fig = go.Figure()
    symbols = ["circle", "diamond", "square", "triangle-up"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    for r in rows:
        family = next((f for f in METHOD_COLORS if r["method"].startswith(f)), "Facto")
        dense = next(d for d in rows if d["model"] == r["model"])
        if r is dense or r.get("accuracy_mean") is None or dense.get("accuracy_mean") is None:
            continue
        delta = r["accuracy_mean"] - dense["accuracy_mean"]
        fig.add_trace(go.Scatter(
            x=[r["saving_pct"]], y=[delta], mode="markers", name=f"{r['model']}: {r['method']}",
            marker=dict(size=13, color=METHOD_COLORS[family], symbol=symbols[models.index(r["model"]) % 4],
                        line=dict(color="white", width=1)),
            hovertemplate=f"{r['model']}: {r['method']}<br>saving %{{x:.1f}} %<br>"
                          f"accuracy change %{{y:+.2f}} points<extra></extra>"))
    fig.add_hline(y=0, line=dict(color=BASELINE_COLOR, width=2, dash="dash"))
    fig.update_xaxes(title_text="activation memory saved vs dense fp32 (%)")
    fig.update_yaxes(title_text="test accuracy change vs dense (points)")
    fig = apply_style(fig, title or "Methods: memory saved vs accuracy (digits, mean of 3 seeds)", height=560,
                      width=WIDE)
    fig.update_layout(legend=dict(orientation="v", x=1.02, xanchor="left", y=1, yanchor="top", yref="paper",
                                  font=dict(size=11)), margin=dict(r=20))
    return fig
