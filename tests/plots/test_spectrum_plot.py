"""facto.plots.spectrum_figure: one panel per layer, both unfoldings, chosen vs fresh, rank marked."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from facto import plots
from facto.method.spectrum import LayerSpectrum, ModeSpectrum, layer_spectra


def row(name: str, values: tuple[float, ...], rank: int, kept: float) -> LayerSpectrum:
    mode = ModeSpectrum(values, rank)
    return LayerSpectrum(name, "Conv2d", "tucker2", (len(values), len(values), 3, 3), "0.5", mode, mode, kept)


def test_panels_traces_rank_markers_and_energy_labels():
    trained = [row("a", (4.0, 2.0, 1.0, 0.0), 2, 0.8), row("b", (3.0, 3.0), 1, 0.4)]
    fresh = [row("a", (1.0, 1.0, 1.0, 1.0), 2, 0.25)]
    fig = plots.spectrum_figure(trained, fresh)
    heads = [a.text.replace("<br>", " ") for a in fig.layout.annotations]
    assert heads == ["a: keeps 80 % (fresh 25 %)", "b: keeps 40 %"]
    lines = [t for t in fig.data if t.mode == "lines"]
    assert len(lines) == 2 * 2 + 2  # a: trained and fresh, both modes; b: trained, both modes
    assert list(lines[0].y) == [1.0, 0.5, 0.25, 0.0]  # normalized by the largest value
    marks = [t for t in fig.data if t.mode == "markers"]
    assert [(m.x[0], m.y[0]) for m in marks[:2]] == [(2, 0.5), (2, 0.5)]  # rank 2 on a's trained curves
    assert "keeps 95.2 %" in marks[0].hovertemplate  # 4² + 2² of 4² + 2² + 1²: 20 / 21
    assert {t.line.color for t in lines} == {plots.INK, plots.FRESH_SPECTRUM_COLOR}


def test_a_real_models_spectra_and_the_empty_and_bad_cases():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 8, 3), nn.Conv2d(8, 6, 3), nn.Flatten(), nn.Linear(6, 2))
    torch.manual_seed(0)
    fig = plots.spectrum_figure(layer_spectra(model, 0.5), columns=1)
    assert len(fig.layout.annotations) == 2 and len(fig.data) == 2 * 2 * 2
    assert "No factorized layer" in plots.spectrum_figure([]).layout.annotations[0].text
    with pytest.raises(ValueError, match="columns=0 is not allowed"):
        plots.spectrum_figure([row("a", (1.0,), 1, 1.0)], columns=0)
