"""Colours, names and the common look every figure shares, plus the small helpers the builders use.

The colour rule lives here: baseline blue, Facto orange, in every chart.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import plotly.graph_objects as go

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
FONT_SIZE = 14


def as_row(item: Any) -> dict:
    """A plain dict from a dict or a dataclass instance (events, sweep points, reports)."""
    if isinstance(item, Mapping):
        return dict(item)
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return dataclasses.asdict(item)
    raise TypeError(f"expected a dict or a dataclass instance, got {type(item).__name__}")


def as_rows(items: Iterable[Any] | None) -> list[dict]:
    return [as_row(i) for i in (items or [])]


def variant_order(variants: Iterable[str]) -> list[str]:
    known = ["warmup", "baseline", "facto"]
    present = list(dict.fromkeys(variants))
    return [v for v in known if v in present] + [v for v in present if v not in known]


def variant_color(variant: str) -> str:
    return COLORS.get(variant, INK)


def variant_name(variant: str) -> str:
    return NAMES.get(variant, variant)


GRID = "#EBF0F8"  # plotly_white's grid, set by hand: applying a template costs ~10 ms a figure


def apply_style(fig: go.Figure, title: str, height: int = 420, legend: bool = True,
                legend_rows: int = 2) -> go.Figure:
    """Common look: white background, light grid, readable fonts, title top-left, legend above.

    `legend_rows`: lines the legend may take in a half-width chart; the top margin leaves room
    for them between the title and the plot.
    """
    fig.update_layout(
        template="none",
        paper_bgcolor="white",
        plot_bgcolor="white",
        title=dict(text=title, x=0.01, xanchor="left", y=0.98, yanchor="top", yref="container",
                   font=dict(size=FONT_SIZE + 3)),
        font=dict(size=FONT_SIZE, color=INK),
        height=height,
        margin=dict(l=64, r=24, t=56 + 20 * legend_rows if legend else 64, b=56),
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


def empty_figure(title: str, message: str, height: int = 420) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=FONT_SIZE + 1, color="#808495"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return apply_style(fig, title, height, legend=False)


def to_mb(value: float | None) -> float | None:
    return None if value is None else value / MB


def fmt_bits(bits) -> str:
    return "fp32" if bits is None else f"{bits}-bit"


def config_label(config: Mapping | None, compact: bool = False) -> str:
    """One readable line for a run's settings: model/dataset, rank, update, bits, epochs.

    compact: the short form of tables ('simple_cnn · digits · rank 0.5 · 4 bits · core · ...').
    """
    if not config:
        return ""
    c = as_row(config)
    parts = ([str(c.get("model", "?")), str(c.get("dataset", "?"))] if compact
             else [f"{c.get('model', '?')} on {c.get('dataset', '?')}"])
    if "rank" in c:
        parts.append(f"rank {c['rank']}")
    if c.get("update"):
        parts.append(str(c["update"]) if compact else f"update {c['update']}")
    if "bits" in c:
        parts.append(fmt_bits(c.get("bits")))
    if c.get("recompute"):
        parts.append("recompute" if compact else "recompute BN")
    if c.get("epochs"):
        parts.append(f"{c['epochs']} ep")
    if c.get("max_train"):
        parts.append(f"{c['max_train']:,} imgs" if compact else f"{c['max_train']} train imgs")
    return " · ".join(parts)
