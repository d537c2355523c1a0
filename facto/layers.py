"""Factorized layers whose frozen stages store nothing for backward, and 1-bit-mask ReLUs.

A factorized layer runs as a chain of stages. Only the trainable stage keeps its input
for the weight gradient; a frozen stage computes the input gradient from its weight alone
(`FrozenConv2d`), because PyTorch's own conv2d saves its input even for a frozen weight.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .compress import clamp_with_mask, masked_grad

UPDATES = ("first", "core", "last", "all")


def validate_update(update: str) -> str:
    """Return `update` if allowed, else raise ValueError naming it."""
    if update not in UPDATES:
        raise ValueError(f"update={update!r} is not allowed: choose one of {', '.join(UPDATES)}")
    return update


def pointwise(x: Tensor, weight: Tensor) -> Tensor:
    """A 1x1 conv (stride 1, no padding) as one bmm: ~10x faster than conv2d on CPU here.

    bmm saves the input as a view of `x` itself (so it is deduplicated with other savers of
    `x`) and the weight as an expanded view of the parameter (excluded from the count).
    """
    n, c, h, w = x.shape
    w2d = weight.reshape(weight.shape[0], c)
    return torch.bmm(w2d.expand(n, *w2d.shape), x.reshape(n, c, h * w)).view(n, -1, h, w)


def _is_pointwise(weight: Tensor, padding) -> bool:
    return weight.shape[2:] == (1, 1) and tuple(padding) == (0, 0)


def _subsample(x: Tensor, stride) -> Tensor:
    """What a strided 1x1 conv sees: every stride-th row and column."""
    return x if tuple(stride) == (1, 1) else x[:, :, :: stride[0], :: stride[1]]


class FrozenConv2d(torch.autograd.Function):
    """conv2d with a frozen weight that saves no activation: backward needs only the weight."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, stride, padding, dilation) -> Tensor:
        ctx.weight = weight  # a parameter: held by the module anyway, not an activation
        ctx.input_shape = x.shape
        ctx.conf = (stride, padding, dilation)
        if _is_pointwise(weight, padding) and tuple(stride) == (1, 1):
            return pointwise(x, weight)
        return F.conv2d(x, weight, None, stride, padding, dilation)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        stride, padding, dilation = ctx.conf
        weight = ctx.weight
        if _is_pointwise(weight, padding) and tuple(stride) == (1, 1):
            w2d = weight.view(weight.shape[0], weight.shape[1])
            grad_in = pointwise(grad_out, w2d.t())
        else:
            grad_in = torch.nn.grad.conv2d_input(
                ctx.input_shape, weight, grad_out, stride, padding, dilation
            )
        return grad_in, None, None, None, None


def conv_stage(x: Tensor, weight: Tensor, stride=(1, 1), padding=(0, 0), dilation=(1, 1)) -> Tensor:
    """One stage: a normal conv when its weight trains, else the activation-free frozen conv.

    1x1 stages run as a matmul (strided ones on the subsampled input): same result, and a
    trainable one stores only the (subsampled) input it really needs.
    """
    grad = torch.is_grad_enabled()
    if _is_pointwise(weight, padding):
        x = _subsample(x, stride)
        stride = (1, 1)
        if not (grad and not weight.requires_grad and x.requires_grad):
            return pointwise(x, weight)
    if weight.requires_grad and grad:
        return F.conv2d(x, weight, None, stride, padding, dilation)
    if grad and x.requires_grad:
        return FrozenConv2d.apply(x, weight, stride, padding, dilation)
    return F.conv2d(x, weight, None, stride, padding, dilation)


class _Factorized(nn.Module):
    """Shared bookkeeping of factorized layers: which stage trains, and a report."""

    stage_names: tuple[str, ...] = ()

    def set_update(self, update: str) -> None:
        """Make `update`'s factor trainable and freeze the others (bias always trains)."""
        validate_update(update)
        trainable = self.trainable_stage(update)
        for name in self.stage_names:
            getattr(self, name).requires_grad_(update == "all" or name == trainable)
        self.update = update

    def trainable_stage(self, update: str) -> str | None:
        """Name of the stage `update` trains (None for 'all')."""
        if update == "all":
            return None
        if update == "core" and "core" not in self.stage_names:
            return "last"  # two-stage layers: the rank-sized input is the one worth storing
        return update

    def factor_parameters(self) -> int:
        return sum(getattr(self, n).numel() for n in self.stage_names) + (
            self.bias.numel() if self.bias is not None else 0
        )

    def dense_weight(self) -> Tensor:
        raise NotImplementedError


class FactoConv2d(_Factorized):
    """Tucker-2 conv: 1x1 (Cin->R_in), kh x kw core (R_in->R_out, strided), 1x1 (R_out->Cout).

    A 1x1 conv is factorized by SVD into two stages instead (no core).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, ranks: tuple[int, int],
                 stride=1, padding=0, dilation=1, bias: bool = True, update: str = "last"):
        super().__init__()
        kh, kw = nn.modules.utils._pair(kernel_size)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = (kh, kw)
        self.stride = nn.modules.utils._pair(stride)
        self.padding = nn.modules.utils._pair(padding)
        self.dilation = nn.modules.utils._pair(dilation)
        r_out, r_in = ranks
        self.ranks = (r_out, r_in)
        self.pointwise = (kh, kw) == (1, 1)
        if self.pointwise:
            # two stages: x -> (R, strided) -> Cout ; ranks are (R, R)
            self.first = nn.Parameter(torch.empty(r_in, in_channels, 1, 1))
            self.last = nn.Parameter(torch.empty(out_channels, r_in, 1, 1))
            self.stage_names = ("first", "last")
        else:
            self.first = nn.Parameter(torch.empty(r_in, in_channels, 1, 1))
            self.core = nn.Parameter(torch.empty(r_out, r_in, kh, kw))
            self.last = nn.Parameter(torch.empty(out_channels, r_out, 1, 1))
            self.stage_names = ("first", "core", "last")
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.set_update(update)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank=0.25, update: str = "last", **decompose_kw) -> "FactoConv2d":
        """Factorize `conv` (groups=1) keeping its weights: Tucker-2, or SVD for 1x1 kernels."""
        from .factorize import decompose_conv  # late import: factorize imports this module

        return decompose_conv(conv, rank, update, **decompose_kw)

    def forward(self, x: Tensor) -> Tensor:
        if self.pointwise:
            z = conv_stage(x, self.first, self.stride)
            y = conv_stage(z, self.last)
        else:
            z1 = conv_stage(x, self.first)
            z2 = conv_stage(z1, self.core, self.stride, self.padding, self.dilation)
            y = conv_stage(z2, self.last)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y

    def dense_weight(self) -> Tensor:
        """The equivalent dense (Cout, Cin, kh, kw) weight."""
        first = self.first[:, :, 0, 0]  # (R_in, Cin)
        last = self.last[:, :, 0, 0]  # (Cout, R_out)
        if self.pointwise:
            return (last @ first)[:, :, None, None]
        return torch.einsum("or,rshw,si->oihw", last, self.core, first)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"ranks={self.ranks}, stride={self.stride}, update={self.update!r}")


class FactoLinear(_Factorized):
    """Truncated-SVD linear layer: x -> (R) -> out; a frozen stage stores nothing."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 update: str = "last"):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.ranks = (rank, rank)
        self.first = nn.Parameter(torch.empty(rank, in_features))
        self.last = nn.Parameter(torch.empty(out_features, rank))
        self.stage_names = ("first", "last")
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.set_update(update)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank=0.25, update: str = "last", **decompose_kw) -> "FactoLinear":
        """Factorize `linear` by truncated SVD, keeping its weights."""
        from .factorize import decompose_linear

        return decompose_linear(linear, rank, update, **decompose_kw)

    def forward(self, x: Tensor) -> Tensor:
        # F.linear with a frozen weight saves no input; with a trainable one it saves its input.
        z = F.linear(x, self.first)
        return F.linear(z, self.last, self.bias)

    def dense_weight(self) -> Tensor:
        return self.last @ self.first

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, rank={self.rank}, update={self.update!r}"


class _MaskedClamp(torch.autograd.Function):
    """ReLU / ReLU6 that keeps a 1-bit packed mask instead of its output.

    The packed mask goes through `save_for_backward`, so `saved_activations` counts it.
    On CUDA each direction is one fused kernel (output + mask, gradient from the mask).
    """

    @staticmethod
    def forward(ctx, x: Tensor, cap: float | None) -> Tensor:
        y, codes = clamp_with_mask(x, cap)
        ctx.save_for_backward(codes)
        return y

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (codes,) = ctx.saved_tensors
        return masked_grad(grad_out, codes), None


class MaskReLU(nn.Module):
    """ReLU (or ReLU6 with `cap=6`) whose backward keeps a 1-bit mask, not the output."""

    def __init__(self, cap: float | None = None):
        super().__init__()
        self.cap = cap

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _MaskedClamp.apply(x, self.cap)
        return x.clamp(min=0) if self.cap is None else x.clamp(0, self.cap)

    def extra_repr(self) -> str:
        return "" if self.cap is None else f"cap={self.cap}"
