"""Recompute instead of store: fuse FactoConv2d + BatchNorm2d, and max-pools that keep indices only.

After factorization a Conv-BN-ReLU block still stores BatchNorm's full-width input
y (Cout x H x W). `FactoConvBN` stores only the input `s` of the layer's trainable stage
(x for update first/all, z1 for core, z2 for last: stored anyway for the weight gradient),
BN's per-channel batch statistics, and nothing else; in backward it recomputes y from `s`
with the remaining (cheap, mostly 1x1) stages. The stages before `s` are frozen and run
through `FrozenConv2d`, which stores nothing. Together with 1-bit ReLU masks a block keeps
`s` (compressed by `saved_activations` like any saved tensor) + 2 x Cout floats + 1 bit
per output value.

`ConvBN` does the same for a dense nn.Conv2d (any groups: the stem on the image, depthwise
convs, 1x1 shortcuts left dense) followed by a BatchNorm2d: it stores only the conv's input x,
which the conv keeps anyway for its weight gradient, plus BN's statistics, and recomputes
BN's input y = conv(x) (often far wider: the stem goes 1 -> 32 channels) in backward.

`IndexMaxPool2d` keeps only the argmax indices (narrowed losslessly by the hook), not the
full-width input that PyTorch's max-pool keeps.

`fuse_recompute(model)` finds the pairs (torch.fx trace; a Sequential-only fallback when
the forward cannot be traced) and swaps the modules in place.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.autograd.graph import GradientEdge, get_gradient_edge

from .layers import (
    FactoConv2d,
    FactorizedLayer,
    IndexMaxPool2d,
    MaskReLU,
    autocast_state,
    conv_stage,
    is_pointwise,
    pointwise,
    replace_module,
    replay_autocast,
    subsample,
)

BN_STATS = ("forward", "recomputed")
# BatchNorm's backward uses the statistics of the forward's exact input ("forward"): statistics of the
# recomputed input, noisy after low-bit storage, bias the gradient at 2 bits (tests/method/test_recompute.py).
DEFAULT_BN_STATS = "forward"

__all__ = ["BN_STATS", "ConvBN", "FactoConvBN", "FusionReport", "IndexMaxPool2d", "StageConf", "fuse_recompute",
           "fusion_report"]


def validate_bn_stats(bn_stats: str) -> str:
    """Return `bn_stats` if allowed, else raise ValueError naming it."""
    if bn_stats not in BN_STATS:
        raise ValueError(f"bn_stats={bn_stats!r} is not allowed: choose one of {', '.join(BN_STATS)}")
    return bn_stats


def _adopt(module: nn.Module, conv: nn.Module, bn: nn.BatchNorm2d, bn_stats: str, keep: tuple = ()) -> None:
    """Take over `conv`'s attributes and parameters (the same objects, same names) and hold `bn`."""
    for key, value in vars(conv).items():
        if (not key.startswith("_") and key != "training") or key in keep:
            setattr(module, key, value)
    for name, p in conv._parameters.items():
        module.register_parameter(name, p)
    module.training = conv.training
    module.bn = bn
    module.bn_stats = validate_bn_stats(bn_stats)


def _keep(t: Tensor) -> Tensor:
    return t


def _free(t: Tensor) -> None:
    """Release `t`'s memory now (its storage shrinks to nothing; the tensor must not be read again)."""
    try:
        t.untyped_storage().resize_(0)
    except RuntimeError:  # a storage that can't be resized (e.g. shared): freed when dropped instead
        pass


@dataclass(frozen=True)
class StageConf:
    """How one conv stage runs: nn.Conv2d's arguments (padding may be 'same'/'valid')."""

    stride: tuple = (1, 1)
    padding: tuple | str = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    padding_mode: str = "zeros"
    pad_twice: tuple = ()  # nn.Conv2d's _reversed_padding_repeated_twice, for non-zero padding modes


def run_stage(z: Tensor, w: Tensor, conf: StageConf) -> Tensor:
    """One conv stage without bias; 1x1 stages as bmm, as in FactoConv2d."""
    padding = conf.padding
    if conf.padding_mode != "zeros":
        z = F.pad(z, conf.pad_twice, mode=conf.padding_mode)
        padding = (0, 0)
    elif conf.groups == 1 and not isinstance(padding, str) and is_pointwise(w, padding):
        return pointwise(subsample(z, conf.stride), w)
    return F.conv2d(z, w, None, conf.stride, padding, conf.dilation, conf.groups)


def _run_stages(z: Tensor, weights, confs) -> list[Tensor]:
    """Each stage's output, in order (the last is the layer's conv output)."""
    outs = []
    for w, conf in zip(weights, confs):
        z = run_stage(z, w, conf)
        outs.append(z)
    return outs


BN_SLICES = 8  # `bn_backward_over_input` works through the batch in this many slices (a work buffer: one slice)


def bn_forward_over_input(y: Tensor, weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None,
                          running_var: Tensor | None, momentum: float, eps: float) -> tuple[Tensor, Tensor]:
    """Training-mode BatchNorm written over `y` (a float32 CPU map nothing else reads): y becomes
    native_batch_norm's output, bit for bit, without a second map of its size. Returns (mean,
    invstd), what native_batch_norm saves for its backward; the running statistics move as it
    moves them. native_batch_norm's CPU kernel takes the batch's statistics in a first pass and
    then normalizes value by value, so its output can be its input."""
    mean = y.new_empty(y.shape[1])
    invstd = y.new_empty(y.shape[1])
    torch.ops.aten.native_batch_norm.out(y, weight, bias, running_mean, running_var, True, momentum, eps,
                                         out=y, save_mean=mean, save_invstd=invstd)
    return mean, invstd


def bn_backward_over_input(grad_out: Tensor, y: Tensor, weight: Tensor | None, mean: Tensor, invstd: Tensor,
                           need_input: bool) -> tuple[Tensor | None, Tensor, Tensor]:
    """Training-mode BatchNorm's backward, as native_batch_norm_backward computes it, with the input
    gradient written over `y` (BN's recomputed input, not read again): (y as the input gradient, or
    None without `need_input`; weight gradient; bias gradient). It never holds a second map of y's
    size beside y and grad_out: it works through the batch in BN_SLICES slices (single images below
    BN_SLICES), so its work buffer is about 1/BN_SLICES of the map, in float32 (16-bit maps through
    float32 copies of a slice).

    With means over every dimension but the channels', d_input = (grad_out - mean(grad_out) - (y - mean)
    * invstd^2 * mean(grad_out * (y - mean))) * invstd * weight, computed as y * a + b + grad_out * s."""
    channels = y.shape[1]
    count = y.numel() // channels
    view = (1, channels) + (1,) * (y.dim() - 2)
    dims = (0,) + tuple(range(2, y.dim()))
    per = -(-y.shape[0] // BN_SLICES)
    slices = list(zip(grad_out.split(per), y.split(per)))
    m = mean.float().view(view)
    sum_dy = torch.zeros(channels, dtype=torch.float32, device=y.device)
    dot = torch.zeros_like(sum_dy)
    for g, x in slices:
        g = g.float()
        sum_dy += g.sum(dims)
        dot += (x.float() - m).mul_(g).sum(dims)  # one slice-sized work buffer
    istd = invstd.float()
    grad_weight, grad_bias = dot * istd, sum_dy
    if weight is not None:
        grad_weight, grad_bias = grad_weight.to(weight.dtype), grad_bias.to(weight.dtype)
    if not need_input:
        return None, grad_weight, grad_bias
    s = istd if weight is None else istd * weight.float()
    k = dot * istd * istd / count
    a, b = (-k * s).view(view), ((mean.float() * k - sum_dy / count) * s).view(view)
    s = s.view(view)
    for g, x in slices:
        t = x.float()  # x itself in float32: the gradient is written in place
        t.mul_(a).add_(b).addcmul_(g.float(), s)
        if t.data_ptr() != x.data_ptr():
            x.copy_(t)
    return y, grad_weight, grad_bias


def _nested_grad(output: Tensor | GradientEdge, inputs: list[Tensor], grad: Tensor) -> tuple[Tensor, ...]:
    """torch.autograd.grad(output, inputs, grad) through the engine call it makes, without its Python
    check that grad's shape is output's: that check imports sympy (about 35 MB resident for the rest of
    the process) and the shapes agree here by construction. torch.autograd.grad itself where this
    PyTorch has no such call."""
    run = getattr(torch.autograd.graph, "_engine_run_backward", None)
    if run is None:
        return torch.autograd.grad(output, inputs, grad)
    return run((output,), (grad,), False, False, tuple(inputs), False, accumulate_grad=False)


def _stages_backward(end: GradientEdge, before: Tensor | None, leaves: list[Tensor], wanted: list[int],
                     grad: Tensor) -> dict[int, Tensor]:
    """{i: gradient of leaves[i]} for i in `wanted` (leaves: the first stage's input, then each stage's
    weight) from `grad` of the last stage's output (`end`: its gradient edge, taken before the output
    was written over; `before`: the previous stage's output, None for one stage). The last stage's
    backward runs first and `grad` (full width: the caller's own buffer) is freed before the earlier,
    rank-width stages' backward."""
    last_weight = len(leaves) - 1
    if before is None or not before.requires_grad:
        return dict(zip(wanted, _nested_grad(end, [leaves[i] for i in wanted], grad)))
    found = _nested_grad(end, [before] + ([leaves[last_weight]] if last_weight in wanted else []), grad)
    _free(grad)
    del grad
    earlier = [i for i in wanted if i != last_weight]
    got = dict(zip(earlier, _nested_grad(before, [leaves[i] for i in earlier], found[0])))
    if last_weight in wanted:
        got[last_weight] = found[1]
    return got


def _fusable_call(bn: nn.BatchNorm2d, x: Tensor) -> bool:
    """True when BN normalizes with batch statistics under grad (the fused path applies)."""
    batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    return batch_stats and torch.is_grad_enabled()


def _bn_step(bn: nn.BatchNorm2d) -> tuple[Tensor | None, Tensor | None, float]:
    """(running_mean, running_var, momentum) for native_batch_norm, counting the batch as
    nn.BatchNorm2d does (num_batches_tracked, cumulative average when momentum is None)."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average, as nn.BatchNorm2d does
            momentum = 1.0 / float(bn.num_batches_tracked)
    use_running = not bn.training or bn.track_running_stats
    running_mean = bn.running_mean if use_running else None
    running_var = bn.running_var if use_running else None
    return running_mean, running_var, momentum


class _Handoff:
    """What _RecomputeBN's backward leaves for _StageGrads': which of s and the stage weights want a
    gradient (set in forward) and the stages' backward still to run (set in backward)."""

    def __init__(self) -> None:
        self.need: tuple[bool, ...] = ()
        self.pending: tuple | None = None


class _StageGrads(torch.autograd.Function):
    """The identity on a fused layer's stored input s, in front of _RecomputeBN; its backward runs the
    stages' backward that _RecomputeBN's backward leaves in the handoff, giving the gradients of s and
    of the stage weights. A node of its own, it runs after _RecomputeBN's has returned, when autograd
    has released the gradient that node received: a full-width map fewer during the stages' backward."""

    @staticmethod
    def forward(ctx, s, handoff, *weights):
        need = ctx.needs_input_grad
        handoff.need = (need[0], *need[2:])
        ctx.handoff = handoff
        ctx.set_materialize_grads(False)  # the gradient flowing in is None: the handoff carries it
        return s.view_as(s)

    @staticmethod
    @once_differentiable
    def backward(ctx, _none):
        pending, ctx.handoff.pending = ctx.handoff.pending, None
        got = _stages_backward(*pending) if pending is not None else {}  # None: nothing wants a gradient
        grads = [got.get(i) for i in range(len(ctx.handoff.need))]
        return (grads[0], None, *grads[1:])


def recompute_bn(s: Tensor, bias: Tensor | None, bn: nn.BatchNorm2d, running_mean: Tensor | None,
                 running_var: Tensor | None, momentum: float, weights: list[Tensor], confs: tuple,
                 recomputed_stats: bool) -> Tensor:
    """s -> the conv stages (weights, confs) + bias -> training-mode BatchNorm `bn`, storing only s
    (two autograd nodes: _StageGrads, then _RecomputeBN)."""
    handoff = _Handoff()
    s = _StageGrads.apply(s, handoff, *weights)
    return _RecomputeBN.apply(s, bias, bn.weight, bn.bias, running_mean, running_var, momentum, bn.eps,
                              confs, recomputed_stats, handoff, *[w.detach() for w in weights])


class _RecomputeBN(torch.autograd.Function):
    """s -> conv stages (+bias) -> training-mode BatchNorm, storing only s.

    One Function for both fusions: the stages after a FactoConv2d's stored input, or the
    single stage of a dense conv (any groups and padding mode). Called by `recompute_bn`, behind
    a _StageGrads node that takes the gradients of s and the stage weights.

    Saved for backward: s (an activation: the surrounding hooks compress and count it),
    BN's batch mean and inverse std (1-D), and parameters (never counted). Backward
    recomputes y = stages(s) + bias, runs BN's backward, and leaves the stages' backward to
    _StageGrads.
    """

    @staticmethod
    def forward(ctx, s, bias, bn_weight, bn_bias, running_mean, running_var, momentum, eps,
                confs, recomputed_stats, handoff, *weights):
        y = _run_stages(s, weights, confs)[-1]  # under autocast: in 16 bits, as nn.Conv2d would be
        if bias is not None:
            y = y + bias.to(y.dtype).view(1, -1, 1, 1)
        if y.device.type == "cpu" and y.dtype == torch.float32:  # normalized over y: one map fewer
            mean, invstd = bn_forward_over_input(y, bn_weight, bn_bias, running_mean, running_var, momentum, eps)
            out = y.detach()  # not a view (y can be one): code after the layer may change it in place
        else:
            out, mean, invstd = torch.native_batch_norm(y, bn_weight, bn_bias, running_mean,
                                                        running_var, True, momentum, eps)
        ctx.conf = (confs, eps, recomputed_stats, bias is not None)
        ctx.autocast = autocast_state(s.device.type)
        ctx.handoff = handoff
        ctx.save_for_backward(s, bias, bn_weight, mean, invstd, *weights)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        confs, eps, recomputed_stats, has_bias = ctx.conf
        s, bias, bn_weight, mean, invstd, *weights = ctx.saved_tensors
        need = ctx.needs_input_grad
        need_bias, need_gamma, need_beta = need[1], need[2], need[3]
        need_s, *need_w = ctx.handoff.need
        want_graph = need_s or any(need_w)
        # The recomputation is transient: a pass-through hook pair keeps an enclosing
        # saved_activations context from compressing or counting it a second time.
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(_keep, _keep), \
                replay_autocast(ctx.autocast):
            s_ = s.detach().requires_grad_(need_s)
            ws = [w.detach().requires_grad_(n) for w, n in zip(weights, need_w)]
            outs = _run_stages(s_, ws, confs)  # builds a graph only where grads are wanted
        wanted = [i for i, n in enumerate((need_s, *need_w)) if n]
        # The graph's end, taken before y (the same memory) is written over: read after, autograd would
        # rebuild it as an as_strided backward that allocates a second full-width map.
        end = get_gradient_edge(outs[-1]) if wanted else None
        before = outs[-2] if len(outs) > 1 else None
        y = outs[-1].detach()  # the last stage (conv/bmm) does not save its output: y may be changed in place
        del outs
        if has_bias:
            y.add_(bias.to(y.dtype).view(1, -1, 1, 1))
        if recomputed_stats:
            var, mean = torch.var_mean(y, dim=(0, 2, 3), correction=0)
            invstd = torch.rsqrt(var + eps)
        need_input = want_graph or need_bias
        if y.device.type == "cpu":  # the input gradient over y: one full-width map fewer at this point
            grad_y, g_gamma, g_beta = bn_backward_over_input(grad_out, y, bn_weight, mean, invstd, need_input)
        else:  # one kernel launch (the slices' ops take about ten)
            grad_y, g_gamma, g_beta = torch.ops.aten.native_batch_norm_backward(
                grad_out.contiguous().to(y.dtype), y, bn_weight, None, None, mean, invstd, True, eps,
                [need_input, need_gamma, need_beta])
            _free(y)  # the recomputed full-width map is used: free it before the stages' backward
        del y
        g_bias = grad_y.sum((0, 2, 3)).to(bias.dtype) if need_bias else None
        if wanted:  # for _StageGrads, which runs once this node has returned (and grad_out is released)
            ctx.handoff.pending = (end, before, [s_, *ws], wanted, grad_y)
        del grad_y, before
        return (None, g_bias, g_gamma if need_gamma else None, g_beta if need_beta else None,
                None, None, None, None, None, None, None, *[None] * len(weights))


class FactoConvBN(FactoConv2d):
    """A FactoConv2d fused with the BatchNorm2d after it: BN's input is recomputed, not stored.

    Holds the conv's own Parameter objects (same names: first/core/last/bias) and the
    BatchNorm as `bn`. Training mode with grad: the frozen stages before the trainable one
    run activation-free, then one autograd Function stores only the trainable stage's input.
    Eval mode or no grad: the plain conv -> BN computation (autocast is followed in both).

    Args:
        bn_stats: statistics BN's backward uses with the recomputed (possibly decompressed)
            input: "forward" (the batch statistics of the forward pass) or "recomputed"
            (statistics of the recomputed input, so its normalization is self-consistent).
    """

    def __init__(self, conv: FactoConv2d, bn: nn.BatchNorm2d, bn_stats: str = DEFAULT_BN_STATS):
        nn.Module.__init__(self)
        if not isinstance(conv, FactoConv2d) or isinstance(conv, FactoConvBN):
            raise ValueError(f"conv={type(conv).__name__} is not allowed: use a FactoConv2d")
        if not isinstance(bn, nn.BatchNorm2d) or bn.num_features != conv.out_channels:
            raise ValueError(f"bn={bn!r} is not allowed: use a BatchNorm2d({conv.out_channels})")
        _adopt(self, conv, bn, bn_stats)

    def stages(self) -> list[tuple[Tensor, StageConf]]:
        """(weight, StageConf) per stage, in order."""
        if self.pointwise:
            return [(self.first, StageConf(stride=self.stride)), (self.last, StageConf())]
        return [(self.first, StageConf()),
                (self.core, StageConf(self.stride, self.padding, self.dilation)),
                (self.last, StageConf())]

    def split(self) -> int:
        """Index of the stage whose input is stored: the first trainable one (else the last)."""
        stages = self.stages()
        return next((i for i, (w, _) in enumerate(stages) if w.requires_grad), len(stages) - 1)

    def forward(self, x: Tensor) -> Tensor:
        bn = self.bn
        if not _fusable_call(bn, x):
            return bn(super().forward(x))
        running_mean, running_var, momentum = _bn_step(bn)
        stages = self.stages()
        k = self.split()
        s = x
        for w, conf in stages[:k]:  # frozen: store nothing
            s = conv_stage(s, w, conf.stride, conf.padding, conf.dilation)
        weights = [w for w, _ in stages[k:]]
        confs = tuple(c for _, c in stages[k:])
        return recompute_bn(s, self.bias, bn, running_mean, running_var, momentum, weights, confs,
                            self.bn_stats == "recomputed")

    def extra_repr(self) -> str:
        return super().extra_repr() + f", bn_stats={self.bn_stats!r}"


# ----------------------------------------------------------------------------- dense conv + BN


class ConvBN(nn.Conv2d):
    """A dense nn.Conv2d fused with the BatchNorm2d after it: BN's input is recomputed.

    Holds the conv's own Parameter objects (same names: weight/bias) and the BatchNorm as
    `bn`. Training mode with grad: one autograd Function stores only the conv's input x
    and BN's statistics. Eval mode or no grad: the plain conv -> BN computation.
    A subclass of nn.Conv2d, so code that looks for convs (isinstance) still finds it.

    Args:
        bn_stats: as for `FactoConvBN`: "forward" or "recomputed" batch statistics in BN's
            backward.
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, bn_stats: str = DEFAULT_BN_STATS):
        nn.Module.__init__(self)
        if type(conv) is not nn.Conv2d:
            raise ValueError(f"conv={type(conv).__name__} is not allowed: use an nn.Conv2d")
        if not isinstance(bn, nn.BatchNorm2d) or bn.num_features != conv.out_channels:
            raise ValueError(f"bn={bn!r} is not allowed: use a BatchNorm2d({conv.out_channels})")
        _adopt(self, conv, bn, bn_stats, keep=("_reversed_padding_repeated_twice",))

    def conf(self) -> StageConf:
        return StageConf(self.stride, self.padding, self.dilation, self.groups, self.padding_mode,
                         tuple(self._reversed_padding_repeated_twice))

    def forward(self, x: Tensor) -> Tensor:
        bn = self.bn
        if not _fusable_call(bn, x):
            return bn(super().forward(x))
        running_mean, running_var, momentum = _bn_step(bn)
        return recompute_bn(x, self.bias, bn, running_mean, running_var, momentum, [self.weight], (self.conf(),),
                            self.bn_stats == "recomputed")

    def extra_repr(self) -> str:
        return super().extra_repr() + f", bn_stats={self.bn_stats!r}"


# ----------------------------------------------------------------------------- detection


_LEAVES = (FactorizedLayer, ConvBN, MaskReLU, IndexMaxPool2d)


_TRACING = threading.Lock()  # one trace at a time: each patches nn.Module for the whole process


class _Tracer(fx.Tracer):
    """torch.fx tracer that keeps Facto's layers (with their Python control flow) as leaves.

    While it traces, torch.fx patches nn.Module.__call__ and __getattr__ for every thread: a module
    that another thread runs meanwhile (a run training beside a page that factorizes) passes through
    here and runs as it is, untraced. Traces take turns (`_TRACING`).
    """

    def trace(self, root, concrete_args=None):
        with _TRACING:
            self._thread = threading.get_ident()
            return super().trace(root, concrete_args)

    def _elsewhere(self) -> bool:
        return threading.get_ident() != getattr(self, "_thread", None)

    def call_module(self, m: nn.Module, forward, args, kwargs):
        if self._elsewhere():
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val, parameter_proxy_cache: dict):
        if self._elsewhere():
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualname)


def _is_candidate(m: nn.Module, dense: bool = True) -> bool:
    """A conv that could be fused: a FactoConv2d, or (dense) a plain nn.Conv2d, not yet fused."""
    if isinstance(m, FactoConv2d):
        return not isinstance(m, FactoConvBN)
    return dense and type(m) is nn.Conv2d


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _pairs_from_graph(root: nn.Module, graph: fx.Graph, prefix: str,
                      pairs: list, reasons: dict, dense: bool) -> None:
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in graph.nodes:
        if node.op != "call_module" or not _is_candidate(root.get_submodule(node.target), dense):
            continue
        name = _join(prefix, node.target)
        users = list(node.users)
        user = users[0] if len(users) == 1 else None
        bn = root.get_submodule(user.target) if user is not None and user.op == "call_module" else None
        if user is None:
            reasons[name] = f"its output has {len(users)} users, not one BatchNorm2d"
        elif not isinstance(bn, nn.BatchNorm2d):
            what = type(bn).__name__ if bn is not None else f"{user.op} {getattr(user.target, '__name__', user.target)}"
            reasons[name] = f"followed by {what}, not BatchNorm2d"
        elif user.args != (node,) or user.kwargs:
            reasons[name] = "the BatchNorm2d after it takes other arguments"
        elif calls[node.target] != 1 or calls[user.target] != 1:
            reasons[name] = "the conv or its BatchNorm2d is called more than once"
        else:
            pairs.append((name, _join(prefix, user.target)))


def _scan(module: nn.Module, prefix: str, pairs: list, reasons: dict, dense: bool) -> None:
    """Find (conv, bn) pairs under `module`: fx trace, else Sequential siblings, recursively."""
    try:
        graph = _Tracer().trace(module)
    except Exception as error:  # dynamic control flow, unsupported ops, ...
        why = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:160]
        children = list(module.named_children())
        if isinstance(module, nn.Sequential):
            for (n1, a), (n2, b) in zip(children, children[1:]):
                if _is_candidate(a, dense) and isinstance(b, nn.BatchNorm2d):
                    pairs.append((_join(prefix, n1), _join(prefix, n2)))
        for name, child in children:
            full = _join(prefix, name)
            if _is_candidate(child, dense):
                reasons.setdefault(full, f"the forward of {prefix or type(module).__name__!s} "
                                         f"could not be traced ({why}) and it is not followed "
                                         "by a BatchNorm2d in a Sequential")
            elif not isinstance(child, _LEAVES):
                _scan(child, full, pairs, reasons, dense)
        return
    _pairs_from_graph(module, graph, prefix, pairs, reasons, dense)


@dataclass
class FusionReport:
    """What `fuse_recompute` did: fused pairs, convs left unfused (with the reason), index-only pools."""

    fused: list[str] = field(default_factory=list)
    not_fused: dict[str, str] = field(default_factory=dict)
    index_pools: list[str] = field(default_factory=list)


def fusion_report(model: nn.Module) -> FusionReport | None:
    """What `fuse_recompute` did to `model` (None if it was never called on it)."""
    report = getattr(model, "facto_fusion", None)
    return report if isinstance(report, FusionReport) else None


def fuse_recompute(model: nn.Module, bn_stats: str = DEFAULT_BN_STATS, dense: bool = True) -> nn.Module:
    """Fuse every conv + BatchNorm2d pair and swap max-pools, in place; returns `model`.

    Each FactoConv2d + BN pair becomes a `FactoConvBN` at the conv's name, each dense
    nn.Conv2d + BN pair (when `dense`) a `ConvBN`, and the BN's name an nn.Identity.
    A conv is fused only when its output goes to nothing but the BatchNorm2d.
    Every nn.MaxPool2d (return_indices False) becomes an `IndexMaxPool2d`.
    What was done is kept as `model.facto_fusion` (a `FusionReport`, see `fusion_report`);
    calling it again on a fused model fuses what is left and adds it to the report.
    """
    validate_bn_stats(bn_stats)
    pairs: list[tuple[str, str]] = []
    reasons: dict[str, str] = {}
    if isinstance(model, _LEAVES):
        reasons[""] = "a single layer: no BatchNorm2d after it in this module"
    else:
        _scan(model, "", pairs, reasons, dense)
    previous = fusion_report(model) or FusionReport()
    report = FusionReport(fused=list(previous.fused), index_pools=list(previous.index_pools))
    done = set()
    for conv_name, bn_name in pairs:
        if conv_name in done:
            continue
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        fused_cls = FactoConvBN if isinstance(conv, FactoConv2d) else ConvBN
        replace_module(model, bn_name, nn.Identity())  # first: once the fused conv holds bn, that is a name of it too
        replace_module(model, conv_name, fused_cls(conv, bn, bn_stats))
        report.fused.append(f"{conv_name}+{bn_name}")
        done.add(conv_name)
    for name, m in model.named_modules():
        if _is_candidate(m, dense) and name not in reasons:
            reasons[name] = "not seen in the traced forward"
    for name, m in list(model.named_modules()):
        if type(m) is nn.MaxPool2d and not m.return_indices and name:
            replace_module(model, name, IndexMaxPool2d.from_pool(m))
            report.index_pools.append(name)
    report.not_fused = {n: r for n, r in reasons.items() if n not in done and n}
    model.facto_fusion = report
    return model
