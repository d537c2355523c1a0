"""Back to plain PyTorch layers: a model trained with Facto, as the dense model it stands for.

Facto trains factors; what a user ships is often the original architecture. `to_dense` turns
every layer Facto put in back into the torch layer it replaced, with the weights it computes:

- FactoConv2d / FactoLinear -> nn.Conv2d / nn.Linear holding the product of the factors;
- FactoConvBN / ConvBN (recompute fusion) -> the conv, and its BatchNorm2d back at its own
  name (where the fusion left an nn.Identity);
- MaskReLU -> nn.ReLU (nn.ReLU6 for a cap of 6); IndexMaxPool2d -> nn.MaxPool2d.

The result computes what the Facto model computes (up to float rounding), its layers train
unless they were frozen (a layer you froze before `factorize` stays frozen), and its
state_dict loads into the architecture it came from.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .factorize import _check_module
from .layers import FactoConv2d, FactoLinear, FactorizedLayer, IndexMaxPool2d, MaskReLU, replace_module
from .recompute import ConvBN, FactoConvBN, fusion_report

__all__ = ["to_dense"]


def _plain_conv(layer: nn.Module, weight: torch.Tensor) -> nn.Conv2d:
    conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                     layer.dilation, getattr(layer, "groups", 1), bias=layer.bias is not None,
                     padding_mode=getattr(layer, "padding_mode", "zeros"),
                     device=weight.device, dtype=weight.dtype)
    _copy_into(conv, weight, layer.bias)
    return conv


def _copy_into(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    with torch.no_grad():
        module.weight.copy_(weight)
        if bias is not None:
            module.bias.copy_(bias)


def _plain_linear(layer: FactoLinear) -> nn.Linear:
    weight = layer.dense_weight().detach()
    linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                       device=weight.device, dtype=weight.dtype)
    _copy_into(linear, weight, layer.bias)
    return linear


def _same_flags(plain: nn.Module, layer: nn.Module) -> nn.Module:
    """A layer the user froze stays frozen (any factor training makes the weight train)."""
    if isinstance(layer, FactorizedLayer):
        plain.weight.requires_grad_(not layer.frozen)
    else:
        plain.weight.requires_grad_(layer.weight.requires_grad)
    if layer.bias is not None:
        plain.bias.requires_grad_(layer.bias.requires_grad)
    return plain


def _plain(module: nn.Module) -> nn.Module | None:
    """The plain torch layer for one of Facto's (None for any other module)."""
    if isinstance(module, FactoConv2d):  # FactoConvBN too: its conv part
        return _same_flags(_plain_conv(module, module.dense_weight().detach()), module)
    if isinstance(module, ConvBN):
        return _same_flags(_plain_conv(module, module.weight.detach()), module)
    if isinstance(module, FactoLinear):
        return _same_flags(_plain_linear(module), module)
    if isinstance(module, MaskReLU):
        return nn.ReLU() if module.cap is None else nn.ReLU6() if module.cap == 6.0 else nn.Hardtanh(0.0, module.cap)
    if isinstance(module, IndexMaxPool2d):
        return nn.MaxPool2d(module.kernel_size, module.stride, module.padding, module.dilation,
                            ceil_mode=module.ceil_mode)
    return None


def to_dense(model: nn.Module) -> nn.Module:
    """A copy of `model` with plain torch layers in place of Facto's (see the module docstring).

    Works on what `factorize`, `with_relu_masks` and `fuse_recompute` return, trained or not;
    `model` itself is not changed. ValueError if a fused conv's BatchNorm has no place to go
    back to (the fusion's record was removed from the model).
    """
    _check_module(model)
    new = copy.deepcopy(model)
    fusion = fusion_report(new)
    bn_name = dict(pair.split("+", 1) for pair in (fusion.fused if fusion else []))
    replaced: list[str] = []
    for name, module in list(new.named_modules()):
        if any(name.startswith(done + ".") for done in replaced):
            continue  # inside a layer already put back (a fused conv's BatchNorm)
        plain = _plain(module)
        if plain is None:
            continue
        plain.train(module.training)
        if isinstance(module, (FactoConvBN, ConvBN)):
            if name not in bn_name:
                raise ValueError(f"model has a fused conv+BatchNorm at {name!r} but no record of where its "
                                 "BatchNorm was: use the model as factorize returned it")
            replace_module(new, bn_name[name], module.bn)
        if name:
            replace_module(new, name, plain)
        else:
            new = plain
        replaced.append(name)
    for attr in ("facto_state", "facto_fusion"):
        if attr in vars(new):
            delattr(new, attr)
    return new
