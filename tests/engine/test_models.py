"""Tests for facto.engine.models: every registered model builds, runs and trains on 32x32 inputs."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from facto.engine.models import create_model, list_models, model_info, register_model

REGISTERED = ["simple_cnn", "resnet20", "resnet18", "vgg11_bn", "mobilenet_v2"]


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_list_models_fixed_order():
    assert list_models() == REGISTERED


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name, in_channels):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=in_channels)
    assert _convs(model)[0].in_channels == in_channels
    logits = model.train()(torch.randn(2, in_channels, 32, 32))
    assert logits.shape == (2, 10)
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name}: {pname} has a non-finite gradient"


@pytest.mark.parametrize("name", ["simple_cnn", "resnet20"])
def test_num_classes(name):
    model = create_model(name, num_classes=7, in_channels=3)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("name", list_models())
def test_deterministic_given_seed(name):
    torch.manual_seed(123)
    first = create_model(name, in_channels=3).state_dict()
    torch.manual_seed(123)
    second = create_model(name, in_channels=3).state_dict()
    torch.manual_seed(124)
    other = create_model(name, in_channels=3).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("name", list_models())
def test_model_info_is_one_line(name):
    info = model_info(name)
    assert info and "\n" not in info


def test_simple_cnn_layout():
    model = create_model("simple_cnn", in_channels=1)
    convs = _convs(model)
    assert [c.out_channels for c in convs] == [16, 16, 32, 32, 64, 64]
    assert all(c.bias is None for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 6
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 6
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 1


def test_resnet20_layout():
    model = create_model("resnet20", in_channels=3)
    convs = _convs(model)
    three_by_three = [c for c in convs if c.kernel_size == (3, 3)]
    projections = [c for c in convs if c.kernel_size == (1, 1)]
    assert len(three_by_three) == 19  # 19 convs + 1 Linear = 20 weighted layers
    assert len(projections) == 2  # option B shortcuts at the two down-sampling blocks
    assert sorted({c.out_channels for c in convs}) == [16, 32, 64]
    assert sum(p.numel() for p in model.parameters()) < 300_000


def test_torchvision_adaptations():
    resnet = create_model("resnet18", in_channels=1)
    assert resnet.conv1.kernel_size == (3, 3) and resnet.conv1.stride == (1, 1)
    assert isinstance(resnet.maxpool, nn.Identity)
    mobilenet = create_model("mobilenet_v2", in_channels=1)
    assert mobilenet.features[0][0].stride == (1, 1)
    vgg = create_model("vgg11_bn", in_channels=1)
    assert sum(p.numel() for p in vgg.parameters()) < 10_000_000


@pytest.mark.parametrize("name", ["squeezenet1_1", "shufflenet_v2_x0_5"])
def test_any_torchvision_model_by_name(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1)
    assert _convs(model)[0].in_channels == 1
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert name in model_info(name)


def test_torchvision_model_with_auxiliary_heads_gives_one_logits_tensor():
    model = create_model("googlenet", num_classes=10, in_channels=1).train()
    out = model(torch.randn(2, 1, 32, 32))  # in training mode too (it gave a GoogLeNetOutputs)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)


@pytest.mark.parametrize("name, needle", [("alexnet", "Output size is too small"),
                                          ("vit_b_16", "Expected 224 but got 32")])
def test_a_torchvision_model_built_for_larger_images_is_refused_naming_why(name, needle):
    """Building the run's model tells the user at once (a ValueError, one line in the CLI),
    not with a traceback from inside the first training step."""
    from facto import RunConfig
    from facto.engine.build import dense_model
    from facto.engine.models import ModelInputError

    with pytest.raises(ModelInputError) as err:
        dense_model(RunConfig(model=name), num_classes=10, in_channels=1)
    text = str(err.value)
    assert name in text and "1x32x32" in text and needle in text and f"tv:{name}" in text
    assert "\n" not in text


def test_a_model_that_is_not_a_plain_classifier_is_refused():
    from facto.engine.build import check_takes_images
    from facto.engine.models import ModelInputError

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 10, 3)

        def forward(self, x):
            y = self.conv(x).mean((2, 3))
            return y, y

    with pytest.raises(ModelInputError, match="not a plain classifier"):
        check_takes_images(TwoHeads(), "two_heads", 1, 10)


def test_unknown_model_raises_value_error_naming_it():
    with pytest.raises(ValueError, match="no_such_net") as err:
        create_model("no_such_net")
    assert "simple_cnn" in str(err.value)
    with pytest.raises(ValueError, match="no_such_net"):
        model_info("no_such_net")


@pytest.mark.parametrize(
    "arg, value", [("num_classes", 0), ("in_channels", -1), ("in_channels", 1.5)]
)
def test_bad_sizes_raise_value_error(arg, value):
    with pytest.raises(ValueError, match=arg):
        create_model("simple_cnn", **{arg: value})


def test_a_model_of_your_own_trains_by_its_registered_name():
    """register_model("TinyNet") is found as TinyNet or tinynet (names were looked up in lower
    case but stored as given: a mixed-case name was never found)."""
    from facto import RunConfig, compare
    from facto.engine.models import _MODEL_BUILDERS, _MODEL_INFO

    @register_model("TinyNet")
    def tiny(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
        """A tiny conv net of my own."""
        return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))
    try:
        assert "tinynet" in list_models() and model_info("TINYNET") == "A tiny conv net of my own."
        config = RunConfig(model="TinyNet", max_steps=2, max_train=64, max_test=32, batch_size=32)
        assert config.model == "tinynet"
        summary = list(compare(config))[-1]
        assert summary.status == "completed" and summary.saving_pct > 50
        with pytest.raises(ValueError, match="already registered"):
            register_model("tinynet")(tiny)
    finally:
        _MODEL_BUILDERS.pop("tinynet", None), _MODEL_INFO.pop("tinynet", None)
    assert list_models() == REGISTERED


@pytest.mark.parametrize("name", ["", "  ", None, "tv:mine"])
def test_register_model_rejects_bad_names(name):
    with pytest.raises(ValueError, match="name="):
        register_model(name)


def test_register_model_rejects_duplicates():
    with pytest.raises(ValueError, match="simple_cnn"):
        register_model("simple_cnn")(lambda num_classes, in_channels: nn.Identity())
    assert list_models() == REGISTERED
