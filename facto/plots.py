"""Plotly figure builders shared by the Streamlit app, its pages and the CLI's HTML export.

Every builder takes plain data (dicts, dataclass events such as `StepEvent` or `SweepPoint`,
lists of those, numpy arrays or tensors) and returns a `plotly.graph_objects.Figure`.
Colours for the baseline and for Facto are defined once here, so every chart agrees.
No Streamlit import: this module is used headless too.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = [
    "BASELINE_COLOR", "FACTO_COLOR", "COLORS", "NAMES", "MB",
    "config_label", "accuracy_curves", "memory_curves", "live_point", "tradeoff_points", "tradeoff_scatter",
    "tradeoff_range", "layer_bytes_bars", "params_bars", "pareto_front", "sweep_figure", "accuracy_heatmap",
    "feature_map_images", "error_histogram", "bits_curves", "run_style", "history_chart", "methods_figure",
    "layer_stages_figure", "kept_bytes_bars", "rank_curve_figure", "plan_bars", "cuda_memory_curves",
]

MB = 1e6  # bytes per MB, as the CLI prints them
BASELINE_COLOR = "#4C78A8"  # blue: the dense fp32 baseline
FACTO_COLOR = "#F58518"  # orange: Facto
WARMUP_COLOR = "#9D9D9D"
HISTORY_COLOR = "#B8B8B8"
INK = "#262730"
COLORS = {"baseline": BASELINE_COLOR, "facto": FACTO_COLOR, "warmup": WARMUP_COLOR}
NAMES = {"baseline": "Baseline", "facto": "Facto", "warmup": "Warm-up"}
LONG_NAMES = {"baseline": "Baseline (dense fp32)", "facto": "Facto", "warmup": "Warm-up (dense)"}
# several runs on one chart (history): each variant keeps its hue family, each run has its own
# shade, line dash and marker
RUN_SHADES = {"baseline": ("#4C78A8", "#1F4E79", "#8AB6E0", "#2F6DB5", "#6A8CAF", "#0B2E59"),
              "facto": ("#F58518", "#A84E00", "#FFB36B", "#D9650B", "#C9884A", "#7A3300")}
RUN_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
RUN_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "star")
UPDATE_SYMBOLS = {"core": "circle", "last": "square", "first": "diamond", "all": "triangle-up",
                  "cycle": "star"}
FONT_SIZE = 14


# ----------------------------------------------------------------------------- helpers

def _row(item: Any) -> dict:
    """A plain dict from a dict or a dataclass instance (events, sweep points, reports)."""
    if isinstance(item, Mapping):
        return dict(item)
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return dataclasses.asdict(item)
    raise TypeError(f"expected a dict or a dataclass instance, got {type(item).__name__}")


def _rows(items: Iterable[Any] | None) -> list[dict]:
    return [_row(i) for i in (items or [])]


def _get(row: Mapping, *keys: str, default=None):
    """First present, non-None value among `keys`."""
    for k in keys:
        if row.get(k) is not None:
            return row[k]
    return default


def _variant_order(variants: Iterable[str]) -> list[str]:
    known = ["warmup", "baseline", "facto"]
    present = list(dict.fromkeys(variants))
    return [v for v in known if v in present] + [v for v in present if v not in known]


def _color(variant: str) -> str:
    return COLORS.get(variant, INK)


def _name(variant: str) -> str:
    return NAMES.get(variant, variant)


GRID = "#EBF0F8"  # plotly_white's grid, set by hand: applying a template costs ~10 ms a figure


def _style(fig: go.Figure, title: str, height: int = 420, legend: bool = True) -> go.Figure:
    """Common look: white background, light grid, readable fonts, title top-left, legend above."""
    fig.update_layout(
        template="none",
        paper_bgcolor="white",
        plot_bgcolor="white",
        title=dict(text=title, x=0.01, xanchor="left", y=0.98, yanchor="top", yref="container",
                   font=dict(size=FONT_SIZE + 3)),
        font=dict(size=FONT_SIZE, color=INK),
        height=height,
        margin=dict(l=64, r=24, t=96 if legend else 64, b=56),
        hoverlabel=dict(font_size=FONT_SIZE - 1),
        hovermode="closest",
        showlegend=legend,
        legend=dict(orientation="h", x=0, xanchor="left", y=1.02, yanchor="bottom",
                    bgcolor="rgba(255,255,255,0)", font=dict(size=FONT_SIZE - 1)),
    )
    fig.update_xaxes(gridcolor=GRID, zerolinecolor=GRID, linecolor=GRID, ticks="", automargin=True)
    fig.update_yaxes(gridcolor=GRID, zerolinecolor=GRID, linecolor=GRID, ticks="", automargin=True)
    fig.update_annotations(font_size=FONT_SIZE)  # subplot titles
    return fig


def _empty(title: str, message: str, height: int = 420) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=FONT_SIZE + 1, color="#808495"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _style(fig, title, height, legend=False)


def _mb(value: float | None) -> float | None:
    return None if value is None else value / MB


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _merge_order(lists: Sequence[Sequence[str]]) -> list[str]:
    """Union of ordered lists keeping each list's order (new names go after their predecessor)."""
    out: list[str] = []
    for names in lists:
        prev = None
        for name in names:
            if name not in out:
                out.insert(out.index(prev) + 1 if prev is not None else _first_slot(out, name), name)
            prev = name
    return out


def _first_slot(out: list[str], name: str) -> int:
    """Where a name with no predecessor goes: before the first name that sorts after it."""
    for i, other in enumerate(out):
        if _natural_key(other) > _natural_key(name):
            return i
    return len(out)


def _fmt_bits(bits) -> str:
    return "fp32" if bits is None else f"{bits}-bit"


def config_label(config: Mapping | None, compact: bool = False) -> str:
    """One readable line for a run's settings: model/dataset, rank, update, bits, epochs.

    compact: the short form of tables ('simple_cnn · digits · rank 0.5 · 4 bits · core · ...').
    """
    if not config:
        return ""
    c = _row(config)
    parts = ([str(c.get("model", "?")), str(c.get("dataset", "?"))] if compact
             else [f"{c.get('model', '?')} on {c.get('dataset', '?')}"])
    if "rank" in c:
        parts.append(f"rank {c['rank']}")
    if c.get("update"):
        parts.append(str(c["update"]) if compact else f"update {c['update']}")
    if "bits" in c:
        parts.append(_fmt_bits(c.get("bits")))
    if c.get("recompute"):
        parts.append("recompute" if compact else "recompute BN")
    if c.get("epochs"):
        parts.append(f"{c['epochs']} ep")
    if c.get("max_train"):
        parts.append(f"{c['max_train']:,} imgs" if compact else f"{c['max_train']} train imgs")
    return " · ".join(parts)


# ----------------------------------------------------------------------------- training curves

def accuracy_curves(steps: Iterable[Any], evals: Iterable[Any] = (), title: str | None = None) -> go.Figure:
    """Accuracy (top) and loss (bottom) vs step: thin lines per training step, markers per test.

    Args:
        steps: StepEvent-like rows (variant, step, loss, accuracy in %).
        evals: EvalEvent-like rows (variant, step, test_accuracy/accuracy, test_loss/loss).
    """
    title = title or "Accuracy and loss vs step"
    steps, evals = _rows(steps), _rows(evals)
    if not steps and not evals:
        return _empty(title, "Waiting for the first training step…", 520)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06, row_heights=[0.58, 0.42])
    variants = _variant_order([r["variant"] for r in steps] + [r["variant"] for r in evals])
    for v in variants:
        color, name = _color(v), _name(v)
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
    return _style(fig, title, 520)


def memory_curves(steps: Iterable[Any], title: str | None = None) -> go.Figure:
    """Activation memory held for backward per step (MB), baseline vs Facto.

    Facto's bytes before compression (`raw_bytes`) are drawn dashed, and the CUDA allocator
    peak (`peak_cuda`) dotted where it was measured.
    """
    title = title or "Activation memory stored for backward (MB)"
    steps = [r for r in _rows(steps) if r.get("variant") != "warmup"]
    if not steps:
        return _empty(title, "Waiting for the first training step…")
    fig = go.Figure()
    for v in _variant_order(r["variant"] for r in steps):
        s = [r for r in steps if r["variant"] == v]
        color, name, x = _color(v), _name(v), [r["step"] for r in s]
        fig.add_trace(go.Scatter(
            x=x, y=[_mb(r.get("act_bytes")) for r in s], mode="lines+markers", name=f"{name} · stored",
            line=dict(color=color, width=3), marker=dict(size=5, color=color), legendgroup=v,
            hovertemplate=f"{name}<br>step %{{x}}<br>stored %{{y:.2f}} MB<extra></extra>"))
        raw = [r.get("raw_bytes") for r in s]
        if v != "baseline" and any(raw) and raw != [r.get("act_bytes") for r in s]:
            fig.add_trace(go.Scatter(
                x=x, y=[_mb(b) for b in raw], mode="lines", name=f"{name} · before compression",
                line=dict(color=color, width=2, dash="dash"), legendgroup=v,
                hovertemplate=f"{name} before compression<br>step %{{x}}<br>%{{y:.2f}} MB<extra></extra>"))
        peak = [r.get("peak_cuda") for r in s]
        if any(p is not None for p in peak):
            fig.add_trace(go.Scatter(
                x=x, y=[_mb(p) for p in peak], mode="lines", name=f"{name} · CUDA peak",
                line=dict(color=color, width=2, dash="dot"), legendgroup=v,
                hovertemplate=f"{name} CUDA peak<br>step %{{x}}<br>%{{y:.1f}} MB<extra></extra>"))
    fig.update_yaxes(title_text="MB", rangemode="tozero")
    fig.update_xaxes(title_text="training step")
    return _style(fig, title)


def live_point(steps: Iterable[Any], evals: Iterable[Any] = (), config: Mapping | None = None,
               window: int = 5) -> dict | None:
    """The current run as a point of the saving-vs-accuracy chart (None before both variants stepped).

    Saving comes from the latest stored bytes; the accuracy change from the latest test of
    both variants, or, before the first test, from the mean training accuracy of the last
    `window` steps (marked as such in the hover text).
    """
    steps, evals = _rows(steps), _rows(evals)
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
    points = _rows(points)
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
    fig.update_xaxes(title_text="activation memory saved vs baseline (%)", range=[-2, 102])
    fig.update_yaxes(title_text="test accuracy change (points)", range=[low, high], zeroline=False)
    if not fig.data:
        fig.add_annotation(text=empty_text, x=50, y=low / 2, showarrow=False,
                           font=dict(size=FONT_SIZE, color="#808495"))
    return _style(fig, title)


def tradeoff_range(ys: Sequence[float]) -> tuple[float, float]:
    """The y range of `tradeoff_scatter`: every point inside with a margin, 0 always shown, and at
    least -5..+3 points (losses are the common case, so the negative side gets more room)."""
    low = min([-5.0] + [1.15 * y - 0.5 for y in ys if y < 0])
    high = max([3.0, -0.4 * low] + [1.15 * y + 0.5 for y in ys if y > 0])
    return low, high


# ----------------------------------------------------------------------------- layers

def layer_bytes_bars(layer_bytes: Mapping[str, Mapping[str, int]], layer_types: Mapping[str, str] | None = None,
                     title: str | None = None) -> go.Figure:
    """Stored bytes per layer for one batch, baseline vs Facto (grouped bars, MB).

    Args:
        layer_bytes: {variant: {layer name: bytes}} as `facto.train.layer_bytes` gives per variant.
        layer_types: optional {layer name: module type} shown next to the name.
    """
    title = title or "Stored for backward, per layer (one batch)"
    variants = _variant_order(v for v in layer_bytes if v != "warmup")
    if not variants or not any(layer_bytes[v] for v in variants):
        return _empty(title, "No per-layer numbers yet")
    layers = _merge_order([list(layer_bytes[v]) for v in variants])
    types = layer_types or {}
    labels = [f"{name} · {types[name]}" if types.get(name) else name for name in layers]
    horizontal = len(layers) > 20
    fig = go.Figure()
    for v in variants:
        values = [_mb(layer_bytes[v].get(name, 0)) for name in layers]
        total = sum(values) or 1.0
        share = [100 * b / total for b in values]
        bar = dict(name=_name(v), marker_color=_color(v), customdata=share,
                   hovertemplate=f"{_name(v)}<br>%{{{'y' if horizontal else 'x'}}}<br>"
                                 f"%{{{'x' if horizontal else 'y'}:.3f}} MB (%{{customdata:.1f}} % of total)"
                                 "<extra></extra>")
        if horizontal:
            fig.add_trace(go.Bar(y=labels, x=values, orientation="h", **bar))
        else:
            fig.add_trace(go.Bar(x=labels, y=values, **bar))
    fig.update_layout(barmode="group", bargap=0.2)
    if horizontal:  # long layer names (resnet18's layer2.0.downsample.0): the margin grows to fit them
        fig.update_yaxes(autorange="reversed", tickfont=dict(size=FONT_SIZE - 3), automargin=True)
        fig.update_xaxes(title_text="MB", automargin=True)
        return _style(fig, title, height=max(420, 120 + 22 * len(layers)))
    fig.update_yaxes(title_text="MB", rangemode="tozero", automargin=True)
    fig.update_xaxes(tickangle=-40, tickfont=dict(size=FONT_SIZE - 3), automargin=True)
    fig = _style(fig, title, height=480)
    fig.update_layout(margin=dict(b=130))
    return fig


def params_bars(report: Iterable[Any], title: str | None = None) -> go.Figure:
    """Parameters per conv/linear layer before and after factorization (from `describe` rows)."""
    title = title or "Parameters per layer: dense vs factorized"
    rows = _rows(report)
    if not rows:
        return _empty(title, "No conv or linear layers")
    names = [r["name"] for r in rows]
    hover = []
    for r in rows:
        if r.get("kind") == "factorized":
            err = "" if r.get("rel_error") is None else f"<br>reconstruction error {100 * r['rel_error']:.1f} %"
            hover.append(f"ranks {tuple(r['ranks'])}, update {r.get('update')}{err}")
        else:
            hover.append(f"dense: {r.get('reason') or 'not factorized'}")
    fig = go.Figure()
    fig.add_trace(go.Bar(x=names, y=[r["params_before"] for r in rows], name="Dense",
                         marker_color=BASELINE_COLOR, hovertext=hover,
                         hovertemplate="%{x}<br>dense %{y:,} params<br>%{hovertext}<extra></extra>"))
    fig.add_trace(go.Bar(x=names, y=[r["params_after"] for r in rows], name="Facto (all factors)",
                         marker_color=FACTO_COLOR, hovertext=hover,
                         hovertemplate="%{x}<br>factorized %{y:,} params<br>%{hovertext}<extra></extra>"))
    fig.add_trace(go.Bar(x=names, y=[r["trainable_params"] for r in rows], name="Facto (trained)",
                         marker=dict(color="rgba(245,133,24,0.35)", line=dict(color=FACTO_COLOR, width=1.5)),
                         hovertext=hover,
                         hovertemplate="%{x}<br>trained %{y:,} params<br>%{hovertext}<extra></extra>"))
    fig.update_layout(barmode="group", bargap=0.2)
    fig.update_yaxes(title_text="parameters", rangemode="tozero", automargin=True)
    fig.update_xaxes(tickangle=-40 if len(rows) > 8 else 0, tickfont=dict(size=FONT_SIZE - 3), automargin=True)
    return _style(fig, title, height=440 if len(rows) <= 8 else 520)


# ----------------------------------------------------------------------------- sweeps

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
        points: `facto.sweep.SweepPoint`s or dicts with variant, rank, bits, update, accuracy,
            saving_pct.
    """
    title = title or "Sweep: memory saving vs test accuracy"
    pts = [p for p in _rows(points) if p.get("saving_pct") is not None]
    base = [p for p in pts if p.get("variant") == "baseline" and p.get("accuracy") is not None]
    facto = [p for p in pts if p.get("variant") != "baseline"]
    if not pts:
        return _empty(title, "Sweep points appear here as runs finish")
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
            hovertext=[f"rank {p.get('rank')} · {_fmt_bits(p.get('bits'))} · update {p.get('update')}"
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
    fig.update_xaxes(title_text="activation memory saved vs baseline (%)")
    fig.update_yaxes(title_text="test accuracy (%)")
    return _style(fig, title, height=480)


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
    """Facto test accuracy (%) over rank x bits, one panel per update mode."""
    title = title or "Facto test accuracy (%) by rank and bits"
    pts = [p for p in _rows(points) if p.get("variant", "facto") != "baseline"]
    if not pts:
        return _empty(title, "Sweep points appear here as runs finish")
    updates = list(dict.fromkeys(p.get("update") for p in pts))
    ranks = sorted({str(p.get("rank")) for p in pts}, key=_rank_sort)
    bits = sorted({p.get("bits") for p in pts}, key=lambda b: 99 if b is None else b)
    fig = make_subplots(rows=1, cols=len(updates), subplot_titles=[f"update = {u}" for u in updates],
                        horizontal_spacing=0.08, shared_yaxes=True)
    accs = [p["accuracy"] for p in pts if p.get("accuracy") is not None]
    zmin, zmax = (min(accs), max(accs)) if accs else (0, 100)
    if zmax - zmin < 1:
        zmin, zmax = zmin - 0.5, zmax + 0.5
    for col, update in enumerate(updates, start=1):
        grid = [[None] * len(bits) for _ in ranks]
        for p in pts:
            if p.get("update") == update and p.get("accuracy") is not None:
                grid[ranks.index(str(p.get("rank")))][bits.index(p.get("bits"))] = p["accuracy"]
        text = [["" if v is None else f"{v:.1f}" for v in row] for row in grid]
        fig.add_trace(go.Heatmap(
            z=grid, x=[_fmt_bits(b) for b in bits], y=[f"rank {r}" for r in ranks], text=text,
            texttemplate="%{text}", textfont=dict(size=FONT_SIZE), coloraxis="coloraxis", xgap=2, ygap=2,
            name=f"update={update}",
            hovertemplate=f"update {update}<br>%{{y}} · %{{x}}<br>accuracy %{{z:.2f}} %<extra></extra>"),
            row=1, col=col)
    fig.update_layout(coloraxis=dict(colorscale="Oranges", cmin=zmin, cmax=zmax,
                                     colorbar=dict(title=dict(text="%"), thickness=14)))
    fig.update_xaxes(type="category")  # the tick labels say "2-bit", "4-bit", ...
    fig.update_yaxes(type="category")
    return _style(fig, title, height=max(320, 150 + 60 * len(ranks)), legend=False)


def _rank_sort(text: str):
    try:
        return (0, float(text))
    except ValueError:
        return (1, text)


# ----------------------------------------------------------------------------- compression

def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _tile(maps: np.ndarray, cols: int) -> np.ndarray:
    """(C, H, W) -> one 2-D mosaic with a 1-pixel NaN gap between channels."""
    c, h, w = maps.shape
    rows = math.ceil(c / cols)
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan, dtype=np.float32)
    for i in range(c):
        r, k = divmod(i, cols)
        out[r * (h + 1): r * (h + 1) + h, k * (w + 1): k * (w + 1) + w] = maps[i]
    return out


def feature_map_images(original, compressed, max_channels: int = 16, title: str | None = None,
                       compressed_name: str = "Compressed") -> go.Figure:
    """Original, compressed and error images of a feature map (C, H, W), channels tiled.

    Original and compressed share one grey scale; the error uses a diverging scale centred on 0.
    """
    title = title or "Feature map: original, compressed, error"
    a, b = _numpy(original), _numpy(compressed)
    if a.ndim == 2:
        a, b = a[None], b[None]
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"original and compressed must both be (C, H, W); got {a.shape} and {b.shape}")
    a, b = a[:max_channels], b[:max_channels]
    cols = math.ceil(math.sqrt(a.shape[0]))
    ta, tb, te = _tile(a, cols), _tile(b, cols), _tile(b - a, cols)
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.06,
                        subplot_titles=("Original", compressed_name, "Error (compressed − original)"))
    lo, hi = float(np.nanmin(ta)), float(np.nanmax(ta))
    emax = float(np.nanmax(np.abs(te))) or 1e-12
    for col, (img, axis, name) in enumerate([(ta, "coloraxis", "original"), (tb, "coloraxis", "compressed"),
                                             (te, "coloraxis2", "error")], start=1):
        fig.add_trace(go.Heatmap(z=img, coloraxis=axis, name=name,
                                 hovertemplate=f"{name}<br>x %{{x}}, y %{{y}}<br>value %{{z:.4f}}<extra></extra>"),
                      row=1, col=col)
    fig.update_layout(
        coloraxis=dict(colorscale="gray", cmin=lo, cmax=hi,
                       colorbar=dict(x=0.64, thickness=12, len=0.8, title=dict(text="value"))),
        coloraxis2=dict(colorscale="RdBu_r", cmin=-emax, cmax=emax,
                        colorbar=dict(x=1.0, thickness=12, len=0.8, title=dict(text="error"))))
    for col in (1, 2, 3):
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{'' if col == 1 else col}", showticklabels=False,
                         showgrid=False, row=1, col=col)
        fig.update_xaxes(showticklabels=False, showgrid=False, row=1, col=col)
    return _style(fig, title, height=380, legend=False)


def error_histogram(error, bins: int = 80, title: str | None = None, max_values: int = 200_000) -> go.Figure:
    """Histogram of the quantization error (compressed − original) over the feature map."""
    title = title or "Distribution of the quantization error"
    e = _numpy(error).ravel()
    e = e[np.isfinite(e)]
    if e.size == 0:
        return _empty(title, "No values")
    if e.size > max_values:  # an even subsample keeps the shape and the page light
        e = e[:: math.ceil(e.size / max_values)]
    fig = go.Figure(go.Histogram(x=e, nbinsx=bins, marker_color=FACTO_COLOR, name="error",
                                 hovertemplate="error %{x}<br>%{y} values<extra></extra>"))
    fig.add_vline(x=0, line=dict(color=INK, width=1, dash="dot"))
    fig.update_xaxes(title_text="error (activation units)")
    fig.update_yaxes(title_text="values")
    fig.update_layout(bargap=0.02)
    return _style(fig, title, height=380, legend=False)


def bits_curves(rows: Iterable[Any], selected: int | None = None, title: str | None = None) -> go.Figure:
    """Error (%) and stored size (KB) vs bits 1..8, with the uncompressed fp32 size for reference.

    Args:
        rows: dicts with bits, rel_error (a fraction), bytes, raw_bytes (fp32 size).
        selected: the bits value to highlight.
    """
    title = title or "Error and size vs bits"
    rows = sorted(_rows(rows), key=lambda r: r["bits"])
    if not rows:
        return _empty(title, "No numbers")
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.16)
    x = [r["bits"] for r in rows]
    fig.add_trace(go.Scatter(x=x, y=[100 * r["rel_error"] for r in rows], mode="lines+markers",
                             name="relative error", line=dict(color=FACTO_COLOR, width=3), marker=dict(size=9),
                             hovertemplate="%{x} bits<br>relative error %{y:.2f} %<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=[r["bytes"] / 1e3 for r in rows], mode="lines+markers", name="stored size",
                             line=dict(color=FACTO_COLOR, width=3, dash="dot"), marker=dict(size=9, symbol="square"),
                             hovertemplate="%{x} bits<br>%{y:.1f} KB<extra></extra>"), row=1, col=2)
    raw = rows[0].get("raw_bytes")
    if raw:
        fig.add_trace(go.Scatter(x=[x[0], x[-1]], y=[raw / 1e3] * 2, mode="lines", name="fp32 size",
                                 line=dict(color=BASELINE_COLOR, width=2, dash="dash"),
                                 hovertemplate="fp32: %{y:.1f} KB<extra></extra>"), row=1, col=2)
    if selected is not None:
        for col in (1, 2):
            fig.add_vline(x=selected, line=dict(color=INK, width=1, dash="dot"), row=1, col=col)
    fig.update_xaxes(title_text="bits per value", dtick=1)
    fig.update_yaxes(rangemode="tozero")
    fig.update_yaxes(title_text="relative error (%)", row=1, col=1)
    fig.update_yaxes(title_text="stored (KB)", row=1, col=2)
    return _style(fig, title, height=400)


# ----------------------------------------------------------------------------- history

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
        return _empty(title, "Select runs to compare")
    fig = go.Figure()
    for i, run in enumerate(runs):
        rows = [r for r in run.get("rows", []) if r.get("kind") == kind and r.get(key) is not None]
        for v in _variant_order(r["variant"] for r in rows):
            if v == "warmup":
                continue
            style = run_style(i, v)
            s = [r for r in rows if r["variant"] == v]
            y = [r[key] / MB if metric == "act_bytes" else r[key] for r in s]
            fig.add_trace(go.Scatter(
                x=[r["step"] for r in s], y=y, mode="lines+markers" if kind == "eval" else "lines",
                name=f"{run['label']} · {_name(v)}", legendgroup=run["label"],
                line=dict(color=style["color"], width=3 if v == "facto" else 2, dash=style["dash"]),
                marker=dict(size=9, symbol=style["symbol"], color=style["color"],
                            line=dict(color="white", width=1)),
                hovertemplate=f"{run['label']} · {_name(v)}<br>step %{{x}}<br>%{{y:.3f}} {unit}<extra></extra>"))
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(title_text=HISTORY_AXES[metric], rangemode="tozero" if metric != "accuracy" else "normal")
    if not fig.data:
        fig.add_annotation(text="The selected runs have no such rows yet", x=0.5, y=0.5, xref="paper",
                           yref="paper", showarrow=False, font=dict(size=FONT_SIZE, color="#808495"))
    fig = _style(fig, title, height=460)
    fig.update_layout(legend=dict(orientation="v", x=1.02, xanchor="left", y=1, yanchor="top"),
                      margin=dict(t=64, r=24))
    return fig


# ----------------------------------------------------------------------------- method comparison

METHOD_COLORS = {"dense": BASELINE_COLOR, "checkpointing": "#54A24B", "compression only": "#B279A2",
                 "Facto paper": "#E45756", "Facto": FACTO_COLOR}


def methods_figure(rows: Iterable[Any], title: str | None = None) -> go.Figure:
    """Benchmark rows (model, method, saving_pct, accuracy delta vs dense): one colour per method
    family, one symbol per model, labels on the points."""
    rows = _rows(rows)
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
    fig = _style(fig, title or "Methods: memory saved vs accuracy (digits, mean of 3 seeds)", height=560)
    fig.update_layout(legend=dict(orientation="v", x=1.02, xanchor="left", y=1, yanchor="top", font=dict(size=11)),
                      margin=dict(t=60, r=20))
    return fig


# ----------------------------------------------------------------------------- how it works, fit my GPU

FROZEN_COLOR = "#C9CED6"


def layer_stages_figure(story: Any, title: str | None = None) -> go.Figure:
    """The dense conv and its Tucker-2 form as boxes with tensor shapes; the trained factor in orange.

    Args:
        story: a `facto.explain.LayerStory` (or its dict).
    """
    s = _row(story)
    title = title or f"{s['layer']}: dense conv vs its three factors (batch {s['batch']})"
    fig = go.Figure()

    def box(x0, x1, y0, y1, color, text, hover):
        fig.add_shape(type="rect", x0=x0, x1=x1, y0=y0, y1=y1, line=dict(color=INK, width=1),
                      fillcolor=color, layer="below")
        fig.add_trace(go.Scatter(x=[(x0 + x1) / 2], y=[(y0 + y1) / 2], mode="text", text=[text],
                                 hovertext=[hover], hoverinfo="text", showlegend=False,
                                 textfont=dict(size=FONT_SIZE - 1, color=INK)))

    def shape_text(shape) -> str:
        return "×".join(map(str, shape[1:]))

    cout, cin, kh, kw = s["weight_shape"]
    stages = s["stages"]
    # dense row
    box(0.0, 3.0, 2.0, 2.8, _tint(BASELINE_COLOR), f"dense conv {kh}×{kw}: {cin}→{cout} channels",
        f"{s['params_dense']:,} weights, all trained; keeps its full input for backward")
    # factor row
    x = 0.0
    width = 3.0 / len(stages)
    for st in stages:
        color = FACTO_COLOR if st["trains"] else FROZEN_COLOR
        label = f"{st['name']} · {st['kind']}<br>{shape_text(st['in_shape'])} → {shape_text(st['out_shape'])}"
        what = "trains: keeps its input for backward" if st["trains"] else "frozen: keeps nothing"
        box(x + 0.03, x + width - 0.03, 0.6, 1.6, color, label, f"{st['params']:,} weights; {what}")
        x += width
    fig.add_annotation(x=1.5, y=1.85, text=f"Tucker-2, ranks {s['ranks'][0]} (out) and {s['ranks'][1]} (in): "
                                          f"{s['params_facto']:,} weights, reconstruction error "
                                          f"{s['rel_error']:.2f}", showarrow=False)
    fig.add_annotation(x=1.5, y=0.3, text="orange: the trained factor · grey: frozen (stores nothing)",
                       showarrow=False, font=dict(color="#6B7280", size=FONT_SIZE - 2))
    fig.update_xaxes(visible=False, range=[-0.05, 3.05])
    fig.update_yaxes(visible=False, range=[0.1, 3.0])
    return _style(fig, title, 330, legend=False)


def _tint(color: str, amount: float = 0.55) -> str:
    """A lighter shade of a hex colour."""
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    r, g, b = (round(c + (255 - c) * amount) for c in (r, g, b))
    return f"#{r:02X}{g:02X}{b:02X}"


def kept_bytes_bars(story: Any, title: str | None = None) -> go.Figure:
    """What the layer keeps for backward, dense vs Facto, stacked by kind (MB, measured)."""
    s = _row(story)
    title = title or f"Kept for backward by this layer, batch {s['batch']} (MB)"
    kept = [k for k in s["kept"] if k["bytes"]]
    whats = list(dict.fromkeys(k["what"] for k in kept))
    palette = ["#72B7B2", "#B279A2", "#54A24B", "#9D755D", "#EECA3B", "#FF9DA6"]  # kinds, not variants
    fig = go.Figure()
    for i, what in enumerate(whats):
        ys = ["Baseline (dense fp32)", "Facto"]
        xs = [sum(k["bytes"] for k in kept if k["what"] == what and k["source"] == src) / MB
              for src in ("dense", "facto")]
        fig.add_trace(go.Bar(y=ys, x=xs, name=what, orientation="h", marker_color=palette[i % len(palette)],
                             hovertemplate=f"{what}<br>%{{y}}: %{{x:.3f}} MB<extra></extra>"))
    removed = s.get("removed_by_recompute") or 0
    if removed:
        fig.add_trace(go.Bar(y=["Facto"], x=[removed / MB], name="not kept: recomputed in backward",
                             orientation="h", marker=dict(color="rgba(0,0,0,0)", line=dict(color=INK, width=1.5),
                                                          pattern=dict(shape="/")),
                             hovertemplate="recompute removes %{x:.3f} MB<extra></extra>"))
    fig.update_xaxes(title_text="MB")
    _style(fig, title, 470)
    fig.update_layout(barmode="stack", margin=dict(t=64, b=150), yaxis=dict(automargin=True),
                      legend=dict(orientation="h", x=0, xanchor="left", y=-0.22, yanchor="top"))
    return fig


def rank_curve_figure(points: Iterable[Any], selected: str | None = None, title: str | None = None) -> go.Figure:
    """Reconstruction error and stored bytes of one layer vs rank (from `facto.explain.rank_curve`)."""
    pts = _rows(points)
    title = title or "Rank: reconstruction error vs what the layer keeps"
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    x = [p["rank"] for p in pts]
    fig.add_trace(go.Scatter(x=x, y=[p["rel_error"] for p in pts], name="reconstruction error", mode="lines+markers",
                             line=dict(color=INK, width=2),
                             hovertemplate="rank %{x}<br>error %{y:.3f}<extra></extra>"), secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=[p["stored_bytes"] / MB for p in pts], name="Facto keeps (MB)",
                             mode="lines+markers", line=dict(color=FACTO_COLOR, width=3),
                             customdata=[p["params"] for p in pts],
                             hovertemplate="rank %{x}<br>%{y:.3f} MB kept<br>%{customdata:,} weights<extra></extra>"),
                  secondary_y=True)
    if selected in x:
        fig.add_vline(x=x.index(selected), line=dict(color=FACTO_COLOR, dash="dot"))
    fig.update_xaxes(title_text="rank", type="category")
    fig.update_yaxes(title_text="‖W − W_f‖ / ‖W‖", rangemode="tozero", secondary_y=False)
    fig.update_yaxes(title_text="MB kept", rangemode="tozero", secondary_y=True)
    return _style(fig, title, 360)


PLAN_COLORS = {"weights": "#72B7B2", "gradients": "#54A24B", "optimizer state": "#EECA3B",
               "activations": "#B279A2", "transients": "#E45756", "reserve": "#BAB0AC"}  # not blue/orange:
# those mean baseline and Facto everywhere else


def plan_bars(data: Mapping, title: str | None = None) -> go.Figure:
    """Fit my GPU: a stacked bar per variant at its largest batch, and the budget as a line.

    Args:
        data: `facto.plan.chart_data(result)`.
    """
    title = title or "What fills the budget at each variant's largest batch (MB)"
    names = data.get("names") or data["variants"]
    labels = [f"{n}<br><b>batch {b}</b>" for n, b in zip(names, data["max_batch"])]
    fig = go.Figure()
    for component in data["components"]:
        fig.add_trace(go.Bar(x=labels, y=data["series"][component], name=component,
                             marker_color=PLAN_COLORS.get(component, "#9D9D9D"), customdata=data["variants"],
                             hovertemplate=f"%{{customdata}}<br>{component}: %{{y:,.0f}} MB<extra></extra>"))
    fig.add_hline(y=data["budget"], line=dict(color=INK, dash="dash", width=2),
                  annotation_text=f"budget {data['budget']:,.0f} MB", annotation_position="top left")
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title_text="MB", range=[0, data["budget"] * 1.12])
    return _style(fig, title, 460)


def cuda_memory_curves(steps: Iterable[Any], title: str | None = None) -> go.Figure:
    """What the GPU holds per step (allocated after the step, and the step's peak) beside what is stored.

    Only steps measured on CUDA carry `cuda_allocated` / `peak_cuda`; without them the figure says so.
    """
    title = title or "GPU memory per step: stored vs what the allocator holds (MB)"
    steps = [r for r in _rows(steps) if r.get("variant") != "warmup"]
    if not any(r.get("peak_cuda") is not None for r in steps):
        return _empty(title, "Measured on CUDA only: this run is on another device")
    fig = go.Figure()
    for v in _variant_order(r["variant"] for r in steps):
        s = [r for r in steps if r["variant"] == v]
        color, name, x = _color(v), _name(v), [r["step"] for r in s]
        fig.add_trace(go.Scatter(x=x, y=[_mb(r.get("peak_cuda")) for r in s], name=f"{name} · step peak",
                                 mode="lines", line=dict(color=color, width=3), legendgroup=v,
                                 hovertemplate=f"{name} peak<br>step %{{x}}<br>%{{y:.1f}} MB<extra></extra>"))
        fig.add_trace(go.Scatter(x=x, y=[_mb(r.get("cuda_allocated")) for r in s], name=f"{name} · held after step",
                                 mode="lines", line=dict(color=color, width=2, dash="dot"), legendgroup=v,
                                 hovertemplate=f"{name} allocated<br>step %{{x}}<br>%{{y:.1f}} MB<extra></extra>"))
        fig.add_trace(go.Scatter(x=x, y=[_mb(r.get("act_bytes")) for r in s], name=f"{name} · stored for backward",
                                 mode="lines", line=dict(color=color, width=1.5, dash="dash"), legendgroup=v,
                                 hovertemplate=f"{name} stored<br>step %{{x}}<br>%{{y:.2f}} MB<extra></extra>"))
    fig.update_yaxes(title_text="MB", rangemode="tozero")
    fig.update_xaxes(title_text="training step")
    return _style(fig, title)
