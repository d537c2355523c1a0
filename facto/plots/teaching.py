"""How it works and Fit my GPU: one conv layer dense vs factorized, what it keeps, rank vs error,
and what fills a GPU budget."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .style import BASELINE_COLOR, FACTO_COLOR, FONT_SIZE, INK, MB, WIDE, apply_style, as_row, as_rows

FROZEN_COLOR = "#C9CED6"


def layer_stages_figure(story: Any, title: str | None = None) -> go.Figure:
    """The dense conv and its Tucker-2 form as boxes with tensor shapes; the trained factor in orange.

    Args:
        story: a `facto.memory.explain.LayerStory` (or its dict).
    """
    s = as_row(story)
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
    return apply_style(fig, title, 330, legend=False, width=WIDE)


def _tint(color: str, amount: float = 0.55) -> str:
    """A lighter shade of a hex colour."""
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    r, g, b = (round(c + (255 - c) * amount) for c in (r, g, b))
    return f"#{r:02X}{g:02X}{b:02X}"


def kept_bytes_bars(story: Any, title: str | None = None) -> go.Figure:
    """What the layer keeps for backward, dense vs Facto, stacked by kind (MB, measured)."""
    s = as_row(story)
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
    fig.update_layout(barmode="stack")
    fig.update_yaxes(automargin=True)
    return apply_style(fig, title, 490)


def rank_curve_figure(points: Iterable[Any], selected: str | None = None, title: str | None = None) -> go.Figure:
    """Reconstruction error and stored bytes of one layer vs rank (from `facto.memory.explain.rank_curve`)."""
    pts = as_rows(points)
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
    return apply_style(fig, title, 360)


PLAN_COLORS = {"weights": "#72B7B2", "gradients": "#54A24B", "optimizer state": "#EECA3B",
               "activations": "#B279A2", "transients": "#E45756", "reserve": "#BAB0AC"}  # not blue/orange:
# those mean baseline and Facto everywhere else


def plan_bars(data: Mapping, title: str | None = None) -> go.Figure:
    """Fit my GPU: a stacked bar per variant at its largest batch, and the budget as a line.

    Args:
        data: `facto.memory.plan.chart_data(result)`.
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
    return apply_style(fig, title, 460, width=WIDE)
