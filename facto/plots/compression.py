"""Compression page: a feature map before and after, the error histogram, error and size vs bits."""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .style import BASELINE_COLOR, FACTO_COLOR, INK, WIDE, apply_style, as_rows, empty_figure


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
    bar = dict(orientation="h", y=-0.04, yanchor="top", thickness=10)  # under the panels
    fig.update_layout(
        coloraxis=dict(colorscale="gray", cmin=lo, cmax=hi,
                       colorbar=dict(bar, x=0.34, xanchor="center", len=0.5, title=dict(text="value", side="right"))),
        coloraxis2=dict(colorscale="RdBu_r", cmin=-emax, cmax=emax,
                        colorbar=dict(bar, x=0.86, xanchor="center", len=0.28, title=dict(text="error", side="right"))))
    for col in (1, 2, 3):
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{'' if col == 1 else col}", showticklabels=False,
                         showgrid=False, row=1, col=col)
        fig.update_xaxes(showticklabels=False, showgrid=False, row=1, col=col)
    return apply_style(fig, title, height=380, legend=False, width=WIDE)


def error_histogram(error, bins: int = 80, title: str | None = None, max_values: int = 200_000) -> go.Figure:
    """Histogram of the quantization error (compressed − original) over the feature map."""
    title = title or "Distribution of the quantization error"
    e = _numpy(error).ravel()
    e = e[np.isfinite(e)]
    if e.size == 0:
        return empty_figure(title, "No values")
    if e.size > max_values:  # an even subsample keeps the shape and the page light
        e = e[:: math.ceil(e.size / max_values)]
    fig = go.Figure(go.Histogram(x=e, nbinsx=bins, marker_color=FACTO_COLOR, name="error",
                                 hovertemplate="error %{x}<br>%{y} values<extra></extra>"))
    fig.add_vline(x=0, line=dict(color=INK, width=1, dash="dot"))
    fig.update_xaxes(title_text="error (activation units)")
    fig.update_yaxes(title_text="values")
    fig.update_layout(bargap=0.02)
    return apply_style(fig, title, height=480, legend=False)  # beside bits_curves


def bits_curves(rows: Iterable[Any], selected: int | None = None, title: str | None = None) -> go.Figure:
    """Error (%) above, stored size (KB) below, vs bits 1..8, with the uncompressed fp32 size for reference.

    Args:
        rows: dicts with bits, rel_error (a fraction), bytes, raw_bytes (fp32 size).
        selected: the bits value to highlight.
    """
    title = title or "Error and size vs bits"
    rows = sorted(as_rows(rows), key=lambda r: r["bits"])
    if not rows:
        return empty_figure(title, "No numbers")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1)  # stacked: fits half the page
    x = [r["bits"] for r in rows]
    fig.add_trace(go.Scatter(x=x, y=[100 * r["rel_error"] for r in rows], mode="lines+markers",
                             name="relative error", line=dict(color=FACTO_COLOR, width=3), marker=dict(size=9),
                             hovertemplate="%{x} bits<br>relative error %{y:.2f} %<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=[r["bytes"] / 1e3 for r in rows], mode="lines+markers", name="stored size",
                             line=dict(color=FACTO_COLOR, width=3, dash="dot"), marker=dict(size=9, symbol="square"),
                             hovertemplate="%{x} bits<br>%{y:.1f} KB<extra></extra>"), row=2, col=1)
    raw = rows[0].get("raw_bytes")
    if raw:
        fig.add_trace(go.Scatter(x=[x[0], x[-1]], y=[raw / 1e3] * 2, mode="lines", name="fp32 size",
                                 line=dict(color=BASELINE_COLOR, width=2, dash="dash"),
                                 hovertemplate="fp32: %{y:.1f} KB<extra></extra>"), row=2, col=1)
    if selected is not None:
        for row in (1, 2):
            fig.add_vline(x=selected, line=dict(color=INK, width=1, dash="dot"), row=row, col=1)
    fig.update_xaxes(dtick=1)
    fig.update_xaxes(title_text="bits per value", row=2, col=1)
    fig.update_yaxes(rangemode="tozero")
    fig.update_yaxes(title_text="relative error (%)", row=1, col=1)
    fig.update_yaxes(title_text="stored (KB)", row=2, col=1)
    return apply_style(fig, title, height=480)
