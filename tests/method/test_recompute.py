"""Recompute instead of store: FactoConvBN, ConvBN and IndexMaxPool2d are exact and store less."""
import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import facto
from facto.engine.models import BasicBlock, create_model
from facto.method.layers import IndexMaxPool2d, MaskReLU
from facto.method.recompute import DEFAULT_BN_STATS, ConvBN, FactoConvBN, fuse_recompute

UPDATES = ["first", "core", "last", "all"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: on busy 2-core machines OpenMP spinning made them 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_cnn() -> nn.Module:
    """Conv-BN-ReLU blocks (bias, stride, 1x1, momentum=None, affine=False) and max-pools."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=True), nn.BatchNorm2d(8, momentum=None), nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 12, 1, stride=2, bias=False), nn.BatchNorm2d(12, affine=False), nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5))


def resnet20() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet20", num_classes=10, in_channels=3)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).double().norm() / b.double().norm().clamp_min(1e-30))


def train_steps(model: nn.Module, xs: list[torch.Tensor]):
    """Two training forward/backward passes (grads accumulate); everything worth comparing."""
    model.train()
    outs, input_grads = [], []
    for x in xs:
        x = x.clone().requires_grad_()
        out = model(x)
        (out.square().mean() + out[:, 0].sum()).backward()
        outs.append(out.detach())
        input_grads.append(x.grad)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    return outs, input_grads, grads, [b.clone() for b in model.buffers()]


def assert_same_training(unfused: nn.Module, fused: nn.Module, xs: list[torch.Tensor]):
    o0, gx0, gp0, b0 = train_steps(unfused, xs)
    o1, gx1, gp1, b1 = train_steps(fused, xs)
    for a, b in zip(o1, o0):
        assert rel(a, b) < 1e-5
    for a, b in zip(gx1, gx0):
        assert rel(a, b) < 1e-5
    assert [g.shape for g in gp1] == [g.shape for g in gp0]
    total = float(torch.cat([g.flatten() for g in gp0]).norm())
    for a, b in zip(gp1, gp0):
        # a bias right before BatchNorm has gradient 0 up to rounding: hence the floor
        assert float((a - b).norm()) <= 1e-5 * (float(b.norm()) + 0.01 * total)
    assert len(b1) == len(b0)
    for a, b in zip(b1, b0):
        assert a.dtype == b.dtype and rel(a.double(), b.double()) < 1e-5  # running stats, counts
    with torch.no_grad():
        unfused.eval(), fused.eval()
        assert rel(fused(xs[0]), unfused(xs[0])) < 1e-5


@pytest.mark.parametrize("update", UPDATES)
def test_fused_small_cnn_trains_exactly_like_unfused(update):
    unfused = facto.factorize(small_cnn(), rank=0.5, update=update, skip_first_conv=False, recompute=False)
    fused = fuse_recompute(copy.deepcopy(unfused))
    assert sum(isinstance(m, FactoConvBN) for m in fused.modules()) == 3
    assert sum(isinstance(m, IndexMaxPool2d) for m in fused.modules()) == 2
    torch.manual_seed(1)
    assert_same_training(unfused, fused, [torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)])


@pytest.mark.parametrize("update", UPDATES)
def test_fused_basic_block_trains_exactly_like_unfused(update):
    torch.manual_seed(0)
    unfused = facto.factorize(BasicBlock(16, 32, stride=2), rank=0.5, update=update,
                              skip_first_conv=False, recompute=False)
    fused = fuse_recompute(copy.deepcopy(unfused))
    assert fused.facto_fusion.fused == ["conv1+bn1", "conv2+bn2", "shortcut.0+shortcut.1"]
    torch.manual_seed(1)
    assert_same_training(unfused, fused, [torch.randn(4, 16, 12, 12), torch.randn(4, 16, 12, 12)])


def test_factorize_recompute_resnet20_trains_exactly_like_unfused():
    model = resnet20()
    unfused = facto.factorize(model, rank=0.5, update="last", recompute=False)
    fused = facto.factorize(model, rank=0.5, update="last", recompute=True)
    assert len(fused.facto_fusion.fused) == 21 and fused.facto_fusion.not_fused == {}
    assert "layer2.0.shortcut.0+layer2.0.shortcut.1" in fused.facto_fusion.fused
    assert fused.facto_fusion.fused[0] == "conv1+bn1" and isinstance(fused.conv1, ConvBN)  # dense stem
    assert isinstance(fused.layer1[0].bn1, nn.Identity) and not hasattr(model, "facto_fusion")
    torch.manual_seed(1)
    assert_same_training(unfused, fused, [torch.randn(4, 3, 16, 16)])


def test_set_update_after_fusion_moves_the_stored_stage():
    unfused = facto.factorize(small_cnn(), rank=0.5, update="last", skip_first_conv=False, recompute=False)
    fused = fuse_recompute(copy.deepcopy(unfused))
    for model in (unfused, fused):
        for m in model.modules():
            if isinstance(m, facto.FactoConv2d):
                m.set_update("core")
    torch.manual_seed(2)
    assert_same_training(unfused, fused, [torch.randn(4, 3, 16, 16)])


def _shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple]:
    shapes, handles = {}, []
    for name, m in model.named_modules():
        handles.append(m.register_forward_hook(
            lambda m, a, o, name=name: shapes.__setitem__(name, (tuple(a[0].shape), tuple(o.shape)))))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return shapes


def _metered_backward(unfused: nn.Module, fused: nn.Module, x: torch.Tensor):
    """Forward and backward of each model under the meter: (unfused's meter, fused's meter). The
    fused model's recomputation in backward is not counted again."""
    with facto.saved_activations(model=unfused) as before:
        unfused(x).sum().backward()
    with facto.saved_activations(model=fused) as meter:
        fused(x).sum().backward()
        after_backward = meter.bytes
    assert after_backward == meter.bytes
    return before, meter


def _stored_input(m: FactoConvBN, shape_in: tuple, shape_out: tuple) -> int:
    """Bytes of the trainable stage's input (float32)."""
    n, cin, h, w = shape_in
    _, _, ho, wo = shape_out
    r_out, r_in = m.ranks
    update = m.trainable_stage(m.update)
    if update in (None, "first"):
        return 4 * n * cin * h * w
    if update == "core":
        return 4 * n * r_in * h * w
    return 4 * n * r_out * ho * wo  # last: z2 (3x3) or z (1x1), both after the stride


@pytest.mark.parametrize("update", UPDATES)
def test_fused_block_stores_exactly_s_stats_and_mask(update):
    unfused = facto.factorize(small_cnn(), rank=0.5, update=update, skip_first_conv=False, recompute=False)
    fused = fuse_recompute(copy.deepcopy(unfused))
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    shapes = _shapes(fused, x)
    before, meter = _metered_backward(unfused, fused, x)
    expected = {}
    for name, m in fused.named_modules():
        if isinstance(m, FactoConvBN):
            expected[name] = _stored_input(m, *shapes[name]) + 2 * m.out_channels * 4
        elif isinstance(m, MaskReLU):
            expected[name] = math.ceil(math.prod(shapes[name][1]) / 8)
        elif isinstance(m, IndexMaxPool2d):
            h, w = shapes[name][0][2:]
            expected[name] = math.prod(shapes[name][1]) * (1 if h * w <= 256 else 2)  # narrowed
        elif isinstance(m, nn.Linear):
            expected[name] = 4 * math.prod(shapes[name][0])  # the dense classifier's input
    stored = {k: v for k, v in meter.by_module.items() if v}
    assert stored == expected
    assert meter.bytes == sum(expected.values())
    assert meter.bytes < before.bytes
    print(f"\nsmall CNN update={update}: stored {before.bytes} -> {meter.bytes} bytes")


@pytest.mark.parametrize("update", ["core", "last"])
def test_fused_basic_block_stores_no_full_width_tensor(update):
    torch.manual_seed(0)
    block = BasicBlock(16, 32, stride=2)
    unfused = facto.factorize(block, rank=0.5, update=update, skip_first_conv=False, recompute=False)
    fused = fuse_recompute(copy.deepcopy(unfused))
    assert fused.facto_fusion.fused == ["conv1+bn1", "conv2+bn2", "shortcut.0+shortcut.1"]
    ranks = {r for m in fused.modules() if isinstance(m, FactoConvBN) for r in m.ranks}
    x = torch.randn(4, 16, 16, 16, requires_grad=True)
    for model, full_width_expected in [(unfused, True), (fused, False)]:
        with facto.saved_activations(model=model) as meter:
            model(x).sum().backward()
        full_width = False
        for r in meter.records:
            if len(r.shape) >= 3:  # N x C x H x W, or N x C x HW where a 1x1 stage runs as bmm
                assert r.dtype == "float32"
                full_width |= r.shape[1] not in ranks or r.shape[1] >= 32
            else:  # 1-bit masks (uint8) and BN statistics (Cout floats)
                assert r.dtype == "uint8" or (len(r.shape) == 1 and r.shape[0] == 32)
        assert full_width == full_width_expected


# ----------------------------------------------------------------------------- dense conv + BN

DENSE_CONVS = {
    "stem-1ch": lambda: nn.Conv2d(1, 32, 3, padding=1, bias=False),
    "depthwise": lambda: nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False),
    "1x1-stride2-bias": lambda: nn.Conv2d(8, 12, 1, stride=2, bias=True),
    "grouped-dilated-reflect-same": lambda: nn.Conv2d(4, 8, 3, padding="same", dilation=2,
                                                      groups=2, padding_mode="reflect"),
}


def dense_block(conv: nn.Conv2d, momentum=0.1) -> nn.Module:
    c = conv.out_channels
    return nn.Sequential(conv, nn.BatchNorm2d(c, momentum=momentum), MaskReLU(),
                         nn.Conv2d(c, 6, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, 5))


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("make", DENSE_CONVS.values(), ids=DENSE_CONVS.keys())
def test_fused_dense_conv_trains_exactly_like_unfused(make, momentum):
    torch.manual_seed(0)
    unfused = dense_block(make(), momentum)
    fused = fuse_recompute(copy.deepcopy(unfused))
    assert fused.facto_fusion.fused == ["0+1"] and isinstance(fused[0], ConvBN)
    assert isinstance(fused[0], nn.Conv2d) and isinstance(fused[1], nn.Identity)
    assert "followed by AdaptiveAvgPool2d" in fused.facto_fusion.not_fused["3"]  # dense, no BN after it
    # parameters keep their names: the conv's at the conv's name, the BN's under `.bn`
    renamed = {k.replace("1.", "0.bn.", 1) if k.startswith("1.") else k: v
               for k, v in unfused.state_dict().items()}
    assert fused.state_dict().keys() == renamed.keys()
    assert fused[0].weight is fused.get_parameter("0.weight")
    cin = unfused[0].in_channels
    torch.manual_seed(1)
    assert_same_training(unfused, fused, [torch.randn(4, cin, 11, 11), torch.randn(4, cin, 11, 11)])


class AliasedConv(nn.Module):
    """The conv is registered twice (`conv`, and `block.conv` as a block's view of it) and called
    once through the second name, before the BatchNorm: fx names it by the first."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Module()
        self.block.conv = self.conv
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(F.relu(self.bn(self.block.conv(x))).mean((2, 3)))


def test_a_conv_called_by_its_other_name_is_fused_under_both():
    """Replacing only the first name left the called one unfused while its BatchNorm became an
    Identity: BN silently gone."""
    torch.manual_seed(0)
    unfused = AliasedConv()
    fused = fuse_recompute(copy.deepcopy(unfused))
    assert isinstance(fused.block.conv, ConvBN) and fused.block.conv is fused.conv
    torch.manual_seed(1)
    assert_same_training(unfused, fused, [torch.randn(4, 3, 9, 9), torch.randn(4, 3, 9, 9)])


def test_fused_dense_conv_frozen_weight_and_input_without_grad():
    torch.manual_seed(0)
    unfused = dense_block(nn.Conv2d(3, 8, 3, padding=1, bias=True))
    unfused[0].weight.requires_grad_(False)
    fused = fuse_recompute(copy.deepcopy(unfused))
    torch.manual_seed(1)
    x = torch.randn(4, 3, 8, 8)
    grads = []
    for model in (unfused, fused):
        model.zero_grad(set_to_none=True)
        model(x).square().sum().backward()
        grads.append([p.grad for p in model.parameters() if p.requires_grad])
    assert fused[0].weight.grad is None
    total = float(torch.cat([g.flatten() for g in grads[0]]).norm())
    for a, b in zip(*grads):
        # the conv's bias, right before BatchNorm, has gradient 0 up to rounding: hence the floor
        assert float((b - a).norm()) <= 1e-5 * (float(a.norm()) + 0.01 * total)


def test_fused_stem_stores_exactly_its_input_and_bn_stats():
    torch.manual_seed(0)
    model = create_model("simple_cnn", num_classes=10, in_channels=1)
    unfused = fuse_recompute(facto.factorize(model, 0.5, "core", recompute=False), dense=False)  # the stem only differs
    fused = facto.factorize(model, 0.5, "core", recompute=True)
    assert isinstance(fused.features[0], ConvBN) and fused.facto_fusion.fused[0] == "features.0+features.1"
    assert "features.0" in fused.facto_state.skipped  # still the dense stem factorize left alone
    n, h, w = 4, 16, 16
    x = torch.randn(n, 1, h, w)
    before, meter = _metered_backward(unfused, fused, x)
    c = fused.features[0].out_channels
    x_bytes, stats_bytes = 4 * n * 1 * h * w, 2 * c * 4
    stem = sorted((r.shape, r.stored_bytes) for r in meter.records if r.module == "features.0")
    assert stem == [((n, 1, h, w), x_bytes), ((c,), 4 * c), ((c,), 4 * c)]  # x, mean, invstd
    assert meter.by_module["features.0"] == x_bytes + stats_bytes
    y_bytes = 4 * n * c * h * w
    unfused_stem = before.by_module["features.0"] + before.by_module["features.1"]
    assert unfused_stem == x_bytes + y_bytes + stats_bytes  # conv: x; BN: y, mean, invstd
    assert before.bytes - meter.bytes == y_bytes  # everything else is stored as before
    assert len(before.records) == len(meter.records) + 1


def test_dense_false_fuses_factorized_convs_only():
    model = resnet20()
    fused = fuse_recompute(facto.factorize(model, rank=0.5, update="last", recompute=False), dense=False)
    assert len(fused.facto_fusion.fused) == 20 and "conv1+bn1" not in fused.facto_fusion.fused
    assert type(fused.conv1) is nn.Conv2d and isinstance(fused.bn1, nn.BatchNorm2d)
    assert "conv1" not in fused.facto_fusion.not_fused  # dense convs are not candidates at all
    again = fuse_recompute(fused)  # a second pass with dense=True picks up the stem
    assert again.facto_fusion.fused[-1] == "conv1+bn1" and isinstance(again.conv1, ConvBN)
    assert fuse_recompute(again).facto_fusion.fused == again.facto_fusion.fused  # idempotent


def test_fuse_plain_mobilenet_v2_fuses_every_conv():
    """Dense depthwise/pointwise convs of an unfactorized torchvision model, none left over."""
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", num_classes=10, in_channels=3)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0  # the two runs must draw the same: no dropout
    convs = sum(type(m) is nn.Conv2d for m in model.modules())
    fused = fuse_recompute(copy.deepcopy(model))
    assert len(fused.facto_fusion.fused) == convs and fused.facto_fusion.not_fused == {}
    assert sum(isinstance(m, ConvBN) and m.groups > 1 for m in fused.modules()) >= 10
    torch.manual_seed(1)
    assert_same_training(model, fused, [torch.randn(2, 3, 32, 32)])


def test_conv_bn_rejects_what_it_cannot_fuse():
    with pytest.raises(ValueError, match="use an nn.Conv2d"):
        ConvBN(nn.Conv1d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match=r"BatchNorm2d\(4\)"):
        ConvBN(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(5))


POOLS = {
    "k2s2": dict(kernel_size=2),
    "k3s2p1-overlap": dict(kernel_size=3, stride=2, padding=1),
    "k3s1-overlap": dict(kernel_size=3, stride=1),
    "k3s2-ceil": dict(kernel_size=3, stride=2, ceil_mode=True),
    "k2-dil2-ceil": dict(kernel_size=2, stride=2, dilation=2, ceil_mode=True),
}


@pytest.mark.parametrize("cfg", POOLS.values(), ids=POOLS.keys())
@pytest.mark.parametrize("ties", [False, True])
def test_index_max_pool_matches_max_pool_and_stores_only_indices(cfg, ties):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 11, 13)
    if ties:
        x = x.round()
    ref_pool, pool = nn.MaxPool2d(**cfg), IndexMaxPool2d(**cfg)
    results = []
    for p in (ref_pool, pool):
        xi = (x * 1).requires_grad_()
        with facto.saved_activations(model=p) as meter:
            y = p(xi)
        g = torch.arange(y.numel(), dtype=y.dtype).view_as(y) % 7 - 3
        y.backward(g)
        results.append((y.detach(), xi.grad, meter))
    (y0, g0, m0), (y1, g1, m1) = results
    assert torch.equal(y1, y0)
    assert torch.allclose(g1, g0, rtol=0, atol=1e-6)
    assert [r.stored_as for r in m1.records] == ["NarrowInt"]
    assert m1.bytes == y1.numel() * 1  # indices < 11 * 13 fit in uint8
    assert m0.bytes > x.numel() * 4  # PyTorch's max-pool keeps the float input


def test_index_max_pool_unbatched_and_eval():
    pool = IndexMaxPool2d(3, 2, 1)
    x = torch.randn(4, 9, 9, requires_grad=True)
    (g,) = torch.autograd.grad(pool(x).sum(), x)
    (g_ref,) = torch.autograd.grad(F.max_pool2d(x, 3, 2, 1).sum(), x)
    assert torch.equal(g, g_ref)
    with torch.no_grad():
        assert torch.equal(pool(x), F.max_pool2d(x, 3, 2, 1))


class Dynamic(nn.Module):
    """Data-dependent control flow (torch.fx cannot trace it) around fusable pairs."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1),
                                  nn.BatchNorm2d(8), nn.ReLU())
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.branch = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        x = self.body(x)
        if x.mean() > 0:
            x = x * 2
        return self.bn(self.conv(x)) + self.branch(x)


def test_fuse_reports_what_it_fused_and_what_not():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.BatchNorm2d(8))
    fused = facto.factorize(plain, rank=0.5, recompute=True)
    assert fused.facto_fusion.fused == ["3+4"]
    assert "followed by MaskReLU" in fused.facto_fusion.not_fused["1"]
    assert isinstance(fused[3], FactoConvBN) and isinstance(fused[4], nn.Identity)
    assert fuse_recompute(fused).facto_fusion.fused == ["3+4"]  # idempotent

    dynamic = facto.factorize(Dynamic(), rank=0.5, skip_first_conv=False, recompute=False)
    fused = fuse_recompute(copy.deepcopy(dynamic))
    assert fused.facto_fusion.fused == ["body.1+body.2"]
    assert set(fused.facto_fusion.not_fused) == {"body.0", "conv", "branch"}
    assert "could not be traced" in fused.facto_fusion.not_fused["conv"]
    torch.manual_seed(1)
    assert_same_training(dynamic, fused, [torch.randn(2, 3, 8, 8)])


def test_fuse_finds_torchvision_blocks():
    from torchvision.models.resnet import BasicBlock as TVBlock
    from torchvision.ops import Conv2dNormActivation

    torch.manual_seed(0)
    down = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(3, 2, 1),
                          TVBlock(8, 16, stride=2, downsample=down),
                          Conv2dNormActivation(16, 16, 3))
    unfused = facto.factorize(model, rank=0.5, update="core", recompute=False)
    fused = fuse_recompute(copy.deepcopy(unfused))
    assert fused.facto_fusion.fused == ["2.conv1+2.bn1", "2.conv2+2.bn2", "2.downsample.0+2.downsample.1",
                                 "3.0+3.1"]
    assert fused.facto_fusion.index_pools == ["1"]
    torch.manual_seed(1)
    assert_same_training(unfused, fused, [torch.randn(2, 3, 16, 16)])


def test_bn_stats_is_validated():
    with pytest.raises(ValueError, match="'batch'"):
        fuse_recompute(nn.Sequential(), bn_stats="batch")


def _grad(model, x, target, bits):
    model.zero_grad(set_to_none=True)
    with facto.saved_activations(bits=bits, model=model):
        loss = F.cross_entropy(model(x), target)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])


@pytest.mark.slow
def test_low_bit_gradient_is_unbiased_with_the_default_bn_stats():
    """Mean of 16 stochastic draws vs the exact gradient; bn_stats options printed."""
    unfused = facto.factorize(resnet20(), rank=0.5, update="last", recompute=False)
    torch.manual_seed(1)
    x, target = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    exact = _grad(unfused, x, target, None)
    cosines = {}
    for bn_stats in ["forward", "recomputed"]:
        fused = fuse_recompute(copy.deepcopy(unfused), bn_stats=bn_stats)
        for bits in [4, 2]:
            draws = 16 if (bn_stats, bits) == (DEFAULT_BN_STATS, 4) else 6
            torch.manual_seed(2)
            mean = torch.stack([_grad(fused, x, target, bits) for _ in range(draws)]).mean(0)
            cosines[bn_stats, bits] = float(F.cosine_similarity(mean, exact, dim=0))
            print(f"\nbn_stats={bn_stats} bits={bits}: cosine of the mean of {draws} draws "
                  f"{cosines[bn_stats, bits]:.4f}")
    assert cosines[DEFAULT_BN_STATS, 4] >= 0.99
    # 2 bits on this small model: the default (forward statistics) stays close (measured 0.97 with
    # 6 draws) and beats statistics of the noisy recomputed input (measured 0.78)
    assert cosines[DEFAULT_BN_STATS, 2] >= 0.93 and cosines[DEFAULT_BN_STATS, 2] > cosines["recomputed", 2]


def _autocast_case(dtype: torch.dtype):
    """resnet20 (seed 0), a batch, and gradients of a model with or without autocast (and the meter)."""
    torch.manual_seed(0)
    dense = resnet20()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))

    def grads(net, autocast, bits=None):
        params = [p for p in net.parameters() if p.requires_grad]
        with torch.autocast("cpu", dtype, enabled=autocast), facto.saved_activations(bits, model=net) as meter:
            out = net(x)
        loss = F.cross_entropy(out.float(), y)
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]), meter

    return dense, grads


def _cos(a, b) -> float:
    return float(F.cosine_similarity(a, b, dim=0))


@functools.lru_cache(maxsize=None)
def _dense_autocast_cosine(dtype: torch.dtype) -> float:
    """How close the dense model's own autocast gradients are to its fp32 ones."""
    dense, grads = _autocast_case(dtype)
    return _cos(grads(dense, True)[0], grads(dense, False)[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("recompute, bits", [(False, None), (True, None), (True, 8)])
def test_autocast_gradients_close_to_fp32(dtype, recompute, bits):
    """16-bit autocast works with factorize, recompute, masks and compression, and the gradients
    stay as close to fp32 as the dense model's own autocast gradients are."""
    dense, grads = _autocast_case(dtype)
    model = facto.factorize(dense, rank=0.5, update="core", recompute=recompute)
    half, meter = grads(model, True, bits)
    ours = _cos(half, grads(model, False)[0])
    dense_cos = _dense_autocast_cosine(dtype)
    assert ours >= dense_cos - 0.03, (ours, dense_cos)
    assert any(r.dtype in ("bfloat16", "float16") for r in meter.records)  # 16-bit maps are what is stored

def test_fusing_in_one_thread_while_another_trains():
    """torch.fx patches nn.Module for the whole process while it traces: a model that another thread
    runs meanwhile must run as it is, and the fusions found must not change."""
    import threading

    solo = facto.factorize(create_model("resnet20", 10, 1), rank=0.5).facto_fusion
    busy = create_model("simple_cnn", 10, 1)
    x, errors, stop = torch.randn(4, 1, 32, 32), [], threading.Event()

    def train():
        while not stop.is_set():
            try:
                busy(x).sum().backward()
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(f"{type(exc).__name__}: {exc}")
                return

    threads = [threading.Thread(target=train) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        reports = [facto.factorize(create_model("resnet20", 10, 1), rank=0.5).facto_fusion for _ in range(3)]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert all(r.fused == solo.fused and r.not_fused == solo.not_fused for r in reports)


# ----------------------------------------------------------------------------- BatchNorm over its input


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_written_over_its_input_is_native_batch_norm(layout, affine):
    """Output, saved statistics and running statistics bit for bit, in the input's own memory."""
    from facto.method.recompute import bn_forward_over_input

    torch.manual_seed(0)
    y = (torch.randn(6, 5, 7, 9) * 3 + 1).contiguous(memory_format=layout)
    w, b = (torch.randn(5), torch.randn(5)) if affine else (None, None)
    stats = [torch.randn(5), torch.rand(5) + 0.5]
    mine = [s.clone() for s in stats]
    out, mean, invstd = torch.native_batch_norm(y, w, b, *stats, True, 0.1, 1e-5)
    over = y.clone(memory_format=layout)
    got_mean, got_invstd = bn_forward_over_input(over, w, b, *mine, 0.1, 1e-5)
    assert torch.equal(over, out) and torch.equal(got_mean, mean) and torch.equal(got_invstd, invstd)
    assert all(torch.equal(a, c) for a, c in zip(mine, stats))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_backward_written_over_its_input_agrees_with_native(monkeypatch, dtype, affine):
    """Through slices of the batch (several here), the input gradient written over the input: the
    gradients native_batch_norm_backward gives, to float32 rounding (bfloat16 maps: to one unit in
    the last place of a few values)."""
    from facto.method import recompute

    monkeypatch.setattr(recompute, "BN_SLICES", 4)  # 6 images: slices of 2, 2 and 2
    torch.manual_seed(0)
    y = (torch.randn(6, 5, 7, 9) * 3 + 1).to(dtype)
    g = torch.randn(6, 5, 7, 9).to(dtype)
    w = torch.randn(5) if affine else None
    _, mean, invstd = torch.native_batch_norm(y, w, None, None, None, True, 0.1, 1e-5)
    want = torch.ops.aten.native_batch_norm_backward(g, y, w, None, None, mean, invstd, True, 1e-5,
                                                     [True, affine, affine])
    over = y.clone()
    got = recompute.bn_backward_over_input(g, over, w, mean, invstd, need_input=True)
    assert got[0] is over and got[0].dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-4
    assert rel(got[0].float(), want[0].float()) < tol
    if affine:
        assert rel(got[1], want[1]) < 1e-6 and rel(got[2], want[2]) < 1e-6
    untouched = y.clone()
    none, *weights = recompute.bn_backward_over_input(g, untouched, w, mean, invstd, need_input=False)
    assert none is None and torch.equal(untouched, y)
    assert all(torch.equal(a, c) for a, c in zip(weights, got[1:]))


@pytest.mark.parametrize("update", ["first", "core", "last"])
def test_a_fused_layer_holds_fewer_full_width_maps_in_a_step(update):
    """Measured by the CPU profiler over a real step (conv+BN+ReLU(inplace), 16 channels, rank 1/4):
    BatchNorm written over its recomputed input, in forward and backward, the incoming gradient
    released before the stages' backward (a node of its own) and the last stage's gradient before the
    rank-width stages'. Forward rises by at most 1.5 full-width maps (2.0-2.3 with BatchNorm out of
    place and the ReLU writing a new map), backward by at most 2.65 (4.25 with all in one node)."""
    from facto.memory.step_peak import measure_step_peak_cpu

    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    model = facto.factorize(dense, rank=0.25, update=update, skip_first_conv=False, recompute=True)
    x, y = torch.randn(64, 16, 16, 16), torch.randint(0, 10, (64,))
    peak = measure_step_peak_cpu(model, x, y, None)
    full = x.numel() * 4
    assert peak.forward_rise <= 1.55 * full and peak.backward_rise <= 2.7 * full, (peak, full)


def test_the_stages_backward_handoff_survives_retained_graphs_and_partial_gradients():
    """The stages' gradients go from _RecomputeBN's node to a node of their own through a handoff: a
    graph kept and run twice gives twice the gradients, and a gradient asked of BatchNorm's weight
    alone leaves the stages' backward unrun without error."""
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
    model = facto.factorize(dense, rank=0.5, update="core", skip_first_conv=False, recompute=True)
    x = torch.randn(4, 4, 6, 6, requires_grad=True)
    out = model(x)
    trained = [p for p in model.parameters() if p.requires_grad]
    once = torch.autograd.grad(out.square().sum(), [x, *trained], retain_graph=True)
    out.square().sum().backward(retain_graph=True)
    out.square().sum().backward()
    assert all(torch.allclose(p.grad, 2 * g, rtol=1e-5, atol=1e-7) for p, g in zip(trained, once[1:]))
    assert torch.allclose(x.grad, 2 * once[0], rtol=1e-5, atol=1e-7)
    (gamma,) = torch.autograd.grad(model(x).square().sum(), [model[0].bn.weight])
    assert torch.allclose(gamma, once[1 + [id(p) for p in trained].index(id(model[0].bn.weight))], rtol=1e-5)
