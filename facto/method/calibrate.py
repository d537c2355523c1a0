"""Closing the gap a factorization opens before any training, without training.

`recalibrate_batchnorm` re-estimates every BatchNorm's running statistics on training batches
(weights unchanged): a factorized layer's outputs have another scale than the dense layer's, and
the statistics BatchNorm kept from training no longer fit them. `refit_last_factors` goes further:
layer by layer, in model order, it refits each factorized layer's last factor by least squares so
that the layer's output on the factorized model's own inputs matches the dense layer's output on
the dense model's inputs (the error made upstream is corrected too). Neither runs unless called:
`factorize` keeps the HOSVD factors as they are.
"""
from __future__ import annotations

import time
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import FactoConv2d, FactoLinear, FactorizedLayer

__all__ = ["BATCHNORM_BATCHES", "REFIT_BATCHES", "batchnorm_layers", "calibrate", "input_of",
           "recalibrate_batchnorm", "refit_last_factors"]

REFIT_BATCHES = 2  # training batches the last factors are refitted on (resnet20: one gave the same accuracy)
BATCHNORM_BATCHES = 10  # training batches BatchNorm statistics are re-estimated on


def _check_batches(batches: object) -> int:
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ValueError(f"batches={batches!r} is not allowed: use an integer >= 1")
    return batches


def _inputs(loader: Iterable, batches: int) -> Iterable[Tensor]:
    """The first `batches` inputs of `loader` (items (x, y) or x)."""
    for i, item in enumerate(loader):
        if i >= batches:
            return
        yield item[0] if isinstance(item, (tuple, list)) else item


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of `model` that keep running statistics (fused ones included)."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader: Iterable, batches: int = 20) -> int:
    """Re-estimate BatchNorm running statistics of `model` in place from up to `batches` batches of
    `loader` (forwards under no_grad with only the BatchNorms in training mode, so dropout draws
    nothing; a plain average over the batches); weights are unchanged and the model's train/eval
    mode and each BatchNorm's momentum are put back.
    Returns the number of batches used (0 when the model has no BatchNorm with running statistics).
    """
    _check_batches(batches)
    norms = batchnorm_layers(model)
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    device = _device(model)
    used = 0
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
            m.train()
        for x in _inputs(loader, batches):
            model(x.to(device))
            used += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    if not used:
        raise ValueError("loader gave no batch: BatchNorm statistics need at least one")
    return used


class _Captured(Exception):
    """Stops a forward once the wanted layer's input is captured."""


def input_of(model: nn.Module, name: str, x: Tensor) -> Tensor:
    """The input that module `name` of `model` receives for `x`, detached (the forward stops there;
    the caller sets the mode and the grad state). ValueError when the forward never reaches it."""
    found: list[Tensor] = []

    def hook(_module, args):
        found.append(args[0].detach())
        raise _Captured

    handle = model.get_submodule(name).register_forward_pre_hook(hook)
    try:
        model(x)
    except _Captured:
        pass
    finally:
        handle.remove()
    if not found:
        raise ValueError(f"layer {name!r} is not reached by the model's forward: it cannot be refitted")
    return found[0]


def _inputs_of(model: nn.Module, names: list[str], data: list[Tensor]) -> dict[str, list[Tensor]]:
    """The inputs each module of `names` receives, one per batch of `data` (one forward per batch)."""
    found: dict[str, list[Tensor]] = {n: [] for n in names}
    handles = [model.get_submodule(n).register_forward_pre_hook(
        lambda _m, args, n=n: found[n].append(args[0].detach())) for n in names]
    try:
        for x in data:
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    unreached = [n for n in names if len(found[n]) != len(data)]
    if unreached:
        raise ValueError(f"layer {unreached[0]!r} is not reached once per forward: it cannot be refitted")
    return found


def _before_last(layer: FactorizedLayer, x: Tensor) -> Tensor:
    """What the layer's last factor receives for input `x`, channels last: (positions, rank)."""
    if isinstance(layer, FactoLinear):
        z = F.linear(x, layer.first)
        return z.reshape(-1, z.shape[-1])
    if layer.pointwise:
        z = F.conv2d(x, layer.first, None, layer.stride)
    else:
        z = F.conv2d(x, layer.first)
        z = F.conv2d(z, layer.core, None, layer.stride, layer.padding, layer.dilation)
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def _dense_output(module: nn.Module, x: Tensor) -> Tensor:
    """The dense layer's output, channels last: (positions, out)."""
    if isinstance(module, nn.Linear):
        y = F.linear(x, module.weight, module.bias)
        return y.reshape(-1, y.shape[-1])
    y = F.conv2d(x, module.weight, module.bias, module.stride, module.padding, module.dilation, module.groups)
    return y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])


def _set_last(layer: FactorizedLayer, last: Tensor) -> None:
    """Give `layer` the last factor `last` (out, r) as an orthonormal factor times the stage before it:
    last = Q R, Q becomes the last factor and R moves into the core (or the first factor of a
    two-stage layer). The layer computes the same; a frozen factor stays orthonormal, as the HOSVD
    made it, so the trained one keeps the well-conditioned gradients it had."""
    q, r = torch.linalg.qr(last)
    signs = torch.sign(torch.diagonal(r)).clamp_min(0) * 2 - 1  # positive diagonal: the unique QR
    q, r = q * signs, r * signs[:, None]
    inner = layer.first if getattr(layer, "core", None) is None else layer.core
    before = inner.detach().double().reshape(inner.shape[0], -1)
    inner.copy_((r @ before).reshape(inner.shape).to(inner.dtype))
    layer.last.copy_(q.reshape(layer.last.shape).to(layer.last.dtype))


@torch.no_grad()
def refit_last_factors(factorized: nn.Module, dense: nn.Module, loader: Iterable, batches: int = 8,
                       ridge: float = 1e-4) -> list[str]:
    """Refit each factorized layer's last factor (and bias) by least squares, in model order, in place.

    For each layer the inputs come from up to `batches` batches of `loader`: the factorized model's
    (with the layers before it refitted already) and the dense model's (`dense`, the model
    `factorized` was made from; not modified). The last factor L minimises
    ||Z L^T + b - Y||^2 + ridge * mean(diag(Z^T Z)) * ||L||^2, where Z is what the last factor
    receives and Y the dense layer's output; L is kept as an orthonormal last factor times a matrix
    folded into the stage before it (the core, or the first factor of a two-stage layer). Both models run in eval mode (their modes are put
    back). Returns the names of the layers refitted.
    """
    _check_batches(batches)
    if not isinstance(ridge, (int, float)) or isinstance(ridge, bool) or not ridge >= 0:
        raise ValueError(f"ridge={ridge!r} is not allowed: use a number >= 0")
    originals = dict(dense.named_modules())
    layers = [(n, m) for n, m in factorized.named_modules() if isinstance(m, (FactoConv2d, FactoLinear))]
    missing = [n for n, _ in layers if not isinstance(originals.get(n), (nn.Conv2d, nn.Linear))]
    if missing:
        raise ValueError(f"dense={type(dense).__name__} is not allowed: it has no conv/linear layer {missing[0]!r}; "
                         "pass the model `factorized` was made from")
    modes = factorized.training, dense.training
    factorized.eval()
    dense.eval()
    device = _device(factorized)
    data = [x.to(device) for x in _inputs(loader, batches)]
    if not data:
        raise ValueError("loader gave no batch: the refit needs at least one")
    done = []
    try:
        targets = _inputs_of(dense, [n for n, _ in layers], data)  # the dense model does not change
        for name, layer in layers:
            gram = rhs = None
            for x, dense_x in zip(data, targets[name]):
                z = _before_last(layer, input_of(factorized, name, x)).double()
                y = _dense_output(originals[name], dense_x).double()
                ones = torch.ones(z.shape[0], 1, dtype=z.dtype, device=z.device)
                za = torch.cat([z, ones], 1) if layer.bias is not None else z
                gram = za.t() @ za if gram is None else gram + za.t() @ za
                rhs = za.t() @ y if rhs is None else rhs + za.t() @ y
            r = layer.last.shape[1]
            penalty = ridge * float(gram[:r, :r].diagonal().mean().clamp_min(1e-30))
            reg = torch.zeros_like(gram)
            reg[range(r), range(r)] = penalty
            solution = torch.linalg.solve(gram + reg, rhs)  # (r [+1], out)
            _set_last(layer, solution[:r].t())
            if layer.bias is not None:
                layer.bias.copy_(solution[r].to(layer.bias.dtype))
            done.append(name)
    finally:
        factorized.train(modes[0])
        dense.train(modes[1])
    return done


def calibrate(factorized: nn.Module, dense: nn.Module, loader: Iterable, refit: bool = True,
              refit_batches: int = REFIT_BATCHES, batchnorm_batches: int = BATCHNORM_BATCHES) -> dict:
    """Fit `factorized` to the trained `dense` it was made from, in place, without labels or gradients:
    its last factors refitted (`refit`), then its BatchNorm statistics re-estimated, on batches of
    `loader`. Returns what was done as a JSON-ready dict with its `line` in words."""
    began = time.perf_counter()
    refitted = refit_last_factors(factorized, dense, loader, batches=refit_batches) if refit else []
    batches = recalibrate_batchnorm(factorized, loader, batches=batchnorm_batches)
    done = [f"last factors refitted to the dense layers' outputs in {len(refitted)} layers "
            f"({refit_batches} training batches)"] if refit else []
    if batches:
        done.append(f"BatchNorm statistics re-estimated on {batches} training batches")
    return {"refitted": refitted, "batchnorm_batches": batches, "seconds": time.perf_counter() - began,
            "line": "Facto fitted to the trained weights: " + (", ".join(done) or "nothing to fit")}
