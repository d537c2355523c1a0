"""Layers and How it works: each factorized layer's spectrum, the chosen weights vs fresh ones, with the
rank marked and the energy that rank keeps."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .style import INK, WIDE, apply_style, empty_figure

FRESH_SPECTRUM_COLOR = "#9D9D9D"  # grey: fresh weights (not a variant's colour)
MODES = (("out", "output channels", "solid"), ("inp", "input channels", "dot"))


def spectrum_figure(spectra: Sequence[Any], fresh: Sequence[Any] = (), title: str | None = None,
                    columns: int = 3, label: str = "trained") -> go.Figure:
    """Per layer, the singular values of both unfoldings (normalized by the largest), `label` weights in
    dark and fresh ones in grey, output channels solid and input channels dotted; a marker on each
    curve at the chosen rank, and the energy kept in each panel's title and in the hover text.

    Args:
        spectra: `facto.method.spectrum.LayerSpectrum` rows of the chosen weights.
        fresh: the same layers' rows for fresh weights (optional; matched by layer name).
        columns: panels per row.
    """
    title = title or "Spectrum per layer: singular values of both unfoldings, rank marked"
    if not spectra:
        return empty_figure(title, "No factorized layer", width=WIDE)
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise ValueError(f"columns={columns!r} is not allowed: use an integer >= 1")
    fresh_by_name = {f.name: f for f in fresh}
    cols = min(columns, len(spectra))
    rows = math.ceil(len(spectra) / cols)
    heads = []
    for s in spectra:
        f = fresh_by_name.get(s.name)
        heads.append(f"{s.name}: keeps {100 * s.energy_kept:.0f} %"
                     + ("" if f is None else f" (fresh {100 * f.energy_kept:.0f} %)"))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=heads, horizontal_spacing=0.06,
                        vertical_spacing=min(0.12, 0.5 / rows))
    for i, s in enumerate(spectra):
        row, col = i // cols + 1, i % cols + 1
        sources = [(label, s, INK)]
        if s.name in fresh_by_name:
            sources.append(("fresh", fresh_by_name[s.name], FRESH_SPECTRUM_COLOR))
        for who, layer, color in sources:
            for attr, words, dash in MODES:
                mode = getattr(layer, attr)
                y = mode.normalized
                x = list(range(1, len(y) + 1))
                name = f"{who}, {words}"
                hover = (f"{s.name} · {who} · {words}<br>value %{{x}}: %{{y:.3f}} of the largest<br>"
                         f"rank {mode.rank} keeps {100 * mode.energy_kept:.1f} % of this unfolding's energy"
                         "<extra></extra>")
                fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name, legendgroup=name, showlegend=i == 0,
                                         line=dict(color=color, dash=dash, width=2), hovertemplate=hover),
                              row=row, col=col)
                fig.add_trace(go.Scatter(x=[mode.rank], y=[y[mode.rank - 1]], mode="markers", legendgroup=name,
                                         name=f"rank ({who}, {words})", showlegend=False,
                                         marker=dict(color=color, size=9, symbol="diamond",
                                                     line=dict(color="white", width=1)),
                                         hovertemplate=(f"{s.name} · {who} · {words}<br>rank {mode.rank}: keeps "
                                                        f"{100 * mode.energy_kept:.1f} % of the energy"
                                                        "<extra></extra>")),
                              row=row, col=col)
    fig.update_yaxes(range=[0, 1.05])
    fig.update_xaxes(rangemode="tozero")
    fig.update_xaxes(title_text="singular value #", row=rows)
    fig.update_yaxes(title_text="σ / σ₁", col=1)
    return apply_style(fig, title, height=200 + 190 * rows, width=WIDE)
