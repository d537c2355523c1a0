"""Layer spectra (facto.method.spectrum) and the calibration steps (facto.method.calibrate), checked
against independent NumPy computations."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from facto.method.calibrate import recalibrate_batchnorm, refit_last_factors
from facto.method.factorize import factorize
from facto.method.layers import FactoConv2d
from facto.method.spectrum import layer_spectra, mode_spectrum, unfoldings


def orthonormal(rows: int, cols: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((rows, cols)))
    return q


def net(mid: nn.Conv2d | None = None) -> nn.Sequential:
    """stem conv (skipped) -> conv 8->12 3x3 -> BN -> ReLU -> pool -> linear (skipped)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), mid or nn.Conv2d(8, 12, 3, padding=1, bias=False),
                         nn.BatchNorm2d(12), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 3))


def known_conv() -> tuple[nn.Conv2d, np.ndarray]:
    """A 12x8x3x3 conv whose mode-0 unfolding has the singular values 12, 11, ..., 1."""
    s = np.arange(12, 0, -1, dtype=np.float64)
    w0 = orthonormal(12, 12, 1) @ np.diag(s) @ orthonormal(72, 12, 2).T  # (12, 72)
    conv = nn.Conv2d(8, 12, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(w0.reshape(12, 8, 3, 3)))
    return conv, s


def test_singular_values_of_a_known_weight_and_the_energy_its_rank_keeps():
    conv, s = known_conv()
    (layer,) = layer_spectra(net(conv), rank=0.5)
    assert layer.name == "1" and layer.method == "tucker2" and layer.weight_shape == (12, 8, 3, 3)
    assert np.allclose(layer.out.singular_values, s)
    assert layer.out.rank == 6  # half of 12 output channels
    assert layer.out.energy_kept == pytest.approx((s[:6] ** 2).sum() / (s ** 2).sum())
    w1 = conv.weight.detach().double().numpy().transpose(1, 0, 2, 3).reshape(8, -1)
    assert np.allclose(layer.inp.singular_values, np.linalg.svd(w1, compute_uv=False))
    assert layer.inp.rank == 4
    assert layer.out.normalized[0] == 1.0 and layer.out.normalized[-1] == pytest.approx(1 / 12)


def test_energy_kept_per_mode_is_the_projection_onto_that_modes_leading_vectors():
    w = torch.randn(10, 6, 3, 3, generator=torch.Generator().manual_seed(3))
    for mode in (0, 1):
        m = np.moveaxis(w.double().numpy(), mode, 0).reshape(w.shape[mode], -1)
        u = np.linalg.svd(m)[0][:, :3]
        projected = u @ (u.T @ m)
        spectrum = mode_spectrum(unfoldings(w)[mode], 3)
        assert spectrum.energy_kept == pytest.approx(np.linalg.norm(projected) ** 2 / np.linalg.norm(m) ** 2)


def test_energy_of_the_factorized_weight_is_one_minus_the_squared_hosvd_error():
    w = torch.randn(12, 8, 3, 3, generator=torch.Generator().manual_seed(4))
    conv = nn.Conv2d(8, 12, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(w)
    (layer,) = layer_spectra(net(conv), rank=0.5)
    a = w.double().numpy()
    u0 = np.linalg.svd(a.reshape(12, -1))[0][:, :6]
    u1 = np.linalg.svd(a.transpose(1, 0, 2, 3).reshape(8, -1))[0][:, :4]
    approx = np.einsum("oihw,or,is,pr,qs->pqhw", a, u0, u1, u0, u1)
    error = np.linalg.norm(a - approx) / np.linalg.norm(a)
    assert layer.energy_kept == pytest.approx(1 - error ** 2, rel=1e-5)
    assert layer.energy_kept < min(layer.out.energy_kept, layer.inp.energy_kept)


@pytest.mark.parametrize("rank", ["0.25", "energy:0.8", "3"])
def test_rank_marks_are_what_factorize_builds_and_skipped_layers_have_none(rank):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3), nn.Conv2d(16, 6, 1), nn.Flatten(),
                          nn.Linear(6 * 4 * 4, 7), nn.Linear(7, 2))
    spectra = layer_spectra(model, rank=rank)
    built = factorize(model, rank)
    ranks = {n: tuple(m.ranks) for n, m in built.named_modules() if hasattr(m, "ranks")}
    assert [s.name for s in spectra] == ["1", "2", "4"]  # not the stem (0) nor the classifier (5)
    assert {s.name: s.ranks for s in spectra} == ranks
    if rank == "energy:0.8":  # independently: the fewest values whose squares reach 80 %
        for s in spectra:
            for mode in (s.out, s.inp):
                share = np.cumsum(np.square(mode.singular_values)) / np.square(mode.singular_values).sum()
                assert mode.rank == int(np.searchsorted(share, 0.8 - 1e-12) + 1)
                assert mode.energy_kept >= 0.8 - 1e-9


def test_a_given_factorized_model_is_read_not_rebuilt_and_bad_input_is_a_value_error():
    model = net()
    built = factorize(model, 0.25)
    assert layer_spectra(model, factorized=built)[0].ranks == (3, 2)
    with pytest.raises(ValueError, match="no dense conv/linear of that name"):
        layer_spectra(nn.Sequential(nn.Linear(2, 2)), factorized=built)
    with pytest.raises(ValueError, match=r"rank=0 is not allowed"):
        mode_spectrum(torch.ones(3, 4), 0)
    with pytest.raises(ValueError, match="weight of shape"):
        unfoldings(torch.ones(3))


# ----------------------------------------------------------------------------- calibration

def batches(n: int = 3, size: int = 6, seed: int = 5) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 6, 6, generator=g), torch.zeros(size, dtype=torch.long)) for _ in range(n)]


def test_recalibrated_statistics_are_the_average_over_the_batches_and_weights_stay():
    model = factorize(net(), 0.5, recompute=True)
    model.eval()
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    weights = {k: v.clone() for k, v in model.state_dict().items()
               if isinstance(v, torch.Tensor) and "running" not in k and "num_batches" not in k}
    data = batches()
    assert recalibrate_batchnorm(model, data, batches=2) == 2
    with torch.no_grad():  # independently: the BN input per batch, its channel mean and unbiased variance
        conv = model[1]
        ys = [FactoConv2d.forward(conv, model[0](x)) for x, _ in data[:2]]
    means = torch.stack([y.mean((0, 2, 3)) for y in ys]).mean(0)
    variances = torch.stack([y.var((0, 2, 3), unbiased=True) for y in ys]).mean(0)
    assert torch.allclose(bn.running_mean, means, atol=1e-5) and torch.allclose(bn.running_var, variances, atol=1e-4)
    assert bn.momentum == 0.1 and not model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    with pytest.raises(ValueError, match="batches=0 is not allowed"):
        recalibrate_batchnorm(model, data, batches=0)
    assert recalibrate_batchnorm(nn.Linear(2, 2), data) == 0


def test_refit_solves_the_least_squares_problem_of_the_last_factor():
    dense = net(nn.Conv2d(8, 12, 3, padding=1, bias=True))
    dense.eval()
    built = factorize(dense, 0.25, recompute=False, relu_masks=False)
    layer = built[1]
    data = batches(2)
    with torch.no_grad():  # independently: im2col of the stem's output, the first/core product, lstsq
        xs = [dense[0](x) for x, _ in data]
        cols = torch.cat([nn.functional.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 72) for x in xs])
        w_core = torch.einsum("rshw,si->rihw", layer.core, layer.first[:, :, 0, 0]).reshape(layer.core.shape[0], -1)
        z = (cols @ w_core.t()).double().numpy()
        y = (cols @ dense[1].weight.reshape(12, -1).t() + dense[1].bias).double().numpy()
    design = np.hstack([z, np.ones((z.shape[0], 1))])
    expected = np.linalg.lstsq(design, y, rcond=None)[0]
    before = np.linalg.norm(z @ layer.last[:, :, 0, 0].detach().double().numpy().T + layer.bias.detach().double().numpy() - y)
    core_before = layer.core.detach().clone()
    assert refit_last_factors(built, dense, data, batches=2, ridge=0) == ["1"]
    q = layer.last[:, :, 0, 0].detach().double()
    assert torch.allclose(q.t() @ q, torch.eye(q.shape[1], dtype=q.dtype), atol=1e-5)  # kept orthonormal
    r = torch.linalg.lstsq(q, torch.as_tensor(expected[:-1].T)).solution  # what moved into the core
    assert np.allclose((q @ r).numpy(), expected[:-1].T, atol=1e-4)  # the last factor times it: the fit
    moved = torch.einsum("ij,jshw->ishw", r, core_before.double())
    assert torch.allclose(layer.core.detach().double(), moved, atol=1e-4)
    assert np.allclose(layer.bias.detach().double().numpy(), expected[-1], atol=1e-4)
    after = np.linalg.norm(design @ expected - y)
    assert after < before
    with pytest.raises(ValueError, match="ridge=-1 is not allowed"):
        refit_last_factors(copy.deepcopy(built), dense, data, ridge=-1)
    with pytest.raises(ValueError, match="has no conv/linear layer '1'"):
        refit_last_factors(copy.deepcopy(built), nn.Sequential(nn.Linear(2, 2)), data)
