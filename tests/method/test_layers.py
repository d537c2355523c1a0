"""Factorized layers: exactness at full rank, gradients per update, frozen stages store nothing."""
import contextlib
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import facto
from facto.method.layers import FactoConv2d, FactoLinear, MaskReLU, conv_stage

CONVS = {
    "3x3": dict(in_channels=6, out_channels=10, kernel_size=3, padding=1),
    "stride2-bias": dict(in_channels=6, out_channels=10, kernel_size=3, stride=2, padding=1, bias=True),
    "dilation-nobias": dict(in_channels=6, out_channels=8, kernel_size=3, dilation=2, padding=2, bias=False),
    "5x3-pad": dict(in_channels=5, out_channels=7, kernel_size=(5, 3), padding=(2, 0), stride=(2, 1)),
    "1x1-stride2": dict(in_channels=8, out_channels=12, kernel_size=1, stride=2, bias=False),
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("cfg", CONVS.values(), ids=CONVS.keys())
@pytest.mark.parametrize("update", ["first", "core", "last", "all"])
def test_full_rank_conv_reproduces_output_and_input_grad(cfg, update):
    torch.manual_seed(0)
    conv = nn.Conv2d(**cfg)
    layer = FactoConv2d.from_conv(conv, rank=1.0, update=update)
    x = torch.randn(3, cfg["in_channels"], 11, 11, requires_grad=True)
    y_dense, y_facto = conv(x), layer(x)
    assert y_facto.shape == y_dense.shape
    assert rel(y_facto, y_dense) < 1e-4
    g = torch.randn_like(y_dense)
    (gx_dense,) = torch.autograd.grad(y_dense, x, g)
    (gx_facto,) = torch.autograd.grad(y_facto, x, g)
    assert rel(gx_facto, gx_dense) < 1e-4


def test_full_rank_linear_reproduces_output_and_input_grad():
    torch.manual_seed(0)
    for out_f, in_f in [(7, 19), (19, 7)]:
        linear = nn.Linear(in_f, out_f)
        layer = FactoLinear.from_linear(linear, rank=1.0, update="last")
        x = torch.randn(4, in_f, requires_grad=True)
        assert rel(layer(x), linear(x)) < 1e-4
        (g1,) = torch.autograd.grad(layer(x).sum(), x)
        (g0,) = torch.autograd.grad(linear(x).sum(), x)
        assert rel(g1, g0) < 1e-4


@pytest.mark.parametrize("cfg", [CONVS["stride2-bias"], CONVS["1x1-stride2"]], ids=["3x3", "1x1"])
@pytest.mark.parametrize("update", ["first", "core", "last"])
def test_trainable_factor_and_input_grads_match_all_trainable(cfg, update):
    torch.manual_seed(1)
    layer = FactoConv2d.from_conv(nn.Conv2d(**cfg), rank=0.5, update=update)
    reference = copy.deepcopy(layer)
    reference.set_update("all")
    x = torch.randn(2, cfg["in_channels"], 9, 9, requires_grad=True)
    g = torch.randn_like(layer(x))
    trained = layer.trainable_stage(update)
    params = [getattr(layer, trained)] + ([layer.bias] if layer.bias is not None else [])
    grads = torch.autograd.grad(layer(x), [x, *params], g)
    ref_params = [getattr(reference, trained)] + ([reference.bias] if reference.bias is not None else [])
    ref_grads = torch.autograd.grad(reference(x), [x, *ref_params], g)
    for got, want in zip(grads, ref_grads):
        assert rel(got, want) < 1e-5
    frozen = [n for n in layer.stage_names if n != trained]
    assert all(not getattr(layer, n).requires_grad for n in frozen)


def test_linear_update_grads_match_all_trainable():
    torch.manual_seed(2)
    layer = FactoLinear.from_linear(nn.Linear(12, 9), rank=0.5, update="first")
    reference = copy.deepcopy(layer)
    reference.set_update("all")
    x = torch.randn(5, 12, requires_grad=True)
    for update in ["first", "last"]:
        layer.set_update(update)
        got = torch.autograd.grad(layer(x).sum(), [x, getattr(layer, update)])
        want = torch.autograd.grad(reference(x).sum(), [x, getattr(reference, update)])
        for a, b in zip(got, want):
            assert rel(a, b) < 1e-5


@pytest.mark.parametrize("update", ["first", "core", "last", "all"])
def test_factorized_conv_stores_only_the_trainable_stage_input(update):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1)
    layer = FactoConv2d.from_conv(conv, rank=(0.25), update=update)
    r_out, r_in = layer.ranks
    n, h = 4, 16
    x = torch.randn(n, 16, h, h, requires_grad=True)
    with facto.saved_activations(model=layer) as meter:
        y = layer(x)
    y.sum().backward()
    x_bytes, z1_bytes, z2_bytes = (4 * n * c * hw * hw for c, hw in [(16, h), (r_in, h), (r_out, h // 2)])
    expected = {"first": x_bytes, "core": z1_bytes, "last": z2_bytes,
                "all": x_bytes + z1_bytes + z2_bytes}[update]
    assert meter.bytes == expected
    assert z2_bytes < x_bytes / 4  # the point of update="last"


def test_frozen_stage_saves_nothing_but_pytorch_frozen_conv_saves_its_input():
    w = nn.Parameter(torch.randn(8, 4, 3, 3), requires_grad=False)
    x = torch.randn(2, 4, 10, 10, requires_grad=True)
    with facto.saved_activations() as plain:
        F.conv2d(x * 1, w, padding=1)
    with facto.saved_activations() as frozen:
        y = conv_stage(x * 1, w, padding=(1, 1))
    assert plain.bytes == x.numel() * 4  # the trap: PyTorch keeps the input anyway
    assert frozen.bytes == 0
    (g,) = torch.autograd.grad(y.sum(), x)
    (g_ref,) = torch.autograd.grad(F.conv2d(x, w, padding=1).sum(), x)
    assert rel(g, g_ref) < 1e-6


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("kernels", [True, False])
@pytest.mark.parametrize("cap", [None, 6.0])
def test_mask_relu_matches_relu_and_keeps_one_bit(cap, kernels, inplace):
    """Through the CPU kernels and the PyTorch reference; `inplace` writes over its input, as
    nn.ReLU(inplace=True) does, with the same output, gradient and 1-bit mask."""
    from facto.compress.switches import reference_only

    leaf = (torch.randn(3, 5, 7, 9) * 5).requires_grad_()
    x = leaf * 1.0  # not a leaf: a ReLU may write over it
    ref = F.relu(leaf) if cap is None else F.relu6(leaf)
    with facto.saved_activations() as meter, (contextlib.nullcontext() if kernels else reference_only()):
        y = MaskReLU(cap, inplace)(x)
    assert torch.equal(y, ref)
    assert (y.data_ptr() == x.data_ptr()) is inplace
    g = torch.randn_like(y)
    assert torch.equal(torch.autograd.grad(y, leaf, g)[0], torch.autograd.grad(ref, leaf, g)[0])
    assert meter.bytes == math.ceil(x.numel() / 8)


def test_factorize_keeps_each_relus_inplace_flag():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3),
                          nn.BatchNorm2d(8), nn.ReLU6())
    relus = [m for m in facto.factorize(model, rank=0.5).modules() if isinstance(m, MaskReLU)]
    assert [(r.cap, r.inplace) for r in relus] == [(None, True), (6.0, False)]


def test_set_update_rejects_unknown_value():
    layer = FactoLinear(4, 3, 2)
    with pytest.raises(ValueError, match="'middle'"):
        layer.set_update("middle")


def test_pointwise_bmm_and_conv_paths_agree(monkeypatch):
    """1x1 stages run as bmm on CPU and as conv2d elsewhere (cuDNN): same values, same grads,
    and a factorized layer stores the same bytes either way."""
    import facto.method.layers as layers

    torch.manual_seed(0)
    conv = FactoConv2d.from_conv(nn.Conv2d(16, 24, 3, padding=1), rank=0.5, update="last")
    x = torch.randn(4, 16, 9, 9, requires_grad=True)

    def run():
        with facto.saved_activations(model=conv) as meter:
            y = conv(x)
        grads = torch.autograd.grad(y.square().sum(), [x, conv.last])
        return y.detach(), grads, meter.bytes

    y_bmm, g_bmm, bytes_bmm = run()
    monkeypatch.setattr(layers, "BMM_DEVICES", ())
    y_conv, g_conv, bytes_conv = run()
    assert rel(y_conv, y_bmm) < 1e-5 and all(rel(a, b) < 1e-5 for a, b in zip(g_conv, g_bmm))
    assert bytes_conv == bytes_bmm
