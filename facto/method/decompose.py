"""The decomposition math, with no layers and no models: rank policies, Tucker-2 and SVD factors.

`facto.method.layers` builds factorized layers from these factors; `facto.method.factorize` walks a
model and swaps its layers. TensorLy and SciPy are imported only when used.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..config import RankPolicy


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


# ----------------------------------------------------------------------------- factors

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


@dataclass(frozen=True)
class ConvFactors:
    """Factors of a (Cout, Cin, kh, kw) conv weight.

    Tucker-2 (kernel > 1x1): first (R_in, Cin), core (R_out, R_in, kh, kw), last (Cout, R_out).
    SVD (1x1 kernel): first (R, Cin), core None, last (Cout, R).
    """

    first: Tensor
    core: Tensor | None
    last: Tensor
    ranks: tuple[int, int]
    requested: tuple[int, int]
    method: str
    started: float


def conv_factors(weight: Tensor, policy: RankPolicy, n_iter_max: int = 0) -> ConvFactors:
    """Tucker-2 on the channel modes of a conv weight, or truncated SVD for a 1x1 kernel."""
    started = time.perf_counter()
    w = weight.detach().float()
    cout, cin, kh, kw = w.shape
    if (kh, kw) == (1, 1):
        r, wanted = choose_rank(policy, w.view(cout, cin), min(cout, cin))
        first, last = svd_factors(w.view(cout, cin), r)
        return ConvFactors(first, None, last, (r, r), (wanted, wanted), "svd", started)
    r_out, want_out = choose_rank(policy, w.reshape(cout, -1), cout)
    r_in, want_in = choose_rank(policy, w.transpose(0, 1).reshape(cin, -1), cin)
    core, u_out, u_in = tucker2(w, (r_out, r_in), n_iter_max)
    return ConvFactors(u_in.t().contiguous(), core, u_out, (r_out, r_in), (want_out, want_in), "tucker2",
                       started)


def rel_error(dense: Tensor, approx: Tensor) -> float:
    """||dense - approx|| / ||dense||."""
    return float((dense - approx).norm() / dense.norm().clamp_min(1e-12))


def svd_factors(w: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """W (out, in) ~ last @ first with rank r, balanced: first = sqrt(S) V^T, last = U sqrt(S).

    The leading singular vectors come from the Gram matrix of the short side, which is far
    faster than a full SVD for the wide matrices of classifier layers.
    """
    if w.shape[0] > w.shape[1]:
        first, last = svd_factors(w.t(), r)
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
    it for `n_iter_max` iterations (0 keeps the HOSVD and needs no TensorLy).
    """
    u_out = leading_vectors(w.reshape(w.shape[0], -1), ranks[0])
    u_in = leading_vectors(w.transpose(0, 1).reshape(w.shape[1], -1), ranks[1])
    core = torch.einsum("oihw,or,is->rshw", w, u_out, u_in)
    if n_iter_max <= 0:
        return core.contiguous(), u_out, u_in
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    with tl.backend_context("pytorch"):
        (core, (u_out, u_in)), _ = partial_tucker(w, rank=list(ranks), modes=[0, 1],
                                                  init=(core, [u_out, u_in]), n_iter_max=n_iter_max)
    return core, u_out, u_in


def leading_vectors(matrix: Tensor, r: int) -> Tensor:
    """The r leading left singular vectors of `matrix` (rows x cols), via eigh of its Gram matrix."""
    gram = matrix.double() @ matrix.double().t()
    _, vectors = torch.linalg.eigh(gram)  # ascending eigenvalues
    return vectors[:, -r:].flip(1).to(matrix.dtype).contiguous()
