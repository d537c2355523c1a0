"""Model registry: small CNNs for 32x32 images plus torchvision models by name.

Usage::

    from facto.engine.models import create_model, list_models
    model = create_model("simple_cnn", num_classes=10, in_channels=1)

Registered models (in this order): simple_cnn, resnet20, resnet18, vgg11_bn,
mobilenet_v2. Any other torchvision classification model can be created by its
torchvision name (random weights, first conv adapted to ``in_channels``, auxiliary
heads off); a run checks that it takes the 32x32 images (alexnet, inception_v3 and the
vision transformers need larger ones: `facto plan --model tv:NAME` plans them).
All models are built from the global torch RNG, so ``torch.manual_seed`` makes
construction deterministic.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch.nn as nn

__all__ = [
    "register_model",
    "list_models",
    "create_model",
    "model_info",
    "SimpleCNN",
    "BasicBlock",
    "CifarResNet",
    "VGG",
]

ModelBuilder = Callable[[int, int], nn.Module]

_MODEL_BUILDERS: dict[str, ModelBuilder] = {}
_MODEL_INFO: dict[str, str] = {}


# --------------------------------------------------------------------------- registry


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator registering ``builder(num_classes, in_channels) -> nn.Module`` as ``name``.

    Names are case-insensitive (kept in lower case, as model names are looked up). The first
    line of the builder's docstring becomes its ``model_info`` text. Then
    ``RunConfig(model=name)`` trains it: `compare`, `sweep`, `run`, the planner.
    """
    if not isinstance(name, str) or not name.strip() or name.strip().lower().startswith(("tv:", "torchvision:")):
        raise ValueError(f"name={name!r} is not allowed: use a non-empty model name (tv: is the planner's)")
    key = name.strip().lower()

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if key in _MODEL_BUILDERS:
            raise ValueError(f"name={name!r} is already registered: choose a new model name")
        if not callable(builder):
            raise ValueError(f"builder={builder!r} is not allowed: use a function (num_classes, in_channels)")
        doc = (builder.__doc__ or key).strip().splitlines()[0].strip()
        _MODEL_BUILDERS[key] = builder
        _MODEL_INFO[key] = doc
        return builder

    return decorator


def list_models() -> list[str]:
    """Names of the registered models, in registration order."""
    return list(_MODEL_BUILDERS)


@functools.lru_cache(maxsize=1)
def _torchvision_models() -> tuple[str, ...]:
    """Names of torchvision's classification models (torchvision is imported on first use)."""
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


TORCHVISION_PREFIXES = ("tv:", "torchvision:")


def check_model_name(name: object, torchvision_layout: bool = False) -> str:
    """The normalised name of a registered or torchvision model, else ValueError.

    With `torchvision_layout`, also 'tv:NAME': torchvision's own layout of a model, for images of
    its own size (e.g. tv:resnet18 keeps its 7x7 stem and max-pool, which the registry's resnet18
    drops for 32x32 images); the planner takes these.
    """
    key = _normalise_name(name)
    if key.startswith("tv:"):
        if torchvision_layout and key[3:] in _torchvision_models():
            return key
        raise _unknown_model_error(name, torchvision_layout)
    if key in _MODEL_BUILDERS or key in _torchvision_models():
        return key
    raise _unknown_model_error(name)


def _unknown_model_error(name: object, torchvision_layout: bool = False) -> ValueError:
    choices = ", ".join(list_models())
    hint = ""
    if isinstance(name, str) and name.strip().lower().startswith(TORCHVISION_PREFIXES):
        hint = (" (after 'tv:' name a torchvision classification model)" if torchvision_layout else
                " (tv:NAME, torchvision's own layout for large images, is for facto plan; training here "
                "is on 32x32 images: use the plain name)")
    return ValueError(
        f"model={name!r} is not known: choose one of {choices} "
        f"or any torchvision classification model name{hint}"
    )


def _normalise_name(name: object) -> str:
    """Lower case, and 'torchvision:NAME' spelled 'tv:NAME'."""
    if not isinstance(name, str):
        raise _unknown_model_error(name)
    key = name.strip().lower()
    for prefix in TORCHVISION_PREFIXES:
        if key.startswith(prefix):
            return "tv:" + key[len(prefix):].strip()
    return key


def _check_positive_int(arg: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{arg}={value!r} is not allowed: it must be an integer >= 1")


def create_model(name: str, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Create a freshly initialised model ``name`` for ``in_channels`` x 32 x 32 inputs
    ('tv:NAME': torchvision's own layout, for images of its own size)."""
    key = _normalise_name(name)
    _check_positive_int("num_classes", num_classes)
    _check_positive_int("in_channels", in_channels)
    if key.startswith("tv:") and key[3:] in _torchvision_models():
        return _create_torchvision_model(key[3:], num_classes, in_channels)
    if key in _MODEL_BUILDERS:
        return _MODEL_BUILDERS[key](num_classes, in_channels)
    if key in _torchvision_models():
        return _create_torchvision_model(key, num_classes, in_channels)
    raise _unknown_model_error(name)


def model_info(name: str) -> str:
    """One-line description of model ``name`` (for help texts)."""
    key = _normalise_name(name)
    if key in _MODEL_INFO:
        return _MODEL_INFO[key]
    if key in _torchvision_models():
        return (
            f"torchvision {key} with random weights; the first conv takes in_channels. "
            "Not adapted to 32x32 inputs: some models need larger images."
        )
    raise _unknown_model_error(name)


# --------------------------------------------------------------------------- helpers


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    """3x3 Conv (no bias) -> BatchNorm2d -> ReLU (over BatchNorm's output: nothing else reads it), as a
    list of modules."""
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def _init_conv(conv: nn.Conv2d) -> None:
    """Kaiming-normal init (fan_out, ReLU), as torchvision's ResNet/VGG/MobileNet use."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _init_weights(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            _init_conv(module)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _copy_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A new Conv2d like ``conv`` but taking ``in_channels`` inputs."""
    groups = conv.groups if in_channels % conv.groups == 0 else 1
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    _init_conv(new)
    return new


def replace_first_conv(model: nn.Module, in_channels: int) -> nn.Module:
    """Replace the first ``nn.Conv2d`` (module order) by one taking ``in_channels``."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels != in_channels:
                parent_name, _, child_name = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, child_name, _copy_conv(module, in_channels))
            return model
    raise ValueError(f"model={type(model).__name__} has no nn.Conv2d: cannot set in_channels")


# --------------------------------------------------------------------------- simple_cnn


class SimpleCNN(nn.Module):
    """Six Conv-BN-ReLU layers, two max-pools, global average pooling, Linear."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        widths: tuple[int, int, int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for stage, width in enumerate(widths):
            if stage > 0:
                layers.append(nn.MaxPool2d(2))
            layers += conv_bn_relu(channels, width) + conv_bn_relu(width, width)
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes)
        _init_weights(self)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))


@register_model("simple_cnn")
def simple_cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Fast default: 6 Conv-BN-ReLU layers (16-16-32-32-64-64), ~73k params; a 2-core CPU trains it in seconds."""
    return SimpleCNN(num_classes, in_channels)


# --------------------------------------------------------------------------- resnet20


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 Conv-BN, identity or 1x1 Conv-BN shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)  # over BatchNorm's output, as torchvision's blocks add: one map fewer
        return self.relu2(out)


class CifarResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016): 3 stages of ``blocks`` BasicBlocks, 16/32/64 channels."""

    def __init__(self, blocks: int = 3, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(16, 16, blocks, stride=1)
        self.layer2 = self._stage(16, 32, blocks, stride=2)
        self.layer3 = self._stage(32, 64, blocks, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)
        _init_weights(self)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride)]
        layers += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        for stage in (self.layer1, self.layer2, self.layer3):
            # block by block: no map stays referenced here while later blocks run (a stage that is
            # not a Sequential, e.g. wrapped for checkpointing, runs whole)
            for block in stage if isinstance(stage, nn.Sequential) else (stage,):
                x = block(x)
        return self.fc(self.flatten(self.pool(x)))


@register_model("resnet20")
def resnet20(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """CIFAR-style ResNet-20 (3x3 BasicBlocks, 16/32/64 channels), ~0.27M params."""
    return CifarResNet(3, num_classes, in_channels)


# --------------------------------------------------------------------------- torchvision, adapted


@register_model("resnet18")
def resnet18(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """torchvision ResNet-18 for 32x32: 3x3 stride-1 stem, no max-pool, ~11M params."""
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    _init_conv(model.conv1)
    model.maxpool = nn.Identity()
    return model


class VGG(nn.Module):
    """VGG for 32x32 inputs: torchvision's ``features``, global average pool, Linear head."""

    def __init__(self, features: nn.Sequential, num_classes: int = 10) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(512, num_classes)
        _init_weights(self)
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x):
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


@register_model("vgg11_bn")
def vgg11_bn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """VGG-11-BN (torchvision's features), global average pool, Linear(512) head, ~9M params."""
    # torchvision's VGG would first build a 120M-parameter 224x224 classifier (~3 s on a
    # laptop CPU) only for us to drop it, so we wrap its feature extractor ourselves.
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["A"], batch_norm=True)
    replace_first_conv(features, in_channels)
    return VGG(features, num_classes)


@register_model("mobilenet_v2")
def mobilenet_v2(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """torchvision MobileNetV2 (width 1.0) for 32x32: stride-1 first conv, ~2.2M params."""
    import torchvision

    model = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes, width_mult=1.0)
    replace_first_conv(model, in_channels)
    model.features[0][0].stride = (1, 1)
    return model


_AUX_HEADS = frozenset({"googlenet", "inception_v3"})  # torchvision models with auxiliary classifiers


class ModelInputError(ValueError):
    """A model that cannot train on the run's images (built for larger ones, or not a classifier)."""


def _create_torchvision_model(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """Any torchvision classification model, random weights, first conv from ``in_channels``."""
    import torchvision

    # one logits tensor, as every model gives; their usual init, without torchvision's FutureWarning
    extra = {"aux_logits": False, "init_weights": True} if name in _AUX_HEADS else {}
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra)
    if in_channels != 3:
        replace_first_conv(model, in_channels)
    return model
