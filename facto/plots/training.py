"""Training curves of the main page: accuracy, stored memory and CUDA memory per step, and the
memory-saving vs accuracy scatter with the live run."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .style import (
    BASELINE_COLOR,
    FACTO_COLOR,
    FONT_SIZE,
    HISTORY_COLOR,
    INK,
    WIDE,
    apply_style,
    as_rows,
    config_label,
    empty_figure,
    to_mb,
    variant_color,
    variant_name,
    variant_order,
)

MARKED_POINTS = 30  # a memory curve with more steps than this is drawn as a line only


def _get(row: Mapping, *keys: str, default=None):
    """First present, non-None value among `keys`."""
    for k in keys:
        if row.get(k) is not None:
            return row[k]
    return default


WAITING = "Waiting for the first training step…"  # what an empty training chart says while a run starts


def accuracy_curves(steps: Iterable[Any], evals: Iterable[Any] = (), title: str | None = None,
                    empty_text: str = WAITING) -> go.Figure:
    """Accuracy (top) and loss (bottom) vs step: thin lines per training step, markers per test.

    Args:
        steps: StepEvent-like rows (variant, step, loss, accuracy in %).
        evals: EvalEvent-like rows (variant, step, test_accuracy/accuracy, test_loss/loss).
        empty_text: what the chart says without any row (a finished run that stored none: say so).
    """
    title = title or "Accuracy and loss vs step"
    steps, evals = as_rows(steps), as_rows(evals)
    if not steps and not evals:
        return empty_figure(title, empty_text, 520)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06, row_heights=[0.58, 0.42])
    variants = variant_order([r["variant"] for r in steps] + [r["variant"] for r in evals])
    for v in variants:
        color, name = variant_color(v), variant_name(v)
        s = [r for r in steps if r["variant"] == v]
        e = [r for r in evals if r["variant"] == v]
        if s:
            x = [r["step"] for r in s]
            fig.add_trace(go.Scatter(
                x=x, y=[r.get("accuracy") for r in s], mode="lines", name=f"{name} · train",
                legendgroup=v, line=dict(color=color, width=1.2), opacity=0.45,
                hovertemplate=f"{name}<br>step %{{x}}<br>train accuracy %{{y:.1f}} %<extra></extra>"),
                row=1, col=1)
            fig.add_trace(go.Scatter(
                x=x, y=[r.get("loss") for r in s], mode="lines", name=f"{name} · train loss",
                legendgroup=v, showlegend=False, line=dict(color=color, width=1.2), opacity=0.45,
                hovertemplate=f"{name}<br>step %{{x}}<br>train loss %{{y:.3f}}<extra></extra>"),
                row=2, col=1)
        if e:
            x = [r["step"] for r in e]
            fig.add_trace(go.Scatter(
                x=x, y=[_get(r, "test_accuracy", "accuracy") for r in e], mode="lines+markers",
                name=f"{name} · test", legendgroup=v, line=dict(color=color, width=3),
                marker=dict(size=9, color=color, line=dict(color="white", width=1)),
                hovertemplate=f"{name}<br>step %{{x}}<br>test accuracy %{{y:.2f}} %<extra></extra>"),
                row=1, col=1)
            fig.add_trace(go.Scatter(
                x=x, y=[_get(r, "test_loss", "loss") for r in e], mode="lines+markers",
                name=f"{name} · test loss", legendgroup=v, showlegend=False, line=dict(color=color, width=3),
                marker=dict(size=9, color=color, line=dict(color="white", width=1)),
                hovertemplate=f"{name}<br>step %{{x}}<br>test loss %{{y:.3f}}<extra></extra>"),
                row=2, col=1)
    fig.update_yaxes(title_text="accuracy (%)", range=[0, 101], row=1, col=1)
    fig.update_yaxes(title_text="loss", rangemode="tozero", row=2, col=1)
    fig.update_xaxes(title_text="training step", row=2, col=1)
    return apply_style(fig, title, 520)


def memory_curves(steps: Iterable[Any], title: str | None = None, empty_text: str = WAITING) -> go.Figure:
    """Activation memory held for backward per step (MB), baseline vs Facto.

    Facto's bytes before compression (`raw_bytes`) are drawn dashed, and the CUDA allocator
    peak (`peak_cuda`) dotted where it was measured.
    """
    title = title or "Activations stored for backward"  # MB: on the y axis
    steps = [r for r in as_rows(steps) if r.get("variant") != "warmup"]
    if not steps:
        return empty_figure(title, empty_text)
    fig = go.Figure()
    for v in variant_order(r["variant"] for r in steps):
        s = [r for r in steps if r["variant"] == v]
        color, name, x = variant_color(v), variant_name(v), [r["step"] for r in s]
        fig.add_trace(go.Scatter(
            x=x, y=[to_mb(r.get("act_bytes")) for r in s], name=f"{name} · stored",
            mode="lines+markers" if len(x) <= MARKED_POINTS else "lines",  # a dot per step clutters long runs
            line=dict(color=color, width=3), marker=dict(size=5, color=color), legendgroup=v,
            hovertemplate=f"{name}<br>step %{{x}}<br>stored %{{y:.2f}} MB<extra></extra>"))
        raw = [r.get("raw_bytes") for r in s]
        if v != "baseline" and any(raw) and raw != [r.get("act_bytes") for r in s]:
            fig.add_trace(go.Scatter(
                x=x, y=[to_mb(b) for b in raw], mode="lines", name=f"{name} · before compression",
                line=dict(color=color, width=2, dash="dash"), legendgroup=v,
                hovertemplate=f"{name} before compression<br>step %{{x}}<br>%{{y:.2f}} MB<extra></extra>"))
        peak = [r.get("peak_cuda") for r in s]
        if any(p is not None for p in peak):
            fig.add_trace(go.Scatter(
                x=x, y=[to_mb(p) for p in peak], mode="lines", name=f"{name} · CUDA peak",
                line=dict(color=color, width=2, dash="dot"), legendgroup=v,
                hovertemplate=f"{name} CUDA peak<br>step %{{x}}<br>%{{y:.1f}} MB<extra></extra>"))
    fig.update_yaxes(title_text="MB", rangemode="tozero")
    fig.update_xaxes(title_text="training step")
    return apply_style(fig, title)


def _machine_memory_curves(steps: list[dict], peak: str, held: str | None, what: str, title: str,
                           reserved: str | None = None) -> go.Figure:
    """Per variant: the step's peak (`peak`), what the allocator reserved at most (`reserved`, when
    measured), what stays after the step (`held`, when measured) and what is stored for backward, in MB."""
    fig = go.Figure()
    for v in variant_order(r["variant"] for r in steps):
        s = [r for r in steps if r["variant"] == v]
        color, name, x = variant_color(v), variant_name(v), [r["step"] for r in s]
        lines = [(peak, "step peak", dict(width=3), ".1f")]
        if reserved is not None and any(r.get(reserved) is not None for r in s):
            lines.append((reserved, "reserved by the allocator", dict(width=2, dash="dashdot"), ".1f"))
        if held is not None:
            lines.append((held, "held after step", dict(width=2, dash="dot"), ".1f"))
        lines.append(("act_bytes", "stored for backward", dict(width=1.5, dash="dash"), ".2f"))
        for key, label, line, digits in lines:
            fig.add_trace(go.Scatter(x=x, y=[to_mb(r.get(key)) for r in s], name=f"{name} · {label}", mode="lines",
                                     line=dict(color=color, **line), legendgroup=v,
                                     hovertemplate=f"{name} {label} ({what})<br>step %{{x}}<br>"
                                                   f"%{{y:{digits}}} MB<extra></extra>"))
    fig.update_yaxes(title_text="MB", rangemode="tozero")
    fig.update_xaxes(title_text="training step")
    return apply_style(fig, title, width=WIDE)


def cuda_memory_curves(steps: Iterable[Any], title: str | None = None) -> go.Figure:
    """What the GPU holds per step (the step's allocated peak, what the caching allocator reserved from
    the driver at most, allocated after the step) beside what is stored.

    Only steps measured on CUDA carry `peak_cuda` / `cuda_reserved` / `cuda_allocated`; without them the
    figure says so.
    """
    title = title or "GPU memory per step: stored vs what the allocator holds (MB)"
    steps = [r for r in as_rows(steps) if r.get("variant") != "warmup"]
    if not any(r.get("peak_cuda") is not None for r in steps):
        return empty_figure(title, "Measured on CUDA only: this run is on another device", width=WIDE)
    return _machine_memory_curves(steps, "peak_cuda", "cuda_allocated", "CUDA allocator", title, "cuda_reserved")


def process_memory_curves(steps: Iterable[Any], title: str | None = None) -> go.Figure:
    """What the machine gave the training process per step on the CPU (its resident peak during
    each variant's step, weights, optimizer state and the interpreter included) beside what is stored.

    Only steps measured on a CPU under Linux carry `process_peak`; without them the figure says so.
    """
    title = title or "Process memory per step: stored vs what the machine gave the process (MB)"
    steps = [r for r in as_rows(steps) if r.get("variant") != "warmup"]
    if not any(r.get("process_peak") is not None for r in steps):
        return empty_figure(title, "Measured on a CPU under Linux only", width=WIDE)
    return _machine_memory_curves(steps, "process_peak", None, "resident", title)


def live_point(steps: Iterable[Any], evals: Iterable[Any] = (), config: Mapping | None = None,
               window: int = 5) -> dict | None:
    """The current run as a point of the saving-vs-accuracy chart (None before both variants stepped).

    Saving comes from the latest stored bytes; the accuracy change from the latest test of
    both variants, or, before the first test, from the mean training accuracy of the last
    `window` steps (marked as such in the hover text).
    """
    steps, evals = as_rows(steps), as_rows(evals)
    last = {v: [r for r in steps if r["variant"] == v] for v in ("baseline", "facto")}
    if not last["baseline"] or not last["facto"] or not last["baseline"][-1].get("act_bytes"):
        return None
    saving = 100.0 * (1 - last["facto"][-1]["act_bytes"] / last["baseline"][-1]["act_bytes"])
    tests = {v: [r for r in evals if r["variant"] == v] for v in ("baseline", "facto")}
    if tests["baseline"] and tests["facto"]:
        delta = (_get(tests["facto"][-1], "test_accuracy", "accuracy")
                 - _get(tests["baseline"][-1], "test_accuracy", "accuracy"))
        basis = "test accuracy"
    else:
        mean = {v: float(np.mean([r["accuracy"] for r in last[v][-window:]])) for v in last}
        delta, basis = mean["facto"] - mean["baseline"], f"train accuracy, last {window} steps"
    return {"saving_pct": saving, "accuracy_delta": delta, "basis": "test" if basis == "test accuracy" else "train",
            "label": f"current run ({basis})<br>{config_label(config)}", "source": "live"}


def tradeoff_points(runs: Iterable[Any], source: str = "history") -> list[dict]:
    """Points for `tradeoff_scatter` from stored runs (RunRecord-like: id, config, summary, status)."""
    points = []
    for run in runs:
        r = run if isinstance(run, Mapping) else {k: getattr(run, k, None)
                                                   for k in ("id", "config", "summary", "status")}
        s = r.get("summary") or {}
        if s.get("saving_pct") is None or s.get("accuracy_delta") is None:
            continue
        acc = s.get("accuracy") or {}
        label = f"run #{r.get('id')} ({r.get('status')})<br>{config_label(r.get('config'))}"
        if acc.get("baseline") is not None and acc.get("facto") is not None:
            label += f"<br>baseline {acc['baseline']:.1f} % → Facto {acc['facto']:.1f} %"
        points.append({"saving_pct": s["saving_pct"], "accuracy_delta": s["accuracy_delta"],
                       "label": label, "source": source, "id": r.get("id")})
    return points


def tradeoff_scatter(points: Iterable[Any], live: Mapping | None = None, title: str | None = None,
                     empty_text: str = "Finished runs appear here",
                     session_name: str = "Runs of this session") -> go.Figure:
    """Memory saving (%) vs accuracy change (points): one marker per run, the live run as a star.

    Args:
        points: dicts with saving_pct, accuracy_delta, label (hover text) and source
            ('session' or 'history').
        live: the current run's point (see `live_point`), or None.
        session_name: the legend name of the 'session' points (orange).
    """
    title = title or "Memory saving vs accuracy change"
    points = as_rows(points)
    fig = go.Figure()
    styles = {"history": ("Earlier runs (history)", HISTORY_COLOR, 10),
              "session": (session_name, FACTO_COLOR, 12)}
    for source, (name, color, size) in styles.items():
        pts = [p for p in points if p.get("source", "session") == source]
        if not pts:
            continue
        fig.add_trace(go.Scatter(
            x=[p["saving_pct"] for p in pts], y=[p["accuracy_delta"] for p in pts], mode="markers", name=name,
            marker=dict(size=size, color=color, opacity=0.85, line=dict(color="white", width=1)),
            hovertext=[p.get("label", "") for p in pts],
            hovertemplate="%{hovertext}<br>saving %{x:.1f} %<br>test accuracy change %{y:+.2f} points"
                          "<extra></extra>"))
    if live:
        basis = live.get("basis", "train")  # before the first test, the live point uses training accuracy
        fig.add_trace(go.Scatter(
            x=[live["saving_pct"]], y=[live["accuracy_delta"]], mode="markers",
            name=f"Current run (live, {basis} accuracy)",
            marker=dict(size=22, symbol="star", color=FACTO_COLOR, line=dict(color=INK, width=1.5)),
            hovertext=[live.get("label", "current run")],
            hovertemplate=f"%{{hovertext}}<br>saving %{{x:.1f}} %<br>{basis} accuracy change %{{y:+.2f}} points"
                          "<extra></extra>"))
    ys = [y for y in [p.get("accuracy_delta") for p in points] + ([live["accuracy_delta"]] if live else [])
          if y is not None and math.isfinite(y)]
    low, high = tradeoff_range(ys)
    fig.add_hline(y=0, line=dict(color=BASELINE_COLOR, width=2, dash="dash"),
                  annotation_text="baseline accuracy", annotation_position="bottom left",
                  annotation_font=dict(color=BASELINE_COLOR, size=FONT_SIZE - 2))
    fig.update_xaxes(title_text="memory saved (%)", range=[-2, 102])
    fig.update_yaxes(title_text="test accuracy change (points)", range=[low, high], zeroline=False)
    if not fig.data:
        fig.add_annotation(text=empty_text, x=50, y=low / 2, showarrow=False,
                           font=dict(size=FONT_SIZE, color="#808495"))
    return apply_style(fig, title)


def tradeoff_range(ys: Sequence[float]) -> tuple[float, float]:
    """The y range of `tradeoff_scatter`: every point inside with a margin, 0 always shown, and at
    least -5..+3 points (losses are the common case, so the negative side gets more room)."""
    low = min([-5.0] + [1.15 * y - 0.5 for y in ys if y < 0])
    high = max([3.0, -0.4 * low] + [1.15 * y + 0.5 for y in ys if y > 0])
    return low, high
