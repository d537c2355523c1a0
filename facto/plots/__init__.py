"""Plotly figure builders shared by the Streamlit app, its pages and the CLI's HTML export.

Every builder takes plain data (dicts, dataclass events such as `StepEvent` or `SweepPoint`,
lists of those, numpy arrays or tensors) and returns a `plotly.graph_objects.Figure`.
Colours for the baseline and for Facto are defined once (in `style`), so every chart agrees:
baseline blue, Facto orange.
No Streamlit import: this package is used headless too.

One module per page's figures: `style` (colours, the common look, `config_label`), `training`
(main page), `layers`, `sweeps`, `compression`, `history` (+ the benchmark's methods chart) and
`teaching` (How it works, Fit my GPU). `snapshot` draws any of these figures as a static SVG
picture on the server (the live view's charts). Callers use `from facto import plots; plots.<name>`.
"""
from __future__ import annotations

from .compression import bits_curves, error_histogram, feature_map_images

# the other constants, reachable as plots.<NAME>
from .history import HISTORY_AXES, HISTORY_METRICS, METHOD_COLORS, history_chart, methods_figure, run_style  # noqa: F401
from .layers import layer_bytes_bars, params_bars
from .snapshot import figure_svg
from .spectrum import FRESH_SPECTRUM_COLOR, spectrum_figure  # noqa: F401
from .style import (  # noqa: F401
                       BASELINE_COLOR,
                       COLORS,
                       FACTO_COLOR,
                       FONT_SIZE,
                       GRID,
                       HISTORY_COLOR,
                       INK,
                       LONG_NAMES,
                       MB,
                       NAMES,
                       RUN_DASHES,
                       RUN_SHADES,
                       RUN_SYMBOLS,
                       WARMUP_COLOR,
                       config_label,
)
from .sweeps import (
                       UPDATE_SYMBOLS,  # noqa: F401
                       accuracy_heatmap,
                       pareto_front,
                       sweep_figure,
)
from .teaching import FROZEN_COLOR, PLAN_COLORS, kept_bytes_bars, layer_stages_figure, plan_bars, rank_curve_figure  # noqa: F401
from .training import (  # noqa: F401
                       MARKED_POINTS,
                       WAITING,
                       accuracy_curves,
                       cuda_memory_curves,
                       process_memory_curves,
                       live_point,
                       memory_curves,
                       tradeoff_points,
                       tradeoff_range,
                       tradeoff_scatter,
)

__all__ = [
    "BASELINE_COLOR", "FACTO_COLOR", "COLORS", "NAMES", "MB",
    "config_label", "accuracy_curves", "memory_curves", "live_point", "tradeoff_points", "tradeoff_scatter",
    "tradeoff_range", "layer_bytes_bars", "params_bars", "pareto_front", "sweep_figure", "accuracy_heatmap",
    "feature_map_images", "error_histogram", "bits_curves", "run_style", "history_chart", "methods_figure",
    "layer_stages_figure", "kept_bytes_bars", "rank_curve_figure", "plan_bars", "cuda_memory_curves", "process_memory_curves", "figure_svg",
    "spectrum_figure",
]
