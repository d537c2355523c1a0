"""Factorized layers whose frozen stages store nothing for backward, 1-bit-mask ReLUs, index-only
max-pools, and putting a layer in place of another.

A factorized layer runs as a chain of stages. Only the trainable stage keeps its input
for the weight gradient; a frozen stage computes the input gradient from its weight alone
(`FrozenConv2d`), because PyTorch's own conv2d saves its input even for a frozen weight.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..compress import clamp_with_mask, masked_grad
from ..config import RankPolicy, RankSpec, validate_update
from .decompose import FactorInfo, choose_rank, conv_factors, rel_error, svd_factors

BMM_DEVICES = ("cpu",)  # where a 1x1 conv runs faster as bmm than as conv2d


def pointwise(x: Tensor, weight: Tensor) -> Tensor:
    """A 1x1 conv (stride 1, no padding): one bmm on CPU (~10x faster than conv2d there),
    conv2d elsewhere (cuDNN's 1x1 kernels on CUDA).

    Both save the input itself (bmm as a view of `x`, so it is deduplicated with other
    savers of `x`) and the weight as (a view of) the parameter, excluded from the count.
    """
    if x.device.type not in BMM_DEVICES:
        return F.conv2d(x, weight.reshape(weight.shape[0], -1, 1, 1))
    n, c, h, w = x.shape
    w2d = weight.reshape(weight.shape[0], c)
    return torch.bmm(w2d.expand(n, *w2d.shape), x.reshape(n, c, h * w)).view(n, -1, h, w)


def autocast_state(device_type: str) -> tuple[str, bool, torch.dtype]:
    """The autocast state of `device_type` now, to replay it in a custom Function's backward."""
    return device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


def replay_autocast(state: tuple[str, bool, torch.dtype]):
    """Re-enter the autocast state a forward ran under (what torch.amp.custom_bwd does, any device)."""
    device_type, enabled, dtype = state
    return torch.autocast(device_type, dtype=dtype, enabled=enabled)


def numeric_padding(conv: nn.Conv2d) -> tuple[int, int] | None:
    """conv's zero padding as numbers: 'valid' is (0, 0), 'same' is half the dilated kernel
    when that is symmetric (odd kernels); None when it is not (an even kernel with 'same')."""
    if not isinstance(conv.padding, str):
        return tuple(conv.padding)
    if conv.padding == "valid":
        return (0, 0)
    total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
    return None if any(t % 2 for t in total) else (total[0] // 2, total[1] // 2)


def is_pointwise(weight: Tensor, padding) -> bool:
    """A 1x1 kernel without padding: runs as a matmul."""
    return weight.shape[2:] == (1, 1) and tuple(padding) == (0, 0)


def subsample(x: Tensor, stride) -> Tensor:
    """What a strided 1x1 conv sees: every stride-th row and column."""
    return x if tuple(stride) == (1, 1) else x[:, :, :: stride[0], :: stride[1]]


class FrozenConv2d(torch.autograd.Function):
    """conv2d with a frozen weight that saves no activation: backward needs only the weight."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, stride, padding, dilation) -> Tensor:
        ctx.weight = weight  # a parameter: held by the module anyway, not an activation
        ctx.input_shape = x.shape
        ctx.conf = (stride, padding, dilation)
        ctx.autocast = autocast_state(x.device.type)
        if is_pointwise(weight, padding) and tuple(stride) == (1, 1):
            return pointwise(x, weight)
        return F.conv2d(x, weight, None, stride, padding, dilation)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        stride, padding, dilation = ctx.conf
        weight = ctx.weight.to(grad_out.dtype)  # under autocast the forward ran in 16 bits
        if is_pointwise(weight, padding) and tuple(stride) == (1, 1):
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
    if is_pointwise(weight, padding):
        x = subsample(x, stride)
        stride = (1, 1)
        if not (grad and not weight.requires_grad and x.requires_grad):
            return pointwise(x, weight)
    if weight.requires_grad and grad:
        return F.conv2d(x, weight, None, stride, padding, dilation)
    if grad and x.requires_grad:
        return FrozenConv2d.apply(x, weight, stride, padding, dilation)
    return F.conv2d(x, weight, None, stride, padding, dilation)


class FactorizedLayer(nn.Module):
    """Shared bookkeeping of factorized layers: which stage trains, and where it came from.

    `info` (a `FactorInfo`: requested rank, reconstruction error, ...) travels with the
    layer's state_dict as extra state.
    """

    stage_names: tuple[str, ...] = ()
    info: FactorInfo | None = None

    def get_extra_state(self) -> dict:
        return {"info": None if self.info is None else vars(self.info).copy()}

    def set_extra_state(self, state: dict) -> None:
        info = (state or {}).get("info")
        self.info = None if info is None else FactorInfo(**{
            **info, "requested_ranks": tuple(info["requested_ranks"]),
            "weight_shape": tuple(info["weight_shape"])})

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

    @property
    def frozen(self) -> bool:
        """True when no factor trains (the dense layer was frozen)."""
        return not any(getattr(self, n).requires_grad for n in self.stage_names)

    def factor_parameters(self) -> int:
        return sum(getattr(self, n).numel() for n in self.stage_names) + (
            self.bias.numel() if self.bias is not None else 0
        )

    def dense_weight(self) -> Tensor:
        raise NotImplementedError


class FactoConv2d(FactorizedLayer):
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
    def from_conv(cls, conv: nn.Conv2d, rank: RankSpec = 0.5, update: str = "core",
                  n_iter_max: int = 0) -> "FactoConv2d":
        """Factorize `conv` (groups=1, zero padding) keeping its weights: Tucker-2, or SVD for 1x1."""
        if conv.groups != 1:
            raise ValueError(f"conv groups={conv.groups} cannot be factorized: only groups=1")
        padding = numeric_padding(conv)
        if conv.padding_mode != "zeros" or padding is None:
            raise ValueError(f"conv padding={conv.padding!r}, padding_mode={conv.padding_mode!r} "
                             "cannot be factorized: only symmetric zero padding")
        policy = RankPolicy.parse(rank)
        validate_update(update)
        w = conv.weight.detach().float()
        f = conv_factors(w, policy, n_iter_max)
        cout, cin, kh, kw = w.shape
        layer = cls(cin, cout, (kh, kw), f.ranks, conv.stride, padding, conv.dilation,
                    bias=conv.bias is not None, update=update).to(w.device)
        with torch.no_grad():
            layer.first.copy_(f.first[:, :, None, None])
            layer.last.copy_(f.last[:, :, None, None])
            if f.core is not None:
                layer.core.copy_(f.core)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias.detach())
            error = rel_error(w, layer.dense_weight())
        layer.to(dtype=conv.weight.dtype)
        layer.info = FactorInfo(
            requested=str(policy), requested_ranks=f.requested, clamped=f.requested != f.ranks,
            weight_shape=tuple(w.shape), params_before=sum(p.numel() for p in conv.parameters()),
            rel_error=error, method=f.method, seconds=time.perf_counter() - f.started)
        return layer

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


class FactoLinear(FactorizedLayer):
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
    def from_linear(cls, linear: nn.Linear, rank: RankSpec = 0.5, update: str = "core") -> "FactoLinear":
        """Factorize `linear` by truncated SVD, keeping its weights."""
        policy = RankPolicy.parse(rank)
        validate_update(update)
        started = time.perf_counter()
        w = linear.weight.detach().float()
        r, wanted = choose_rank(policy, w, min(w.shape))
        layer = cls(w.shape[1], w.shape[0], r, bias=linear.bias is not None, update=update).to(w.device)
        with torch.no_grad():
            first, last = svd_factors(w, r)
            layer.first.copy_(first)
            layer.last.copy_(last)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias.detach())
            error = rel_error(w, layer.dense_weight())
        layer.to(dtype=linear.weight.dtype)
        layer.info = FactorInfo(
            requested=str(policy), requested_ranks=(wanted, wanted), clamped=wanted != r,
            weight_shape=tuple(w.shape), params_before=sum(p.numel() for p in linear.parameters()),
            rel_error=error, method="svd", seconds=time.perf_counter() - started)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        # F.linear with a frozen weight saves no input; with a trainable one it saves its input.
        z = F.linear(x, self.first)
        return F.linear(z, self.last, self.bias)

    def dense_weight(self) -> Tensor:
        return self.last @ self.first

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, rank={self.rank}, update={self.update!r}"


class _MaskedClamp(torch.autograd.Function):
    """ReLU / ReLU6 that keeps a 1-bit packed mask instead of its output (over its input with `inplace`).

    The packed mask goes through `save_for_backward`, so `saved_activations` counts it.
    Each direction is one fused kernel where kernels serve (output + mask, gradient from the mask).
    """

    @staticmethod
    def forward(ctx, x: Tensor, cap: float | None, inplace: bool = False) -> Tensor:
        inplace = inplace and x.is_contiguous()  # the kernels write a contiguous map
        y, codes = clamp_with_mask(x, cap, inplace)
        if inplace:
            ctx.mark_dirty(x)
        ctx.save_for_backward(codes)
        return y

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (codes,) = ctx.saved_tensors
        return masked_grad(grad_out, codes), None, None


class MaskReLU(nn.Module):
    """ReLU (or ReLU6 with `cap=6`) whose backward keeps a 1-bit mask, not the output.

    `inplace` (nn.ReLU's flag, kept by factorize): the output is written over the input, as
    nn.ReLU(inplace=True) does, so a forward holds one map fewer at that point; the model's author
    vouches that nothing reads the input afterwards (autograd raises where a backward would)."""

    def __init__(self, cap: float | None = None, inplace: bool = False):
        super().__init__()
        self.cap = cap
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _MaskedClamp.apply(x, self.cap, self.inplace)
        return (x.clamp_ if self.inplace else x.clamp)(0, self.cap)

    def extra_repr(self) -> str:
        parts = ([] if self.cap is None else [f"cap={self.cap}"]) + (["inplace=True"] if self.inplace else [])
        return ", ".join(parts)


# ----------------------------------------------------------------------------- max-pool


def index_dtype(plane: int) -> torch.dtype:
    """The narrowest integer dtype that holds indices 0 .. plane - 1 (known from the shape alone)."""
    for dtype in (torch.uint8, torch.int16, torch.int32):
        if plane - 1 <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


class _IndexMaxPool(torch.autograd.Function):
    """max_pool2d that saves only its argmax indices, in the narrowest dtype the input's plane
    size allows (decided from the shape: no value is read back)."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, dilation, ceil_mode):
        out, idx = F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode,
                                return_indices=True)
        ctx.input_shape = x.shape
        ctx.save_for_backward(idx.to(index_dtype(x.shape[-2] * x.shape[-1])))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        (idx,) = ctx.saved_tensors
        shape = ctx.input_shape
        planes = shape[:-2].numel()
        grad_in = grad_out.new_zeros(planes, shape[-2] * shape[-1])
        # scatter_add: a value that is the max of several overlapping windows gets them all
        grad_in.scatter_add_(1, idx.reshape(planes, -1).long(), grad_out.reshape(planes, -1))
        return grad_in.view(shape), None, None, None, None, None


class IndexMaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d whose backward keeps the argmax indices only, not the full-width input."""

    def forward(self, x: Tensor) -> Tensor:
        if self.return_indices or not (torch.is_grad_enabled() and x.requires_grad):
            return super().forward(x)
        return _IndexMaxPool.apply(x, self.kernel_size, self.stride, self.padding,
                                   self.dilation, self.ceil_mode)

    @classmethod
    def from_pool(cls, pool: nn.MaxPool2d) -> "IndexMaxPool2d":
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                   pool.return_indices, pool.ceil_mode)


# ----------------------------------------------------------------------------- model surgery

def aliases(root: nn.Module, module: nn.Module) -> list[str]:
    """Every dotted name under which `module` is registered in `root` (one, unless it is shared)."""
    return [n for n, m in root.named_modules(remove_duplicate=False) if m is module and n]


def replace_module(root: nn.Module, name: str, new: nn.Module, names: list[str] | None = None) -> None:
    """Put `new` where `root.get_submodule(name)` was (name like 'layer1.0.conv1'), under every
    name that module goes by: a layer registered twice (shared weights) stays one layer.
    `names`: those names, when the caller has them already (from `aliases`)."""
    for alias in names or aliases(root, root.get_submodule(name)) or [name]:
        parent_name, _, child = alias.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        setattr(parent, child, new)
