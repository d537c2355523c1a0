"""facto.engine.build: one way to build a run's models, reproducible, and a factorized model that comes
back from its config and a state_dict."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from facto.config import RunConfig
from facto.engine.build import dense_model, facto_model, method_model, same_state, seeded
from facto.method.factorize import describe, facto_state


def test_same_seed_same_weights_and_the_global_generator_is_left_alone():
    config = RunConfig(model="resnet20", seed=3)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = dense_model(config, 10, 1), dense_model(config, 10, 1)
    assert same_state(a, b) and torch.equal(torch.random.get_rng_state(), before)
    assert not same_state(a, dense_model(config.replace(seed=4), 10, 1))
    with seeded(7):
        x = torch.rand(3)
    with seeded(7):
        assert torch.equal(x, torch.rand(3))


def test_a_factorized_model_comes_back_from_its_config_and_state_dict():
    """Train a little, save the state_dict; in a fresh build from the same config it loads, and the
    report (ranks, requested rank, reconstruction error: each layer's own record) is the same."""
    config = RunConfig(model="resnet20", rank="energy:0.9", seed=1)
    model = facto_model(config, dense_model(config, 10, 1))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    saved = model.state_dict()
    rebuilt = facto_model(config, dense_model(config, 10, 1))
    rebuilt.load_state_dict(saved)
    assert [dataclasses.asdict(r) for r in describe(rebuilt)] == [dataclasses.asdict(r) for r in describe(model)]
    model.eval(), rebuilt.eval()
    assert torch.equal(model(x), rebuilt(x))
    assert facto_state(rebuilt).options["rank"] == "energy:0.9"


@pytest.mark.parametrize("model", ["simple_cnn", "resnet20"])
def test_every_method_builds_from_the_same_dense_model_without_changing_it(model):
    """Each method's model trains a step (resnet20's stages become checkpointed modules, not Sequentials)."""
    dense = dense_model(RunConfig(model=model), 10, 1)
    reference = {k: v.clone() for k, v in dense.state_dict().items()}
    x = torch.randn(2, 1, 32, 32)
    for method in ("dense", "compress", "facto", "checkpoint"):
        out = method_model(method, dense, RunConfig(model=model))(x)
        assert out.shape == (2, 10)
        out.square().sum().backward()
    assert all(torch.equal(reference[k], v) for k, v in dense.state_dict().items())


@pytest.mark.parametrize("bits", [None, 4, 16])
def test_a_variant_uses_the_kernels_exactly_when_its_model_has_relu_masks(bits):
    """`Variant.uses_kernels` (a run loads the CPU kernels before its first model when one does): the
    1-bit ReLU masks call them whatever the bits of the other maps."""
    from facto.engine.build import Variant
    from facto.method.layers import MaskReLU

    dense = dense_model(RunConfig(), 10, 1)
    for method in ("dense", "compress", "facto", "checkpoint"):
        variant = Variant(method, method, RunConfig(bits=bits))
        masks = any(isinstance(m, MaskReLU) for m in variant.build(dense).modules())
        assert variant.uses_kernels is masks, (method, bits)
