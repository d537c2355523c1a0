"""facto.memory.explain: one conv layer, dense vs Facto, measured (the "How it works" page's numbers)."""
from __future__ import annotations

import pytest
import torch

from facto.config import RunConfig
from facto.engine.build import dense_model
from facto.memory.explain import conv_layers, explain_layer, layer_input, rank_curve

CONFIG = RunConfig(model="resnet20", batch_size=16, bits=4)
LAYER = "layer2.0.conv1"  # 16 -> 32 channels, 3x3, stride 2


def test_the_layer_list_holds_the_convs_tucker2_factorizes():
    names = [n for n, _ in conv_layers(dense_model(CONFIG, 10, 1))]
    assert LAYER in names and "conv1" not in names  # the stem on the image stays dense
    assert all("shortcut" not in n for n in names)  # 1x1 shortcuts are SVD, not Tucker-2


def test_stages_shapes_and_what_each_variant_keeps():
    story = explain_layer(CONFIG, LAYER)
    first, core, last = story.stages
    assert first.in_shape == (16, 16, 32, 32) and first.out_shape[1] == story.ranks[1]
    assert core.out_shape == (16, story.ranks[0], 16, 16) and last.out_shape == (16, 32, 16, 16)
    assert [s.trains for s in story.stages] == [False, True, False]
    dense = {k.what: k for k in story.kept if k.source == "dense"}
    facto = {k.what: k for k in story.kept if k.source == "facto"}
    assert dense["the conv's input (for its weight gradient)"].bytes == 16 * 16 * 32 * 32 * 4
    trained = facto["input of the core factor (the trained one)"]
    assert trained.shape == (16, story.ranks[1], 32, 32) and trained.stored_as == "Packed"
    assert trained.bytes < trained.raw_bytes / 6  # 4 bits + block metadata
    assert facto["1-bit ReLU mask (which outputs were positive)"].bytes == 16 * 32 * 16 * 16 // 8
    assert "BatchNorm's input (full width)" not in facto  # recomputed, not kept
    assert story.removed_by_recompute > 0 and story.total("facto") < story.total("dense") / 10


def test_without_recompute_facto_keeps_batchnorms_input_compressed():
    story = explain_layer(CONFIG.replace(recompute=False), LAYER)
    kept = {k.what for k in story.kept if k.source == "facto"}
    assert "BatchNorm's input (full width)" in kept and story.removed_by_recompute == 0


def test_rank_curve_error_falls_as_params_and_bytes_rise():
    points = rank_curve(CONFIG, LAYER, [0.125, 0.5, 1.0])
    errors, params, stored = ([p.rel_error for p in points], [p.params for p in points],
                              [p.stored_bytes for p in points])
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-5  # full rank: exact
    assert params == sorted(params) and stored == sorted(stored)


def test_a_real_feature_map_reaches_the_layer():
    model = dense_model(CONFIG, 10, 1)
    x = torch.randn(2, 1, 32, 32)
    fmap = layer_input(model, LAYER, x)
    assert fmap.shape == (2, 16, 32, 32) and (fmap >= 0).all()  # after a ReLU


def test_bad_layer_names_the_allowed_ones():
    with pytest.raises(ValueError, match="layer='fc'.*layer1.0.conv1"):
        explain_layer(CONFIG, "fc")


def test_the_layer_is_explained_on_the_weights_the_config_starts_from(tmp_path):
    config = RunConfig(rank=0.5, batch_size=4)
    model = dense_model(config, 10, 1)
    layer = conv_layers(model)[1][0]
    conv = model.get_submodule(layer)
    out_ch, in_ch = conv.weight.shape[:2]
    g = torch.Generator().manual_seed(1)
    core = torch.randn(out_ch // 2, in_ch // 2, 3, 3, generator=g)  # a weight of Tucker ranks (half, half)
    u_out = torch.linalg.qr(torch.randn(out_ch, out_ch // 2, generator=g))[0]
    u_in = torch.linalg.qr(torch.randn(in_ch, in_ch // 2, generator=g))[0]
    state = model.state_dict()
    state[layer + ".weight"] = torch.einsum("or,rshw,is->oihw", u_out, core, u_in)
    path = tmp_path / "low_rank.pt"
    torch.save(state, path)
    fresh = explain_layer(config, layer)
    chosen = explain_layer(config.replace(init=str(path)), layer)
    assert fresh.rel_error > 0.3 and chosen.rel_error < 1e-5  # rank 0.5 holds that weight exactly
