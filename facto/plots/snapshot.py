"""A figure drawn as a static SVG image on the server: what the live view shows while a run goes.

Why: Streamlit rebuilds a Plotly chart from scratch whenever its figure changes, and the page
must load the chart library (4.7 MB of JavaScript) before it draws one. For a browser without a
GPU on the machine that also trains (a laptop in a classroom) that was the largest cost of
watching a run. An image of the same figure costs the browser almost nothing to replace. The
interactive chart (hover, zoom) comes back when the run ends.

Draws the part of Plotly the training figures use: scatter traces (lines, markers, dashes,
symbols, gaps), bars (grouped, horizontal or vertical, category axes), subplots stacked by axis
domains, shared axes, fixed or automatic ranges, titles, the legend, line and rectangle shapes,
and text annotations. The figure itself is the same object the interactive chart draws, so
both show the same traces, colours and axes. Hover text is left out.
"""
from __future__ import annotations

import hashlib
import html
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

FONT = "'Source Sans', 'Source Sans Pro', 'Open Sans', Arial, sans-serif"  # as the interactive charts
CHAR_WIDTH = 0.55  # a character's width, as a fraction of the font size (for margins and the legend)
DASHES = {"dash": "6,4", "dot": "2,3", "dashdot": "6,3,2,3", "longdash": "10,4", "longdashdot": "10,3,2,3"}
CLIP = "@clip@"  # the plot's clip path id, replaced by one made from the picture's content
DEFAULT_COLORS = ("#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3")


def figure_svg(fig: go.Figure | Mapping, width: int = 640) -> str:
    """The figure as an SVG document `width` pixels wide (the figure's own height)."""
    spec = fig.to_plotly_json() if isinstance(fig, go.Figure) else dict(fig)
    return _Canvas(list(spec.get("data") or []), dict(spec.get("layout") or {}), width).draw()


# ----------------------------------------------------------------------------- text and numbers

def _text(value: Any) -> list[str]:
    """Plotly's text (a little HTML) as plain lines."""
    lines = re.split(r"<br\s*/?>", str(value or ""), flags=re.IGNORECASE)
    return [html.unescape(re.sub(r"<[^>]+>", "", line)) for line in lines]


def _width(text: str, size: float) -> float:
    return len(text) * size * CHAR_WIDTH


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def nice_ticks(low: float, high: float, count: int) -> list[float]:
    """About `count` round tick values (1, 2 or 5 times a power of ten) within [low, high]."""
    span = high - low
    if not span > 0:
        return [low]
    raw = span / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = min((m * power for m in (1, 2, 5, 10)), key=lambda s: abs(span / s - count))
    first = math.ceil(low / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((high - first) / step + 1e-9) + 1)]


def tick_label(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    text = f"{value:,.{decimals}f}"
    return "0" if text.strip("-0.,") == "" else text.replace("-", "−")


# ----------------------------------------------------------------------------- axes

class _Axis:
    """One axis: its pixel span, its data range and how values map onto it."""

    def __init__(self, name: str, spec: Mapping, start: float, end: float) -> None:
        self.name, self.spec = name, spec
        self.visible = spec.get("visible", True) is not False
        self.start, self.end = start, end  # pixels (for a y axis, start is the bottom)
        self.categories: list[str] = []
        self.low, self.high = 0.0, 1.0

    @property
    def reversed(self) -> bool:
        return self.spec.get("autorange") == "reversed"

    def set_range(self, values: list[float], pad: float, zero: bool) -> None:
        fixed = self.spec.get("range")
        if fixed and len(fixed) == 2 and all(_finite(v) for v in fixed):
            self.low, self.high = float(fixed[0]), float(fixed[1])
            return
        if self.categories:
            self.low, self.high = -0.5, len(self.categories) - 0.5
            return
        values = [v for v in values if _finite(v)]
        zero = zero or self.spec.get("rangemode") == "tozero"  # the range starts at zero, unpadded there
        if zero:
            values.append(0.0)
        if not values:
            self.low, self.high = -1.0, 6.0  # Plotly's empty axis
            return
        low, high = min(values), max(values)
        if high == low:
            low, high = low - 1, high + 1
        margin = (high - low) * pad
        self.low = low if zero and low == 0 else low - margin
        self.high = high if zero and high == 0 else high + margin

    def position(self, value: Any) -> float:
        """A data value's pixel (a category's name on a category axis); NaN when it has none."""
        if self.categories:
            value = self.categories.index(value) if value in self.categories else None
        return self.pixel(value) if _finite(value) else math.nan

    def pixel(self, value: float) -> float:
        """The pixel of a number on this axis (on a category axis, of a slot: category i is i)."""
        share = (value - self.low) / (self.high - self.low)
        if self.reversed:
            share = 1 - share
        return self.start + share * (self.end - self.start)

    def ticks(self, pixels_per_tick: float) -> list[tuple[float, str]]:
        if self.categories:
            return [(self.position(c), c) for c in self.categories]
        values = nice_ticks(self.low, self.high, max(2, int(abs(self.end - self.start) / pixels_per_tick)))
        step = values[1] - values[0] if len(values) > 1 else 1.0
        return [(self.position(v), tick_label(v, step)) for v in values]


# ----------------------------------------------------------------------------- the drawing

class _Canvas:
    def __init__(self, data: list[dict], layout: dict, width: int) -> None:
        self.data, self.layout, self.width = data, layout, width
        self.height = int(layout.get("height") or 450)
        font = layout.get("font") or {}
        self.size, self.ink = float(font.get("size") or 12), font.get("color") or "#444"
        self.parts: list[str] = []
        self.legend_rows: list[list[tuple[float, int, dict, str]]] = []

    # --- layout

    def _axis_specs(self) -> dict[str, dict]:
        names = {k for k in self.layout if re.fullmatch(r"[xy]axis\d*", k)}
        for trace in self.data:
            for letter in "xy":
                ref = trace.get(f"{letter}axis") or letter
                names.add(f"{letter}axis{ref[1:]}")
        names.update(("xaxis", "yaxis"))
        return {n: dict(self.layout.get(n) or {}) for n in sorted(names)}  # sorted: the same picture in every process

    def _margins(self, axes: dict[str, dict]) -> tuple[float, float, float, float]:
        """The figure's margins, the bottom one grown for slanted category labels (Plotly's automargin;
        the left one grows in `_build_axes`, once the y axes' tick labels are known)."""
        m = self.layout.get("margin") or {}
        left, right, top, bottom = (float(m.get(k, d)) for k, d in (("l", 80), ("r", 80), ("t", 100), ("b", 80)))
        for name, spec in axes.items():
            if name.startswith("x") and spec.get("tickangle") and spec.get("visible", True) is not False:
                size = float((spec.get("tickfont") or {}).get("size") or self.size)
                widest = max((_width(s, size) for s in self._category_labels(name)), default=0)
                title = 2.4 * self.size if (spec.get("title") or {}).get("text") else 0
                bottom = max(bottom, widest * abs(math.sin(math.radians(float(spec["tickangle"])))) + 16 + title)
        return left, right, top, bottom

    def _category_labels(self, axis: str) -> list[str]:
        letter, labels = axis[0], []
        ref = letter + axis[5:]
        for trace in self.data:
            if (trace.get(f"{letter}axis") or letter) == ref:
                labels += [v for v in trace.get(letter) or [] if isinstance(v, str)]
        return list(dict.fromkeys(labels))

    def _build_axes(self) -> dict[str, _Axis]:
        specs = self._axis_specs()
        left, right, top, bottom = self._margins(specs)
        self.legend_rows = self._legend_layout(left, self.width - right)
        if self.legend_rows and self._legend_from_top() is not None:  # Plotly starts the plot under its last row
            top = max(top, self._legend_from_top() + self._legend_row_height() * len(self.legend_rows) + 14)
        x0, x1, y0, y1 = left, self.width - right, self.height - bottom, top
        axes = {}
        for name, spec in specs.items():
            d0, d1 = spec.get("domain") or (0, 1)
            if name.startswith("y"):
                axes[name] = _Axis(name, spec, y0 + d0 * (y1 - y0), y0 + d1 * (y1 - y0))
            else:
                axes[name] = _Axis(name, spec, 0, 0)
            axes[name].categories = self._category_labels(name)
        self._fit(axes)
        x0 = max(x0, self._label_room(axes))  # long tick labels push the plot right (Plotly's automargin)
        for name, axis in axes.items():
            if name.startswith("x"):
                d0, d1 = axis.spec.get("domain") or (0, 1)
                axis.start, axis.end = x0 + d0 * (x1 - x0), x0 + d1 * (x1 - x0)
        self.plot = (x0, y1, x1, y0)  # left, top, right, bottom of the whole plotting area
        return axes

    def _label_room(self, axes: dict[str, _Axis]) -> float:
        """Pixels left of the plot that the widest y tick label and the y axis title need, or the
        first slanted x label."""
        room = 0.0
        for name, axis in axes.items():
            if name.startswith("y") and axis.visible and axis.spec.get("showticklabels", True) is not False:
                size = float((axis.spec.get("tickfont") or {}).get("size") or self.size)
                widest = max((_width(text, size) for _, text in axis.ticks(45)), default=0.0)
                title = 1.6 * self.size if (axis.spec.get("title") or {}).get("text") else 0.0
                room = max(room, widest + 12 + title)
            if name.startswith("x") and axis.spec.get("tickangle") and axis.categories and axis.visible:
                size = float((axis.spec.get("tickfont") or {}).get("size") or self.size)
                slant = abs(math.cos(math.radians(float(axis.spec["tickangle"]))))
                room = max(room, _width(axis.categories[0], size) * slant + 4)  # the first slanted label
        return room

    def _fit(self, axes: dict[str, _Axis]) -> None:
        values: dict[str, list[float]] = {n: [] for n in axes}
        pads: dict[str, float] = {n: 0.0 for n in axes}
        zero: dict[str, bool] = {n: False for n in axes}
        for trace in self.data:
            xa, ya = self._trace_axes(trace)
            bar = trace.get("type") == "bar"
            horizontal = trace.get("orientation") == "h"
            values[xa] += [v for v in trace.get("x") or [] if _finite(v)]
            values[ya] += [v for v in trace.get("y") or [] if _finite(v)]
            if bar:
                zero[xa if horizontal else ya] = True
                pads[xa if horizontal else ya] = 0.05
            elif "markers" in _mode(trace):
                pads[xa] = max(pads[xa], 0.04)
                pads[ya] = max(pads[ya], 0.06)
        for name, axis in axes.items():  # shared axes ("matches") take the union of their data
            other = axis.spec.get("matches")
            if other:
                values[name] += values.get(f"{name[0]}axis{other[1:]}", [])
        for name, axis in axes.items():
            axis.set_range(values[name], pads[name], zero[name])
        for name, axis in axes.items():
            other = axis.spec.get("matches")
            target = axes.get(f"{name[0]}axis{other[1:]}") if other else None
            if target is not None:
                target.low, target.high = min(target.low, axis.low), max(target.high, axis.high)
                axis.low, axis.high = target.low, target.high

    @staticmethod
    def _trace_axes(trace: Mapping) -> tuple[str, str]:
        x, y = trace.get("xaxis") or "x", trace.get("yaxis") or "y"
        return f"xaxis{x[1:]}", f"yaxis{y[1:]}"

    # --- pieces

    def _add(self, element: str) -> None:
        self.parts.append(element)

    def _label(self, x: float, y: float, text: str, size: float, color: str | None = None, anchor: str = "start",
               baseline: str = "middle", weight: str = "") -> None:
        bold = ' font-weight="bold"' if weight else ""
        self._add(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size:g}" fill="{color or self.ink}" '
                  f'text-anchor="{anchor}" dominant-baseline="{baseline}"{bold}>{html.escape(text)}</text>')

    def _grid(self, axes: dict[str, _Axis]) -> None:
        for axis in axes.values():
            if not axis.visible:
                continue
            color = axis.spec.get("gridcolor") or "#EEE"
            cross = self._crossing(axes, axis)
            horizontal = axis.name.startswith("y")
            size = float((axis.spec.get("tickfont") or {}).get("size") or self.size)
            show = axis.spec.get("showticklabels", True) is not False
            for pixel, text in axis.ticks(45 if horizontal else 90):
                if not math.isfinite(pixel):
                    continue
                if horizontal:
                    if not axis.categories:
                        self._add(f'<line x1="{cross.start:.1f}" x2="{cross.end:.1f}" y1="{pixel:.1f}" '
                                  f'y2="{pixel:.1f}" stroke="{color}"/>')
                    if show:
                        self._label(cross.start - 6, pixel, text, size, anchor="end")
                else:
                    self._add(f'<line x1="{pixel:.1f}" x2="{pixel:.1f}" y1="{cross.start:.1f}" '
                              f'y2="{cross.end:.1f}" stroke="{color}"/>')
                    if show and axis.spec.get("tickangle"):  # slanted labels end under their tick
                        self._add(f'<text transform="translate({pixel:.1f},{cross.start + 0.8 * size:.1f}) '
                                  f'rotate({float(axis.spec["tickangle"]):g})" font-size="{size:g}" fill="{self.ink}" '
                                  f'text-anchor="end" dominant-baseline="middle">{html.escape(text)}</text>')
                    elif show:
                        self._label(pixel, cross.start + size, text, size, anchor="middle")
            title = _text((axis.spec.get("title") or {}).get("text"))[0]
            if title:
                mid = (axis.start + axis.end) / 2
                if horizontal:
                    widest = max((_width(t, size) for _, t in axis.ticks(45)), default=0)
                    x = self.plot[0] - 12 - widest - 0.4 * self.size
                    self._add(f'<text transform="translate({x:.1f},{mid:.1f}) rotate(-90)" font-size="{self.size:g}" '
                              f'fill="{self.ink}" text-anchor="middle">{html.escape(title)}</text>')
                else:
                    self._label(mid, cross.start + 2.4 * self.size, title, self.size, anchor="middle")

    def _crossing(self, axes: dict[str, _Axis], axis: _Axis) -> _Axis:
        """The axis this one is drawn against (its anchor, else the first of the other letter)."""
        letter = "y" if axis.name.startswith("x") else "x"
        anchor = axis.spec.get("anchor")
        if anchor and anchor != "free":
            found = axes.get(f"{letter}axis{anchor[1:]}")
            if found is not None:
                return found
        return axes[f"{letter}axis"]

    def _scatter(self, trace: Mapping, xa: _Axis, ya: _Axis, color: str) -> None:
        mode = _mode(trace)
        points = [(xa.position(x), ya.position(y)) for x, y in zip(trace.get("x") or [], trace.get("y") or [])]
        self._add(_opacity_group(trace))
        if "lines" in mode:
            stroke = _stroke(trace.get("line") or {}, color)
            run: list[tuple[float, float]] = []
            for point in points + [(math.nan, math.nan)]:
                if all(math.isfinite(v) for v in point):
                    run.append(point)
                    continue
                if len(run) > 1:
                    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in run)
                    self._add(f'<polyline fill="none" {stroke} points="{coords}"/>')
                run = []
        if "markers" in mode:
            marker = trace.get("marker") or {}
            colors = marker.get("color") or color
            sizes = marker.get("size") or 6
            symbols = marker.get("symbol") or "circle"
            edge = marker.get("line") or {}
            for i, (x, y) in enumerate(points):
                if not (math.isfinite(x) and math.isfinite(y)):
                    continue
                fill = colors[i] if isinstance(colors, Sequence) and not isinstance(colors, str) else colors
                size = sizes[i] if isinstance(sizes, Sequence) else sizes
                symbol = symbols[i] if isinstance(symbols, Sequence) and not isinstance(symbols, str) else symbols
                self._add(_marker(str(symbol), x, y, float(size), str(fill), edge.get("color"), edge.get("width")))
        self._add("</g>")

    def _bars(self, axes: dict[str, _Axis]) -> None:
        bars = [t for t in self.data if t.get("type") == "bar" and t.get("visible", True) is True]
        if not bars:
            return
        grouped = self.layout.get("barmode", "group") == "group"
        gap = self.layout.get("bargap")
        band = 1 - (gap if _finite(gap) else 0.2)
        width = band / len(bars) if grouped else band
        for i, trace in enumerate(bars):
            xa, ya = (axes[n] for n in self._trace_axes(trace))
            color = (trace.get("marker") or {}).get("color") or DEFAULT_COLORS[i % len(DEFAULT_COLORS)]
            offset = (-band / 2 + width * (i + 0.5)) if grouped else 0.0
            horizontal = trace.get("orientation") == "h"
            for x, y in zip(trace.get("x") or [], trace.get("y") or []):
                where, value, along, across = (y, x, xa, ya) if horizontal else (x, y, ya, xa)
                if not _finite(value):
                    continue
                slot = across.categories.index(where) if across.categories else where
                if not _finite(slot):
                    continue
                a, b = across.pixel(slot + offset - width / 2), across.pixel(slot + offset + width / 2)
                v0, v1 = along.position(0), along.position(value)
                fill = color[0] if isinstance(color, Sequence) and not isinstance(color, str) else color
                if horizontal:
                    self._rect(min(v0, v1), min(a, b), abs(v1 - v0), abs(b - a), fill)
                else:
                    self._rect(min(a, b), min(v0, v1), abs(b - a), abs(v1 - v0), fill)

    def _rect(self, x: float, y: float, w: float, h: float, fill: str) -> None:
        self._add(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{fill}"/>')

    def _ref(self, axes: dict[str, _Axis], ref: str | None, value: Any, letter: str) -> float:
        """A shape's or annotation's coordinate in pixels ('paper', 'x domain', 'x2' ...)."""
        ref = ref or "paper"
        if ref == "paper":
            left, top, right, bottom = self.plot
            return left + value * (right - left) if letter == "x" else bottom + value * (top - bottom)
        axis = axes.get(f"{letter}axis{ref.split()[0][1:]}")
        if axis is None:
            return math.nan
        if ref.endswith(" domain"):
            return axis.start + value * (axis.end - axis.start)
        return axis.position(value)

    def _shapes(self, axes: dict[str, _Axis]) -> None:
        for shape in self.layout.get("shapes") or []:
            x0, x1 = (self._ref(axes, shape.get("xref"), shape.get(k, 0), "x") for k in ("x0", "x1"))
            y0, y1 = (self._ref(axes, shape.get("yref"), shape.get(k, 0), "y") for k in ("y0", "y1"))
            if not all(math.isfinite(v) for v in (x0, x1, y0, y1)):
                continue
            stroke = _stroke(shape.get("line") or {}, self.ink)
            if shape.get("type") == "rect":
                fill = shape.get("fillcolor") or "none"
                opacity = shape.get("opacity")
                extra = f' fill-opacity="{opacity:g}"' if _finite(opacity) else ""
                self._add(f'<rect x="{min(x0, x1):.1f}" y="{min(y0, y1):.1f}" width="{abs(x1 - x0):.1f}" '
                          f'height="{abs(y1 - y0):.1f}" fill="{fill}"{extra} {stroke}/>')
            else:
                self._add(f'<line x1="{x0:.1f}" y1="{y0:.1f}" x2="{x1:.1f}" y2="{y1:.1f}" {stroke}/>')

    def _annotations(self, axes: dict[str, _Axis]) -> None:
        for note in self.layout.get("annotations") or []:
            x = self._ref(axes, note.get("xref"), note.get("x", 0.5), "x")
            y = self._ref(axes, note.get("yref"), note.get("y", 0.5), "y")
            if not (math.isfinite(x) and math.isfinite(y)):
                continue
            font = note.get("font") or {}
            size, color = float(font.get("size") or self.size), font.get("color") or self.ink
            lines = _text(note.get("text"))
            anchor = {"left": "start", "right": "end"}.get(note.get("xanchor"), "middle")
            height = 1.25 * size * len(lines)
            top = {"top": y, "bottom": y - height}.get(note.get("yanchor"), y - height / 2)
            for i, line in enumerate(lines):
                self._label(x, top + 1.25 * size * (i + 0.5), line, size, color, anchor)

    def _legend_size(self) -> float:
        return float(((self.layout.get("legend") or {}).get("font") or {}).get("size") or self.size)

    def _legend_row_height(self) -> float:
        return 1.5 * self._legend_size()

    def _legend_from_top(self) -> float | None:
        """Pixels from the picture's top to a legend placed from the top of the figure (`yref`
        'container', anchored at its top); None for a legend placed against the plot."""
        legend = self.layout.get("legend") or {}
        if legend.get("yref") != "container" or legend.get("yanchor") != "top" or not _finite(legend.get("y")):
            return None
        return (1 - float(legend["y"])) * self.height

    def _legend_layout(self, left: float, right: float) -> list[list[tuple[float, int, dict, str]]]:
        """The legend's entries in rows that fit between `left` and `right` (the plot's width), each
        (x, trace index, trace, name); [] without a legend."""
        if self.layout.get("showlegend") is False:
            return []
        entries = []
        for i, trace in enumerate(self.data):
            if trace.get("showlegend") is False or not trace.get("name") or trace.get("visible", True) is not True:
                continue
            entries.append((i, trace))
        if not entries or (len(entries) == 1 and self.layout.get("showlegend") is not True):
            return []
        legend = self.layout.get("legend") or {}
        size = self._legend_size()
        start = float(legend.get("x") or 0) * self.width + 4 if legend.get("xref") == "container" else left
        x, rows = start, [[]]
        for i, trace in entries:
            name = " ".join(_text(trace["name"]))  # one line: a picture is wider than the narrowest chart
            need = 34 + _width(name, size) + 14
            if rows[-1] and x + need > start + (right - left) + 10:
                rows.append([])
                x = start
            rows[-1].append((x, i, trace, name))
            x += need
        return rows

    def _legend(self) -> None:
        """The legend's rows: down from its place under the title, or up from the plot's top."""
        rows, size, step = self.legend_rows, self._legend_size(), self._legend_row_height()
        from_top = self._legend_from_top()
        first = (from_top + step / 2 if from_top is not None
                 else self.plot[1] - 6 - 0.9 * size - (len(rows) - 1) * step)
        for r, row in enumerate(rows):
            for x, i, trace, name in row:
                self._legend_symbol(x, first + r * step, i, trace)
                self._label(x + 34, first + r * step, name, size)

    def _legend_symbol(self, x: float, y: float, index: int, trace: Mapping) -> None:
        color = _trace_color(trace, index)
        if trace.get("type") == "bar":
            self._rect(x + 8, y - 6, 14, 12, color)
            return
        mode = _mode(trace)
        self._add(_opacity_group(trace))
        if "lines" in mode:
            self._add(f'<line x1="{x:.1f}" x2="{x + 30:.1f}" y1="{y:.1f}" y2="{y:.1f}" '
                      f'{_stroke(trace.get("line") or {}, color)}/>')
        if "markers" in mode:
            marker = trace.get("marker") or {}
            symbol = marker.get("symbol") or "circle"
            symbol = symbol if isinstance(symbol, str) else "circle"
            edge = marker.get("line") or {}
            self._add(_marker(symbol, x + 15, y, 9.0, color, edge.get("color"), edge.get("width")))
        self._add("</g>")

    def _title(self) -> None:
        title = self.layout.get("title") or {}
        lines = _text(title.get("text"))
        if not lines[0]:
            return
        size = float((title.get("font") or {}).get("size") or self.size * 1.2)
        x = float(title.get("x", 0.5)) * self.width + float((title.get("pad") or {}).get("l") or 0)
        anchor = {"left": "start", "right": "end"}.get(title.get("xanchor"), "middle")
        y = (1 - float(title.get("y", 0.98))) * self.height
        # Plotly: the first line's baseline at y when anchored at the bottom (lines below it), else its top
        middle = y - 0.35 * size if title.get("yanchor") == "bottom" else y + 0.5 * size
        for i, line in enumerate(lines):
            self._label(x, middle + 1.3 * size * i, line, size, anchor=anchor)

    def draw(self) -> str:
        axes = self._build_axes()
        left, top, right, bottom = self.plot
        self._add(f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {self.width} {self.height}" '
                  f'width="{self.width}" height="{self.height}" font-family="{html.escape(FONT)}">')
        self._add(f'<rect width="100%" height="100%" fill="{self.layout.get("paper_bgcolor") or "white"}"/>')
        self._add(f'<clipPath id="{CLIP}"><rect x="{left - 8:.1f}" y="{top - 8:.1f}" width="{right - left + 16:.1f}" '
                  f'height="{bottom - top + 16:.1f}"/></clipPath>')
        self._grid(axes)
        self._add(f'<g class="traces" clip-path="url(#{CLIP})">')
        self._bars(axes)
        for i, trace in enumerate(self.data):
            if trace.get("type", "scatter") == "scatter" and trace.get("visible", True) is True:
                xa, ya = (axes[n] for n in self._trace_axes(trace))
                self._scatter(trace, xa, ya, _trace_color(trace, i))
        self._add("</g>")
        self._shapes(axes)
        self._annotations(axes)
        self._add('<g class="legend">')
        self._legend()
        self._add("</g>")
        self._title()
        self._add("</svg>")
        drawn = "".join(self.parts)
        return drawn.replace(CLIP, "plot-" + hashlib.sha1(drawn.encode()).hexdigest()[:10])


def _mode(trace: Mapping) -> str:
    """A scatter trace's mode; Plotly's default: lines and markers under 20 points, else lines."""
    return trace.get("mode") or ("lines+markers" if len(trace.get("x") or []) < 20 else "lines")


def _opacity_group(trace: Mapping) -> str:
    """The opening tag of a group drawn at the trace's opacity."""
    opacity = trace.get("opacity")
    return f'<g opacity="{opacity:g}">' if _finite(opacity) and opacity < 1 else "<g>"


def _stroke(line: Mapping, color: str) -> str:
    """A line's stroke attributes: its colour (else `color`), width (Plotly's 2) and dash."""
    dash = DASHES.get(line.get("dash") or "")
    return (f'stroke="{line.get("color") or color}" stroke-width="{line.get("width") or 2:g}"'
            + (f' stroke-dasharray="{dash}"' if dash else ""))


def _trace_color(trace: Mapping, index: int) -> str:
    for part in ("line", "marker"):
        color = (trace.get(part) or {}).get("color")
        if isinstance(color, str):
            return color
    return DEFAULT_COLORS[index % len(DEFAULT_COLORS)]


def _marker(symbol: str, x: float, y: float, size: float, fill: str, edge: str | None, edge_width: Any) -> str:
    """One marker: circle, square, diamond, triangle, cross, x or star (Plotly's size is the diameter)."""
    r = size / 2
    open_ = symbol.endswith("-open")
    base = symbol.removesuffix("-open")
    stroke = edge or (fill if open_ else None)
    width = edge_width if _finite(edge_width) else (1.5 if open_ else 0)
    paint = f'fill="{"none" if open_ else fill}"'
    if stroke and width:
        paint += f' stroke="{stroke}" stroke-width="{width:g}"'
    if base == "square":
        return f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{size:.1f}" height="{size:.1f}" {paint}/>'
    shapes = {
        "diamond": [(0, -1.3), (1.3, 0), (0, 1.3), (-1.3, 0)],
        "triangle-up": [(0, -1.2), (1.1, 0.8), (-1.1, 0.8)],
        "triangle-down": [(0, 1.2), (1.1, -0.8), (-1.1, -0.8)],
        "star": [(math.sin(a) * (1.4 if k % 2 == 0 else 0.6), -math.cos(a) * (1.4 if k % 2 == 0 else 0.6))
                 for k, a in enumerate(i * math.pi / 5 for i in range(10))],
        "cross": [(-0.4, -1.2), (0.4, -1.2), (0.4, -0.4), (1.2, -0.4), (1.2, 0.4), (0.4, 0.4), (0.4, 1.2),
                  (-0.4, 1.2), (-0.4, 0.4), (-1.2, 0.4), (-1.2, -0.4), (-0.4, -0.4)],
        "x": [(-1.1, -0.6), (-0.6, -1.1), (0, -0.5), (0.6, -1.1), (1.1, -0.6), (0.5, 0), (1.1, 0.6), (0.6, 1.1),
              (0, 0.5), (-0.6, 1.1), (-1.1, 0.6), (-0.5, 0)],
    }
    if base in shapes:
        coords = " ".join(f"{x + dx * r:.1f},{y + dy * r:.1f}" for dx, dy in shapes[base])
        return f'<polygon points="{coords}" {paint}/>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" {paint}/>'
