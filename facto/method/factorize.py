"""Model surgery: factorize every conv/linear layer of a model, and the report of what was done.

The decomposition math lives in `facto.method.decompose`, the layers in `facto.method.layers`, the
recompute fusion in `facto.method.recompute`; this module walks a model and puts them together.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Union

from torch import nn

from ..config import RankPolicy, RankSpec, parse_rank, validate_update
from .layers import FactoConv2d, FactoLinear, FactorizedLayer, MaskReLU, aliases, numeric_padding, replace_module
from .recompute import ConvBN, fuse_recompute

RankArg = Union[RankSpec, Mapping[str, RankSpec]]

# ----------------------------------------------------------------------------- model surgery

MASKABLE = (nn.ReLU, nn.ReLU6)


@dataclass
class FactoState:
    """What `factorize` did to a model (kept on it as `model.facto_state`).

    A factorized model is rebuilt by calling `factorize` again with the same `options` on
    the same dense model; each factorized layer carries its own `FactorInfo` in its
    state_dict, so the rebuilt model loads a saved state_dict and `describe` reports it.
    What the recompute fusion did is `facto.method.recompute.fusion_report(model)`.
    """

    options: dict
    skipped: dict[str, str] = field(default_factory=dict)


def facto_state(model: nn.Module) -> FactoState | None:
    """The `FactoState` of a model made by `factorize` (None for any other model)."""
    state = getattr(model, "facto_state", None)
    return state if isinstance(state, FactoState) else None


def _replace_relus(model: nn.Module) -> int:
    """Swap every nn.ReLU / nn.ReLU6 for a MaskReLU in place; returns how many."""
    names = [n for n, m in model.named_modules() if type(m) in MASKABLE]
    for name in names:
        relu = model.get_submodule(name)
        cap = 6.0 if isinstance(relu, nn.ReLU6) else None
        replace_module(model, name, MaskReLU(cap, relu.inplace))
    return len(names)


def with_relu_masks(model: nn.Module) -> nn.Module:
    """A copy of `model` whose ReLUs keep 1-bit masks (compression-only, ActNN-style training)."""
    _check_module(model)
    new = copy.deepcopy(model)
    _replace_relus(new)
    return new


def _check_module(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model={type(model).__name__} is not allowed: use a torch.nn.Module")


def _skip_names(skip: Iterable[str] | str | None) -> list[str]:
    """skip= as a list of names: None, one name, or an iterable of names."""
    if skip is None:
        return []
    if isinstance(skip, str):
        return [skip]
    names = list(skip) if isinstance(skip, Iterable) else None
    if names is None or not all(isinstance(n, str) for n in names):
        raise ValueError(f"skip={skip!r} is not allowed: use a layer name or a list of layer names")
    return names


def _check_names(model: nn.Module, names: Iterable[str], argument: str) -> None:
    known = {n for n, _ in model.named_modules(remove_duplicate=False) if n}  # a shared layer's every name
    unknown = sorted(set(names) - known - {"*"})
    if unknown:
        layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        hint = ", ".join(layers[:8]) + (" ..." if len(layers) > 8 else "")
        raise ValueError(f"{argument} names {unknown} which are not layers of the model "
                         f"(its conv/linear layers: {hint})")


def factorize(model: nn.Module, rank: RankArg = 0.5, update: str = "core",
              skip: Iterable[str] | str | None = None, *, skip_first_conv: bool = True,
              skip_output_layer: bool = True, relu_masks: bool = True,
              n_iter_max: int = 0, recompute: bool = True) -> nn.Module:
    """Return a factorized copy of `model`; the input model is not modified.

    Args:
        rank: one spec for every layer, or a dict layer name -> spec (key '*' for the rest;
            layers missing from a dict without '*' stay dense).
        update: which factor trains: first | core | last | all.
        skip: a name or names of layers to leave dense (a block's name leaves every layer
            inside it dense).
        skip_first_conv: leave the first conv (on the image, few input channels) dense.
        skip_output_layer: leave the last Linear (the classifier) dense.
        relu_masks: ReLUs keep 1-bit masks (see `with_relu_masks`).
        n_iter_max: Tucker (HOOI) iterations after the HOSVD init; 0 is plain HOSVD.
        recompute: fuse each conv (factorized or dense) with the BatchNorm2d it feeds and
            recompute BN's input in backward instead of storing it; max-pools keep indices
            only (`facto.method.recompute.fuse_recompute`). On by default, as in `RunConfig`.

    The defaults (rank 0.5, update core, recompute on) are those of `facto.RunConfig`.
    A layer you froze (its weight does not require grad) is factorized with every factor
    frozen: it trains nothing and keeps nothing for its weights' gradients.
    """
    _check_module(model)
    meta = next((n for n, p in model.named_parameters() if p.is_meta), None)
    if meta is not None:  # a meta tensor has a shape but no values to decompose
        raise ValueError(f"model on device 'meta' is not allowed: parameter {meta!r} has no values to factorize; "
                         "load or initialise the weights on cpu or cuda first (e.g. model.to_empty(device='cpu'))")
    validate_update(update)
    skip = _skip_names(skip)
    _check_names(model, skip, "skip")
    if isinstance(n_iter_max, bool) or not isinstance(n_iter_max, int) or n_iter_max < 0:
        raise ValueError(f"n_iter_max={n_iter_max!r} is not allowed: use an integer >= 0")
    options = dict(rank={k: str(parse_rank(v)) for k, v in rank.items()} if isinstance(rank, Mapping)
                   else str(parse_rank(rank)), update=update, skip=skip, skip_first_conv=skip_first_conv,
                   skip_output_layer=skip_output_layer, relu_masks=relu_masks, n_iter_max=n_iter_max,
                   recompute=recompute)
    if isinstance(rank, Mapping):
        _check_names(model, rank.keys(), "rank")
        policies = {k: RankPolicy.parse(v, f"rank[{k!r}]") for k, v in rank.items()}
    else:
        policies = {"*": RankPolicy.parse(rank)}
    new = copy.deepcopy(model)
    layers = [(n, m) for n, m in new.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    first_conv = next((n for n, m in layers if isinstance(m, nn.Conv2d)), None)
    output_layer = next((n for n, m in reversed(layers) if isinstance(m, nn.Linear)), None)
    skipped: dict[str, str] = {}
    for name, module in layers:
        names = aliases(new, module) or [name]  # skip= and a rank dict may use any name of a shared layer
        reason = _skip_reason(names, module, skip, policies, first_conv if skip_first_conv else None,
                              output_layer if skip_output_layer else None)
        if reason:
            skipped[name] = reason
            continue
        policy = next((policies[n] for n in names if n in policies), policies.get("*"))
        if isinstance(module, nn.Conv2d):
            layer = FactoConv2d.from_conv(module, policy, update, n_iter_max)
        else:
            layer = FactoLinear.from_linear(module, policy, update)
        _keep_frozen(module, layer)
        replace_module(new, name, layer, names)
    if relu_masks:
        _replace_relus(new)
    if recompute:
        fuse_recompute(new)
    new.facto_state = FactoState(options=options, skipped=skipped)
    return new


def _keep_frozen(dense: nn.Module, layer: FactorizedLayer) -> None:
    """A layer the user froze (weight.requires_grad False) stays frozen: no factor trains, and
    every stage runs without storing its input. The bias keeps its own flag."""
    if not dense.weight.requires_grad:
        for stage in layer.stage_names:
            getattr(layer, stage).requires_grad_(False)
    if layer.bias is not None:
        layer.bias.requires_grad_(dense.bias.requires_grad)


def _skip_reason(names: list[str], module: nn.Module, skip: list[str], policies: dict,
                 first_conv: str | None, output_layer: str | None) -> str | None:
    """Why the layer (known by `names`) stays dense, or None."""
    if any(n == s or n.startswith(s + ".") for n in names for s in skip):
        return "skipped by request (skip=)"
    if "*" not in policies and not any(n in policies for n in names):
        return "not in the rank dict"
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            kind = "depthwise" if module.groups == module.in_channels else "grouped"
            return f"{kind} conv (groups={module.groups}) stays dense"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r} is not supported (zero padding only)"
        if numeric_padding(module) is None:
            return f"padding={module.padding!r} with an even kernel pads unevenly: not supported"
        if first_conv in names:
            n = module.in_channels
            return f"first conv on the image ({n} input channel{'' if n == 1 else 's'})"
    elif output_layer in names:
        return "output layer (classifier) stays dense"
    return None


# ----------------------------------------------------------------------------- the report

@dataclass(frozen=True)
class LayerReport:
    """One row of `describe`: a conv/linear layer, factorized or left dense (with the reason)."""

    name: str
    kind: str  # "factorized" | "dense"
    layer_type: str  # "Conv2d" | "Linear", or another conv type that stays dense ("Conv1d", ...)
    method: str | None  # "tucker2" | "svd" | None
    weight_shape: tuple[int, ...]
    ranks: tuple[int, int] | None
    requested: str | None
    clamped: bool
    params_before: int
    params_after: int
    trainable_params: int
    rel_error: float | None
    update: str | None
    reason: str | None


def describe(model: nn.Module) -> list[LayerReport]:
    """One row per conv/linear layer: how it was factorized, or why it stayed dense."""
    _check_module(model)
    state = facto_state(model)
    skipped = state.skipped if state else {}
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, FactorizedLayer):
            info = m.info
            clamped = bool(info and info.clamped)
            rows.append(LayerReport(
                name=name, kind="factorized", layer_type="Conv2d" if isinstance(m, FactoConv2d) else "Linear",
                method=info.method if info else None,
                weight_shape=info.weight_shape if info else tuple(m.dense_weight().shape),
                ranks=tuple(m.ranks), requested=info.requested if info else None, clamped=clamped,
                params_before=info.params_before if info else m.dense_weight().numel(),
                params_after=m.factor_parameters(),
                trainable_params=sum(p.numel() for p in _own_parameters(m) if p.requires_grad),
                rel_error=info.rel_error if info else None, update=m.update,
                reason=(f"rank clamped from {info.requested_ranks} to {tuple(m.ranks)}" if clamped
                        else "frozen (as in the given model): no factor trains" if m.frozen else None)))
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            rows.append(_dense_row(name, m, _base_type(m), skipped.get(name) or _not_plain(m)))
        elif isinstance(m, nn.modules.conv._ConvNd) and not isinstance(m, nn.modules.lazy.LazyModuleMixin):
            kind = type(m).__name__
            rows.append(_dense_row(name, m, kind, f"{kind} stays dense (Facto factorizes Conv2d and Linear)"))
    return rows


def _dense_row(name: str, m: nn.Module, layer_type: str, reason: str) -> LayerReport:
    """The report's row of a layer left dense."""
    own = _own_parameters(m)
    params = sum(p.numel() for p in own)
    return LayerReport(name=name, kind="dense", layer_type=layer_type, method=None,
                       weight_shape=tuple(m.weight.shape), ranks=None, requested=None, clamped=False,
                       params_before=params, params_after=params,
                       trainable_params=sum(p.numel() for p in own if p.requires_grad),
                       rel_error=None, update=None, reason=reason)


def _base_type(m: nn.Module) -> str:
    """"Conv2d" or "Linear": which of the two `m` is (a subclass too)."""
    return "Conv2d" if isinstance(m, nn.Conv2d) else "Linear"


def _own_parameters(m: nn.Module) -> list[nn.Parameter]:
    """A layer's parameters, with those of a parametrization (weight_norm...) and without those
    of the BatchNorm a recompute fusion holds (not the layer's)."""
    return [p for name, p in m.named_parameters() if not name.startswith("bn.")]


def _not_plain(m: nn.Module) -> str:
    """Why a conv/linear layer factorize never looked at stayed dense."""
    if getattr(m, "parametrizations", None):
        return f"a {_base_type(m)} with a parametrized {', '.join(m.parametrizations)} (weight_norm, ...) stays dense"
    if isinstance(m, ConvBN):
        return "not factorized (fused with its BatchNorm)"
    if type(m) not in (nn.Conv2d, nn.Linear):
        return f"{type(m).__name__} (a subclass of {_base_type(m)}: it may compute differently) stays dense"
    return "not factorized"


def format_report(rows: list[LayerReport]) -> str:
    """The report as a plain-text table (CLI)."""
    width = max([28, *(len(r.name) for r in rows)])  # long names (a transformer's) keep the columns
    header = (f"{'layer':<{width}} {'kind':<10} {'shape':<18} {'ranks':<11} {'params':>17} {'train':>9} "
              f"{'error':>7}  note")
    lines = [header, "-" * len(header)]
    for r in rows:
        ranks = "" if r.ranks is None else f"{r.ranks[0]},{r.ranks[1]}"
        err = "" if r.rel_error is None else f"{r.rel_error:.3f}"
        lines.append(f"{r.name:<{width}} {r.kind:<10} {'x'.join(map(str, r.weight_shape)):<18} {ranks:<11} "
                     f"{r.params_before:>8}->{r.params_after:<8} {r.trainable_params:>9} {err:>7}  {r.reason or ''}")
    n = sum(r.kind == "factorized" for r in rows)
    lines.append(f"{n} of {len(rows)} layers factorized" if n else "nothing was factorized: every layer stays dense")
    return "\n".join(lines)
