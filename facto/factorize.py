"""Decomposition (TensorLy Tucker-2 / SVD), rank policies, model surgery and the report."""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Iterable, Mapping, Union

import numpy as np
import tensorly as tl
import torch
from tensorly.decomposition import partial_tucker
from torch import Tensor, nn

from .layers import FactoConv2d, FactoLinear, MaskReLU, _Factorized, validate_update

RankSpec = Union[float, int, str]
RankArg = Union[RankSpec, Mapping[str, RankSpec]]


# ----------------------------------------------------------------------------- rank policies

@dataclass(frozen=True)
class RankPolicy:
    """A parsed rank: kind is fraction | absolute | energy | vbmf; value is its number."""

    kind: str
    value: float

    def __str__(self) -> str:
        if self.kind == "fraction":
            return f"{self.value:g}"
        if self.kind == "absolute":
            return str(int(self.value))
        return f"{self.kind}:{self.value:g}"


RANK_HELP = "a float in (0, 1], an int >= 1, 'energy:<frac in (0, 1]>' or 'vbmf' / 'vbmf:<floor frac>'"


def parse_rank(rank: RankSpec, name: str = "rank") -> RankPolicy:
    """Parse one rank spec (numbers also given as strings, as from a CLI)."""
    bad = ValueError(f"{name}={rank!r} is not allowed: use {RANK_HELP}")
    if isinstance(rank, bool):
        raise bad
    if isinstance(rank, str):
        text = rank.strip().lower()
        if text.startswith("energy:"):
            frac = _to_float(text[len("energy:"):], bad)
            if not 0 < frac <= 1:
                raise bad
            return RankPolicy("energy", frac)
        if text == "vbmf" or text.startswith("vbmf:"):
            floor = _to_float(text[5:], bad) if ":" in text else 0.1
            if not 0 < floor <= 1:
                raise bad
            return RankPolicy("vbmf", floor)
        try:
            rank = int(text)
        except ValueError:
            rank = _to_float(text, bad)
    if isinstance(rank, (int, np.integer)):
        if rank < 1:
            raise bad
        return RankPolicy("absolute", int(rank))
    if isinstance(rank, (float, np.floating)):
        if not (0 < rank <= 1) or math.isnan(rank):
            raise bad
        return RankPolicy("fraction", float(rank))
    raise bad


def rank_from_text(text: str) -> RankSpec:
    """A rank typed by a user (CLI, app): '0.5' -> 0.5, '16' -> 16, 'energy:0.9' stays text.

    Validation is `parse_rank`'s job (RunConfig calls it); this only picks the type.
    """
    text = str(text).strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _to_float(text: str, error: Exception) -> float:
    try:
        return float(text)
    except ValueError:
        raise error from None


def choose_rank(policy: RankPolicy, matrix: Tensor, dim: int) -> tuple[int, int]:
    """Rank for one mode from its unfolding `matrix` (dim rows): (clamped rank, requested rank)."""
    if policy.kind == "fraction":
        wanted = max(1, round(policy.value * dim))
    elif policy.kind == "absolute":
        wanted = int(policy.value)
    elif policy.kind == "energy":
        s2 = torch.linalg.svdvals(matrix.double()) ** 2
        share = torch.cumsum(s2, 0) / s2.sum().clamp_min(1e-300)
        wanted = int((share < policy.value - 1e-12).sum().item()) + 1
    else:  # vbmf, with a floor: EVBMF gives 0 on untrained (noise-like) weights
        found = evbmf_rank(matrix)
        wanted = max(found, math.ceil(policy.value * dim))
    return min(max(wanted, 1), dim), wanted


def evbmf_rank(matrix: Tensor) -> int:
    """Rank estimated by empirical variational Bayes matrix factorization (Nakajima et al. 2013)."""
    from scipy.optimize import minimize_scalar

    y = matrix.detach().double().cpu().numpy()
    if y.shape[0] > y.shape[1]:
        y = y.T
    rows, cols = y.shape
    s = np.linalg.svd(y, compute_uv=False)
    alpha = rows / cols
    tau_bar = 2.5129 * math.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    h_ub = min(math.ceil(rows / (1 + alpha)) - 1, rows) - 1
    upper = (s ** 2).sum() / (rows * cols)
    tail = s[h_ub + 1:] if h_ub + 1 < len(s) else s[-1:]
    lower = max(tail[0] ** 2 / (cols * x_bar), float(np.mean(tail ** 2)) / cols)
    if not upper > lower > 0:
        return 0

    def objective(sigma2: float) -> float:
        x = s ** 2 / (cols * sigma2)
        big, small = x[x > x_bar], x[x <= x_bar]
        tau = 0.5 * (big - (1 + alpha) + np.sqrt((big - (1 + alpha)) ** 2 - 4 * alpha))
        return float(np.sum(small - np.log(small)) + np.sum(big - tau)
                     + np.sum(np.log((tau + 1) / big)) + alpha * np.sum(np.log(tau / alpha + 1)))

    sigma2 = minimize_scalar(objective, bounds=(lower, upper), method="bounded").x
    threshold = math.sqrt(cols * sigma2 * (1 + tau_bar) * (1 + alpha / tau_bar))
    return int((s > threshold).sum())


# ----------------------------------------------------------------------------- decomposition

@dataclass(frozen=True)
class FactorInfo:
    """What a factorized layer remembers of its origin (for `describe`)."""

    requested: str
    requested_ranks: tuple[int, int]
    clamped: bool
    weight_shape: tuple[int, ...]
    params_before: int
    rel_error: float
    method: str
    seconds: float


def _rel_error(dense: Tensor, approx: Tensor) -> float:
    return float((dense - approx).norm() / dense.norm().clamp_min(1e-12))


def decompose_conv(conv: nn.Conv2d, rank: RankArg = 0.25, update: str = "last",
                   n_iter_max: int = 0) -> FactoConv2d:
    """Factorize a groups=1 Conv2d: Tucker-2 on (Cout, Cin), or truncated SVD for 1x1 kernels."""
    if conv.groups != 1:
        raise ValueError(f"conv groups={conv.groups} cannot be factorized: only groups=1")
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"conv padding={conv.padding!r}, padding_mode={conv.padding_mode!r} not supported")
    policy = rank if isinstance(rank, RankPolicy) else parse_rank(rank)
    validate_update(update)
    start = time.perf_counter()
    w = conv.weight.detach().float()
    cout, cin, kh, kw = w.shape
    pointwise = (kh, kw) == (1, 1)
    if pointwise:
        r, wanted = choose_rank(policy, w.view(cout, cin), min(cout, cin))
        ranks, requested = (r, r), (wanted, wanted)
    else:
        r_out, want_out = choose_rank(policy, w.reshape(cout, -1), cout)
        r_in, want_in = choose_rank(policy, w.transpose(0, 1).reshape(cin, -1), cin)
        ranks, requested = (r_out, r_in), (want_out, want_in)
    layer = FactoConv2d(cin, cout, (kh, kw), ranks, conv.stride, conv.padding, conv.dilation,
                        bias=conv.bias is not None, update=update).to(w.device)
    with torch.no_grad():
        if pointwise:
            first, last = _svd_factors(w.view(cout, cin), ranks[0])
            layer.first.copy_(first[:, :, None, None])
            layer.last.copy_(last[:, :, None, None])
        else:
            core, u_out, u_in = tucker2(w, ranks, n_iter_max)
            layer.first.copy_(u_in.t()[:, :, None, None])
            layer.core.copy_(core)
            layer.last.copy_(u_out[:, :, None, None])
        if conv.bias is not None:
            layer.bias.copy_(conv.bias.detach())
        error = _rel_error(w, layer.dense_weight())
    layer.to(dtype=conv.weight.dtype)
    layer.facto_info = FactorInfo(
        requested=str(policy), requested_ranks=requested, clamped=requested != ranks,
        weight_shape=tuple(w.shape), params_before=_params(conv), rel_error=error,
        method="svd" if pointwise else "tucker2", seconds=time.perf_counter() - start)
    return layer


def decompose_linear(linear: nn.Linear, rank: RankArg = 0.25, update: str = "last") -> FactoLinear:
    """Factorize a Linear layer by truncated SVD, keeping its weights."""
    policy = rank if isinstance(rank, RankPolicy) else parse_rank(rank)
    validate_update(update)
    start = time.perf_counter()
    w = linear.weight.detach().float()
    r, wanted = choose_rank(policy, w, min(w.shape))
    layer = FactoLinear(w.shape[1], w.shape[0], r, bias=linear.bias is not None,
                        update=update).to(w.device)
    with torch.no_grad():
        first, last = _svd_factors(w, r)
        layer.first.copy_(first)
        layer.last.copy_(last)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        error = _rel_error(w, layer.dense_weight())
    layer.to(dtype=linear.weight.dtype)
    layer.facto_info = FactorInfo(
        requested=str(policy), requested_ranks=(wanted, wanted), clamped=wanted != r,
        weight_shape=tuple(w.shape), params_before=_params(linear), rel_error=error,
        method="svd", seconds=time.perf_counter() - start)
    return layer


def _svd_factors(w: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """W (out, in) ~ last @ first with rank r, balanced: first = sqrt(S) V^T, last = U sqrt(S).

    The leading singular vectors come from the Gram matrix of the short side, which is far
    faster than a full SVD for the wide matrices of classifier layers.
    """
    if w.shape[0] > w.shape[1]:
        first, last = _svd_factors(w.t(), r)
        return last.t().contiguous(), first.t().contiguous()
    u = leading_vectors(w, r)  # (out, r)
    sv = u.t() @ w  # (r, in) = S V^T
    root = sv.norm(dim=1).sqrt().clamp_min(1e-12)
    return sv / root[:, None], u * root[None, :]


def tucker2(w: Tensor, ranks: tuple[int, int], n_iter_max: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Tucker-2 of a (Cout, Cin, kh, kw) weight: core, U_out, U_in.

    HOSVD initialisation from the Gram matrices of the two unfoldings (an eigh of a
    Cout x Cout and a Cin x Cin matrix: ~10x faster than TensorLy's SVD of the wide
    unfoldings on CPU, same subspaces), then TensorLy's `partial_tucker` (HOOI) refines
    it for `n_iter_max` iterations (0 keeps the HOSVD).
    """
    u_out = leading_vectors(w.reshape(w.shape[0], -1), ranks[0])
    u_in = leading_vectors(w.transpose(0, 1).reshape(w.shape[1], -1), ranks[1])
    with tl.backend_context("pytorch"):
        core = tl.tenalg.multi_mode_dot(w, [u_out, u_in], modes=[0, 1], transpose=True)
        (core, (u_out, u_in)), _ = partial_tucker(w, rank=list(ranks), modes=[0, 1],
                                                  init=(core, [u_out, u_in]), n_iter_max=n_iter_max)
    return core, u_out, u_in


def leading_vectors(matrix: Tensor, r: int) -> Tensor:
    """The r leading left singular vectors of `matrix` (rows x cols), via eigh of its Gram matrix."""
    gram = matrix.double() @ matrix.double().t()
    _, vectors = torch.linalg.eigh(gram)  # ascending eigenvalues
    return vectors[:, -r:].flip(1).to(matrix.dtype).contiguous()


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- model surgery

MASKABLE = (nn.ReLU, nn.ReLU6)


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _replace_relus(model: nn.Module) -> int:
    """Swap every nn.ReLU / nn.ReLU6 for a MaskReLU in place; returns how many."""
    names = [n for n, m in model.named_modules() if type(m) in MASKABLE]
    for name in names:
        cap = 6.0 if isinstance(model.get_submodule(name), nn.ReLU6) else None
        _set_module(model, name, MaskReLU(cap))
    return len(names)


def with_relu_masks(model: nn.Module) -> nn.Module:
    """A copy of `model` whose ReLUs keep 1-bit masks (compression-only, ActNN-style training)."""
    new = copy.deepcopy(model)
    _replace_relus(new)
    return new


def _check_names(model: nn.Module, names: Iterable[str], argument: str) -> None:
    known = {n for n, _ in model.named_modules() if n}
    unknown = sorted(set(names) - known - {"*"})
    if unknown:
        layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        hint = ", ".join(layers[:8]) + (" ..." if len(layers) > 8 else "")
        raise ValueError(f"{argument} names {unknown} which are not layers of the model "
                         f"(its conv/linear layers: {hint})")


def factorize(model: nn.Module, rank: RankArg = 0.25, update: str = "last",
              skip: Iterable[str] | None = None, *, skip_first_conv: bool = True,
              skip_output_layer: bool = True, relu_masks: bool = True,
              n_iter_max: int = 0, recompute: bool = False) -> nn.Module:
    """Return a factorized copy of `model`; the input model is not modified.

    Args:
        rank: one spec for every layer, or a dict layer name -> spec (key '*' for the rest;
            layers missing from a dict without '*' stay dense).
        update: which factor trains: first | core | last | all.
        skip: names of layers to leave dense (a block's name leaves every layer inside it dense).
        skip_first_conv: leave the first conv (on the image, few input channels) dense.
        skip_output_layer: leave the last Linear (the classifier) dense.
        relu_masks: ReLUs keep 1-bit masks (see `with_relu_masks`).
        n_iter_max: Tucker (HOOI) iterations after the HOSVD init; 0 is plain HOSVD.
        recompute: fuse each conv (factorized or dense) with the BatchNorm2d it feeds and
            recompute BN's input in backward instead of storing it; max-pools keep indices
            only (`facto.fuse.fuse_recompute`).
    """
    validate_update(update)
    skip = list(skip or [])
    _check_names(model, skip, "skip")
    if isinstance(rank, Mapping):
        _check_names(model, rank.keys(), "rank")
        policies = {k: parse_rank(v, f"rank[{k!r}]") for k, v in rank.items()}
    else:
        policies = {"*": parse_rank(rank)}
    new = copy.deepcopy(model)
    layers = [(n, m) for n, m in new.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    first_conv = next((n for n, m in layers if isinstance(m, nn.Conv2d)), None)
    output_layer = next((n for n, m in reversed(layers) if isinstance(m, nn.Linear)), None)
    skipped: dict[str, str] = {}
    for name, module in layers:
        reason = _skip_reason(name, module, skip, policies, first_conv if skip_first_conv else None,
                              output_layer if skip_output_layer else None)
        if reason:
            skipped[name] = reason
            continue
        policy = policies.get(name, policies.get("*"))
        if isinstance(module, nn.Conv2d):
            _set_module(new, name, decompose_conv(module, policy, update, n_iter_max))
        else:
            _set_module(new, name, decompose_linear(module, policy, update))
    if relu_masks:
        _replace_relus(new)
    new.facto_skipped = skipped
    new.facto_update = update
    if recompute:
        from .fuse import fuse_recompute  # late import: fuse imports layers, as this module does
        fuse_recompute(new)
    return new


def _skip_reason(name: str, module: nn.Module, skip: list[str], policies: dict,
                 first_conv: str | None, output_layer: str | None) -> str | None:
    if any(name == s or name.startswith(s + ".") for s in skip):
        return "skipped by request (skip=)"
    if name not in policies and "*" not in policies:
        return "not in the rank dict"
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            kind = "depthwise" if module.groups == module.in_channels else "grouped"
            return f"{kind} conv (groups={module.groups}) stays dense"
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            return f"padding={module.padding!r}/{module.padding_mode} is not supported"
        if name == first_conv:
            return f"first conv on the image ({module.in_channels} input channels)"
    elif name == output_layer:
        return "output layer (classifier) stays dense"
    return None


# ----------------------------------------------------------------------------- the report

@dataclass(frozen=True)
class LayerReport:
    """One row of `describe`: a conv/linear layer, factorized or left dense (with the reason)."""

    name: str
    kind: str  # "factorized" | "dense"
    layer_type: str  # "Conv2d" | "Linear"
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
    skipped = getattr(model, "facto_skipped", {})
    rows = []
    for name, m in model.named_modules():
        trainable = sum(p.numel() for p in m.parameters(recurse=False) if p.requires_grad)
        if isinstance(m, _Factorized):
            info: FactorInfo | None = getattr(m, "facto_info", None)
            clamped = bool(info and info.clamped)
            rows.append(LayerReport(
                name=name, kind="factorized", layer_type="Conv2d" if isinstance(m, FactoConv2d) else "Linear",
                method=info.method if info else None,
                weight_shape=info.weight_shape if info else tuple(m.dense_weight().shape),
                ranks=tuple(m.ranks), requested=info.requested if info else None, clamped=clamped,
                params_before=info.params_before if info else m.dense_weight().numel(),
                params_after=m.factor_parameters(), trainable_params=trainable,
                rel_error=info.rel_error if info else None, update=m.update,
                reason=(f"rank clamped from {info.requested_ranks} to {tuple(m.ranks)}" if clamped else None)))
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            params = sum(p.numel() for p in m.parameters(recurse=False))  # a fused BN is not the layer's
            rows.append(LayerReport(
                name=name, kind="dense", layer_type="Conv2d" if isinstance(m, nn.Conv2d) else "Linear",
                method=None,
                weight_shape=tuple(m.weight.shape), ranks=None, requested=None, clamped=False,
                params_before=params, params_after=params, trainable_params=trainable,
                rel_error=None, update=None, reason=skipped.get(name, "not factorized")))
    return rows


def format_report(rows: list[LayerReport]) -> str:
    """The report as a plain-text table (CLI)."""
    header = f"{'layer':<28} {'kind':<10} {'shape':<18} {'ranks':<11} {'params':>17} {'train':>9} {'error':>7}  note"
    lines = [header, "-" * len(header)]
    for r in rows:
        ranks = "" if r.ranks is None else f"{r.ranks[0]},{r.ranks[1]}"
        err = "" if r.rel_error is None else f"{r.rel_error:.3f}"
        lines.append(f"{r.name:<28} {r.kind:<10} {'x'.join(map(str, r.weight_shape)):<18} {ranks:<11} "
                     f"{r.params_before:>8}->{r.params_after:<8} {r.trainable_params:>9} {err:>7}  {r.reason or ''}")
    n = sum(r.kind == "factorized" for r in rows)
    lines.append(f"{n} of {len(rows)} layers factorized" if n else "nothing was factorized: every layer stays dense")
    return "\n".join(lines)
