"""Per-layer bars of the Layers page: bytes stored for backward, parameters before and after."""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from .style import (
    BASELINE_COLOR,
    FACTO_COLOR,
    FONT_SIZE,
    WIDE,
    apply_style,
    as_rows,
    empty_figure,
    to_mb,
    variant_color,
    variant_name,
    variant_order,
)


def layer_bytes_bars(layer_bytes: Mapping[str, Mapping[str, int]], layer_types: Mapping[str, str] | None = None,
                     title: str | None = None) -> go.Figure:
    """Stored bytes per layer for one batch, baseline vs Facto (grouped bars, MB).

    Args:
        layer_bytes: {variant: {layer name: bytes}} as `facto.engine.train.layer_bytes` gives per variant.
        layer_types: optional {layer name: module type} shown next to the name (in the hover text only
            when the bars are horizontal: a long model's names stay short enough for half the page).
    """
    title = title or "Stored per layer (one batch)"
    variants = variant_order(v for v in layer_bytes if v != "warmup")
    if not variants or not any(layer_bytes[v] for v in variants):
        return empty_figure(title, "No per-layer numbers yet")
    layers = _merge_order([list(layer_bytes[v]) for v in variants])
    types = layer_types or {}
    full = [f"{name} · {types[name]}" if types.get(name) else name for name in layers]
    horizontal = len(layers) > 20
    labels = layers if horizontal else full
    fig = go.Figure()
    for v in variants:
        values = [to_mb(layer_bytes[v].get(name, 0)) for name in layers]
        total = sum(values) or 1.0
        share = [100 * b / total for b in values]
        bar = dict(name=variant_name(v), marker_color=variant_color(v), customdata=list(zip(share, full)),
                   hovertemplate=f"{variant_name(v)}<br>%{{customdata[1]}}<br>"
                                 f"%{{{'x' if horizontal else 'y'}:.3f}} MB (%{{customdata[0]:.1f}} % of total)"
                                 "<extra></extra>")
        if horizontal:
            fig.add_trace(go.Bar(y=labels, x=values, orientation="h", **bar))
        else:
            fig.add_trace(go.Bar(x=labels, y=values, **bar))
    fig.update_layout(barmode="group", bargap=0.2)
    if horizontal:  # long layer names (resnet18's layer2.0.downsample.0): the margin grows to fit them
        fig.update_yaxes(autorange="reversed", tickfont=dict(size=FONT_SIZE - 3), automargin=True)
        fig.update_xaxes(title_text="MB", automargin=True)
        return apply_style(fig, title, height=max(420, 120 + 22 * len(layers)))
    fig.update_yaxes(title_text="MB", rangemode="tozero", automargin=True)
    fig.update_xaxes(tickangle=-40, tickfont=dict(size=FONT_SIZE - 3), automargin=True)
    fig = apply_style(fig, title, height=480)
    fig.update_layout(margin=dict(b=130))
    return fig


def params_bars(report: Iterable[Any], title: str | None = None) -> go.Figure:
    """Parameters per conv/linear layer before and after factorization (from `describe` rows)."""
    title = title or "Parameters per layer: dense vs factorized"
    rows = as_rows(report)
    if not rows:
        return empty_figure(title, "No conv or linear layers", width=WIDE)
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
    return apply_style(fig, title, height=440 if len(rows) <= 8 else 520, width=WIDE)


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
