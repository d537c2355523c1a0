"""to_dense: a Facto model back to plain torch layers, computing the same function, loading into
the architecture it came from."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import facto
from facto import FactoConv2d, FactoLinear, MaskReLU, to_dense
from facto.method.layers import IndexMaxPool2d
from facto.method.recompute import ConvBN, FactoConvBN

FACTO_TYPES = (FactoConv2d, FactoLinear, FactoConvBN, ConvBN, MaskReLU, IndexMaxPool2d)


def _train_steps(model: nn.Module, x: torch.Tensor, steps: int = 2) -> None:
    """A few SGD steps, so the factors (and BN statistics) are no longer those factorize made."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    y = torch.arange(x.shape[0]) % 10
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(1)  # dropout (mobilenet_v2) draws the same mask for both models
    with torch.no_grad():
        return model(x)


@pytest.mark.slow
@pytest.mark.parametrize("recompute", [True, False])
@pytest.mark.parametrize("name", facto.list_models())
def test_trained_facto_model_back_to_dense_layers(name, recompute):
    torch.manual_seed(0)
    dense = facto.create_model(name, 10, 3)
    fmodel = facto.factorize(dense, rank=0.5, update="core", recompute=recompute)
    x = torch.randn(4, 3, 32, 32)
    _train_steps(fmodel, x)
    plain = to_dense(fmodel)
    assert not [m for m in plain.modules() if isinstance(m, FACTO_TYPES)]
    assert any(isinstance(m, FACTO_TYPES) for m in fmodel.modules())  # the Facto model is not changed
    # the same function, in eval and in training mode (batch statistics; dropout draws alike)
    for train in (False, True):
        fmodel.train(train), plain.train(train)
        torch.testing.assert_close(_forward(plain, x), _forward(fmodel, x), rtol=1e-4, atol=1e-4)
    # and it loads into the architecture it came from, every key in place
    fresh = facto.create_model(name, 10, 3)
    fresh.load_state_dict(plain.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), plain.eval()(x))
    assert all(p.requires_grad for p in plain.parameters())


def test_compression_only_model_back_to_relu():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU6(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
    masked = facto.fuse_recompute(facto.with_relu_masks(model))
    plain = to_dense(masked)
    assert [type(m) for m in plain] == [nn.Conv2d, nn.ReLU6, nn.Conv2d, nn.ReLU, nn.MaxPool2d]
    x = torch.randn(2, 1, 12, 12)
    torch.testing.assert_close(plain(x), model(x))


def test_a_single_factorized_layer_and_a_frozen_layer_kept_frozen():
    layer = FactoLinear.from_linear(nn.Linear(20, 8), rank=4)
    plain = to_dense(layer)
    assert type(plain) is nn.Linear and plain.weight.requires_grad
    x = torch.randn(3, 20)
    torch.testing.assert_close(plain(x), layer(x))
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 8), nn.Linear(8, 2))
    model[3].requires_grad_(False)  # the user's choice on a layer left dense, kept
    model[2].weight.requires_grad_(False)  # and on a layer factorized: frozen there, frozen back
    plain = to_dense(facto.factorize(model, rank=0.5))
    assert not plain[3].weight.requires_grad and plain[0].weight.requires_grad
    assert not plain[2].weight.requires_grad and plain[2].bias.requires_grad


def test_a_fused_model_without_its_record_is_refused():
    fmodel = facto.factorize(facto.create_model("resnet20", 10, 1), rank=0.5, recompute=True)
    del fmodel.facto_fusion
    with pytest.raises(ValueError, match="no record of where its BatchNorm was"):
        to_dense(fmodel)
    with pytest.raises(ValueError, match="model="):
        to_dense("resnet20")
