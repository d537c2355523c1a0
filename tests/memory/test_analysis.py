"""facto.memory.analysis: the Layers page's numbers and explanations, the Compression page's helpers."""
from __future__ import annotations

import torch

from facto.config import RunConfig
from facto.memory.analysis import analyse_layers, bits_table, compression_sample, feature_maps, input_sources


def test_input_sources_follow_the_data_through_in_place_layers():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                              torch.nn.ReLU(inplace=True), torch.nn.Conv2d(4, 4, 1), torch.nn.Flatten())
    before = net[1].running_mean.clone()
    sources = input_sources(net, torch.randn(2, 1, 6, 6))
    assert sources == {"1": "0", "2": "1", "3": "2", "4": "3"}
    assert torch.equal(net[1].running_mean, before)


def test_increases_are_explained_from_the_data():
    """Without recompute, simple_cnn's pools and factorized convs store more in Facto: the ReLU
    before them keeps a 1-bit mask, so they keep their own input."""
    analysis = analyse_layers(RunConfig(recompute=False, batch_size=8))
    increases = analysis.increases()
    assert {(i.dense_type, i.source_dense_type) for i in increases} == {("MaxPool2d", "ReLU"), ("Conv2d", "ReLU")}
    rows = {n: (d, f) for n, d, f in analysis.rows()}
    for inc in increases:
        assert inc.extra > 0 and all(rows[n][1] > rows[n][0] for n in inc.layers)
        assert inc.net < 0 and round(inc.source_bits) == 1
        text = inc.text()
        assert inc.dense_type in text and "ReLU → MaskReLU" in text and "1 bit per value" in text
        assert "less than in the baseline" in text
    assert all(f <= d for n, d, f in analysis.rows()
               if not any(n in i.layers for i in increases))  # every other row stores less (or the same)
    labels = analysis.type_labels()
    assert labels["features.2"] == "ReLU → MaskReLU" and labels["classifier"] == "Linear"
    assert [n for n, _, _ in analysis.rows()][:4] == ["features.0", "features.1", "features.2", "features.3"]


def test_feature_maps_and_compression_sample():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                              torch.nn.ReLU(inplace=True), torch.nn.Flatten(), torch.nn.Linear(256, 2))
    before = net[1].running_mean.clone()
    maps = feature_maps(net, torch.randn(2, 1, 8, 8))
    assert list(maps) == ["0", "1", "2"]  # 4-D outputs only
    assert (maps["1"] < 0).any()  # not overwritten by the in-place ReLU that follows
    assert torch.equal(net[1].running_mean, before)
    s = compression_sample(maps["1"], 8, 16, stochastic=False)
    assert s["rel_error"] < 0.01 and s["compressed"].shape == maps["1"].shape


def test_bits_table_error_shrinks_and_size_grows_with_bits():
    rows = bits_table(torch.randn(4, 8, 8, 8), block=64)
    assert [r["bits"] for r in rows] == list(range(1, 9))
    assert rows[0]["rel_error"] > rows[-1]["rel_error"] and rows[0]["bytes"] < rows[-1]["bytes"]
    assert all(r["bytes"] < r["raw_bytes"] for r in rows)
