"""The spectrum of each layer `factorize` factorizes: singular values of its two channel unfoldings,
the rank chosen per mode and the share of energy (squared singular values) that rank keeps.

Math only: the layers and their ranks come from `factorize` itself (same skip rules, same rank
policy through `facto.method.decompose.choose_rank`), the singular values from an SVD of the dense
weight. For a conv weight W (Cout, Cin, kh, kw) mode 0 is the (Cout, Cin*kh*kw) unfolding and
mode 1 the (Cin, Cout*kh*kw) one; a 1x1 conv or a Linear layer is one (out, in) matrix, whose
two modes share one spectrum.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor, nn

from .factorize import RankArg, factorize
from .layers import FactoConv2d, FactorizedLayer

__all__ = ["ModeSpectrum", "LayerSpectrum", "mode_spectrum", "unfoldings", "layer_spectra"]


@dataclass(frozen=True)
class ModeSpectrum:
    """One unfolding's singular values (descending), the rank kept and the energy share it keeps."""

    singular_values: tuple[float, ...]
    rank: int

    @property
    def energy_kept(self) -> float:
        """sum of the `rank` largest squared singular values / sum of all of them (1.0 for a zero weight)."""
        s2 = [s * s for s in self.singular_values]
        total = sum(s2)
        return 1.0 if total <= 0 else sum(s2[: self.rank]) / total

    @property
    def normalized(self) -> list[float]:
        """The singular values divided by the largest (all 0 for a zero weight)."""
        top = self.singular_values[0] if self.singular_values else 0.0
        return [s / top if top > 0 else 0.0 for s in self.singular_values]


@dataclass(frozen=True)
class LayerSpectrum:
    """One factorized layer: both unfoldings' spectra, and the energy its factorized weight keeps."""

    name: str
    layer_type: str  # "Conv2d" | "Linear"
    method: str  # "tucker2" | "svd"
    weight_shape: tuple[int, ...]
    requested: str  # the rank policy, as written
    out: ModeSpectrum  # mode 0: output channels
    inp: ModeSpectrum  # mode 1: input channels
    energy_kept: float  # ||W_f||^2 / ||W||^2 of the factorized weight (both modes projected)

    @property
    def ranks(self) -> tuple[int, int]:
        """(r_out, r_in), as the factorized layer has them."""
        return self.out.rank, self.inp.rank


def unfoldings(weight: Tensor) -> tuple[Tensor, Tensor]:
    """(mode-0, mode-1) unfoldings of a conv (Cout, Cin, kh, kw) or linear (out, in) weight; a 1x1
    conv or linear weight gives its matrix and its transpose."""
    if weight.dim() not in (2, 4):
        raise ValueError(f"weight of shape {tuple(weight.shape)} is not allowed: use a conv weight "
                         "(Cout, Cin, kh, kw) or a linear weight (out, in)")
    w = weight.detach().double()
    if w.dim() == 4 and w.shape[2:] == (1, 1):
        w = w.reshape(w.shape[0], w.shape[1])
    if w.dim() == 2:
        return w, w.t()
    return w.reshape(w.shape[0], -1), w.transpose(0, 1).reshape(w.shape[1], -1)


def mode_spectrum(matrix: Tensor, rank: int) -> ModeSpectrum:
    """The singular values of `matrix` (descending) with `rank` of them kept (1 <= rank <= rows)."""
    if matrix.dim() != 2:
        raise ValueError(f"matrix of shape {tuple(matrix.shape)} is not allowed: use a 2-D tensor")
    rows = min(matrix.shape)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= matrix.shape[0]:
        raise ValueError(f"rank={rank!r} is not allowed: use an integer from 1 to {matrix.shape[0]}")
    s = torch.linalg.svdvals(matrix.detach().double().cpu())
    values = tuple(float(v) for v in s[:rows])
    return ModeSpectrum(values, min(rank, rows))


def layer_spectra(dense: nn.Module, rank: RankArg = 0.5, factorized: nn.Module | None = None,
                  skip: Iterable[str] | str | None = None, *, skip_first_conv: bool = True,
                  skip_output_layer: bool = True, n_iter_max: int = 0) -> list[LayerSpectrum]:
    """The spectrum of every layer `factorize` factorizes in `dense`, in model order.

    `factorized`: the model `factorize` made from `dense` (its layers and ranks are read); None
    factorizes `dense` here with `rank`, `skip`, `skip_first_conv`, `skip_output_layer` and
    `n_iter_max`, as `factorize` takes them. `dense` is not modified.
    """
    if not isinstance(dense, nn.Module):
        raise ValueError(f"dense={type(dense).__name__} is not allowed: use a torch.nn.Module")
    if factorized is None:
        factorized = factorize(dense, rank, skip=skip, skip_first_conv=skip_first_conv,
                               skip_output_layer=skip_output_layer, relu_masks=False, n_iter_max=n_iter_max,
                               recompute=False)
    originals = dict(dense.named_modules())
    rows = []
    for name, layer in factorized.named_modules():
        if not isinstance(layer, FactorizedLayer):
            continue
        original = originals.get(name)
        if not isinstance(original, (nn.Conv2d, nn.Linear)):
            raise ValueError(f"factorized={type(factorized).__name__} is not allowed: its layer {name!r} has no "
                             "dense conv/linear of that name in `dense` (pass the model factorize made from it)")
        w = original.weight.detach()
        mode0, mode1 = unfoldings(w)
        r_out, r_in = layer.ranks
        approx = layer.dense_weight().detach().double()
        total = float(w.double().pow(2).sum())
        kept = 1.0 if total <= 0 else float(approx.pow(2).sum()) / total
        info = layer.info
        rows.append(LayerSpectrum(
            name=name, layer_type="Conv2d" if isinstance(layer, FactoConv2d) else "Linear",
            method=info.method if info else ("tucker2" if w.dim() == 4 and w.shape[2:] != (1, 1) else "svd"),
            weight_shape=tuple(w.shape), requested=info.requested if info else "",
            out=mode_spectrum(mode0, r_out), inp=mode_spectrum(mode1, r_in), energy_kept=min(kept, 1.0)))
    return rows
