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
TITLE_SIZE = FONT_SIZE + 3
LEGEND_SIZE = FONT_SIZE - 1
# Streamlit's own typeface (the app bundles it as "Source Sans"): a title is as wide in every
# browser as where it was measured; elsewhere (the CLI's HTML files) a narrow system sans-serif.
FONT_FAMILY = '"Source Sans", "Source Sans Pro", "Open Sans", Arial, sans-serif'
EM = 0.46  # an average character's width as a fraction of the font size (Source Sans, Arial: a little over)
# The narrowest a chart is drawn (pixels): a 1024x768 window with the sidebar open gives a chart
# across the page about 560 px, one in half of it about 270 px (History's 2/5 column: 220 px, where
# its one chart has a title that wraps short enough).
WIDE = 560
HALF = 270
TITLE_TOP = 8  # pixels above the title's first line
TITLE_LINE = 22  # pixels a title line takes (Plotly's line spacing, 1.3 em)


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


def wrap(text: str, chars: int) -> str:
    """`text` broken at spaces into lines of at most `chars` characters (a longer word keeps a line
    of its own), joined with Plotly's <br>; the lines it has already are kept."""
    lines: list[str] = []
    for part in str(text).split("<br>"):
        line = ""
        for word in part.split(" "):
            if line and len(line) + 1 + len(word) > chars:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
    return "<br>".join(lines)


def chars(width: float, size: float) -> int:
    """How many characters of a font `size` px fit in `width` px."""
    return max(8, int(width / (EM * size)))


def apply_style(fig: go.Figure, title: str, height: int = 420, legend: bool = True, width: int = HALF) -> go.Figure:
    """Common look: white background, light grid, readable fonts, title top-left, legend under it.

    `width`: the narrowest the chart is drawn (WIDE or HALF). The title is wrapped to fit
    it, and so are legend entries and subplot titles (to a panel's width there). The title's lines
    and the legend are placed from the top (container coordinates): the legend starts under the
    title's last line, and Plotly starts the plot under the legend's last row, however many rows it
    wraps into. Subplot titles (the top row's) get their lines of the top margin under the title.
    """
    title = wrap(title, chars(width - 2 * TITLE_TOP, TITLE_SIZE))
    title_bottom = TITLE_TOP + TITLE_LINE * (title.count("<br>") + 1)
    heads = [a for a in fig.layout.annotations if a.yref == "paper" and a.yanchor == "bottom" and (a.y or 0) >= 1]
    for head in heads:
        head.text = wrap(head.text, chars(width / len(heads) - 8, FONT_SIZE))
    head_room = max((19 * (head.text.count("<br>") + 1) + 6 for head in heads), default=0)
    if legend:
        for trace in fig.data:
            if trace.name and trace.showlegend is not False:
                trace.name = wrap(trace.name, chars(width - 56, LEGEND_SIZE))  # less its symbol
    fig.update_layout(
        template="none",
        paper_bgcolor="white",
        plot_bgcolor="white",
        # yanchor "bottom": Plotly puts the first line's baseline at y, with or without more lines
        title=dict(text=title, x=0, xanchor="left", xref="container", pad=dict(l=TITLE_TOP),
                   y=1 - (TITLE_TOP + 0.9 * TITLE_SIZE) / height, yanchor="bottom", yref="container",
                   font=dict(size=TITLE_SIZE)),
        font=dict(size=FONT_SIZE, color=INK, family=FONT_FAMILY),
        height=height,
        margin=dict(l=64, r=24, t=title_bottom + (1.6 * LEGEND_SIZE + 8 if legend else 12) + head_room, b=70),
        hoverlabel=dict(font_size=FONT_SIZE - 1),
        hovermode="closest",
        showlegend=legend,
        legend=dict(orientation="h", x=0, xanchor="left", xref="container", y=1 - (title_bottom + 2) / height,
                    yanchor="top", yref="container", bgcolor="rgba(255,255,255,0)", font=dict(size=LEGEND_SIZE)),
    )
    fig.update_xaxes(gridcolor=GRID, zerolinecolor=GRID, linecolor=GRID, ticks="", automargin=True)
    fig.update_yaxes(gridcolor=GRID, zerolinecolor=GRID, linecolor=GRID, ticks="", automargin=True)
    fig.update_annotations(font_size=FONT_SIZE)  # subplot titles
    return fig


def empty_figure(title: str, message: str, height: int = 420, width: int = HALF) -> go.Figure:
    """A figure with no data: its title and `message` in the middle (`width` as in `apply_style`)."""
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=FONT_SIZE + 1, color="#808495"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return apply_style(fig, title, height, legend=False, width=width)


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
