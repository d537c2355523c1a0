"""Facto inside one conv layer, measured: the numbers behind the "How it works" page.

For a model's conv layer and a real input batch: the dense conv and its Tucker-2 form as
three stages with their tensor shapes, which factor trains, and what each variant keeps for
backward, measured with the meter on that layer alone (conv -> BatchNorm -> ReLU):

- dense: the conv's input, BatchNorm's input and the ReLU output, fp32;
- Facto: the trainable stage's input (compressed to b bits, with its block metadata), the
  1-bit ReLU mask, and BatchNorm's input unless it is recomputed.

`rank_curve` shows, for several ranks, the weight's reconstruction error, the parameters and
the stored bytes moving together. Nothing is trained; runs on CPU in about a second.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import RankPolicy, RunConfig
from ..engine.data import dataset_info
from ..engine.starting import starting_model
from ..method.calibrate import input_of
from ..method.decompose import rel_error
from ..method.layers import FactoConv2d, MaskReLU
from ..method.recompute import fuse_recompute
from .budget import check_batch
from .meter import saved_activations

SOURCES = ("dense", "facto")


@dataclass
class Stage:
    """One stage of the factorized layer."""

    name: str  # first | core | last
    kind: str  # "1x1 conv" | "3x3 conv" ...
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    params: int
    trains: bool


@dataclass
class Kept:
    """One thing kept for backward by the layer, measured."""

    source: str  # dense | facto
    what: str  # plain words: "input of the core (the trained factor)", "1-bit ReLU mask", ...
    shape: tuple[int, ...]
    dtype: str
    stored_as: str
    bytes: int
    raw_bytes: int


@dataclass
class LayerStory:
    """One conv layer, dense and factorized, with what each keeps for backward."""

    layer: str
    weight_shape: tuple[int, ...]
    ranks: tuple[int, int]
    update: str
    bits: int | None
    recompute: bool
    batch: int
    rel_error: float
    params_dense: int
    params_facto: int
    stages: list[Stage]
    kept: list[Kept] = field(default_factory=list)
    removed_by_recompute: int = 0

    def total(self, source: str) -> int:
        return sum(k.bytes for k in self.kept if k.source == source)


def conv_layers(model: nn.Module) -> list[tuple[str, str]]:
    """(name, description) of the convs Facto factorizes with Tucker-2 (groups 1, kernel > 1x1)."""
    out = []
    for name, m in model.named_modules():
        if type(m) is nn.Conv2d and m.groups == 1 and m.kernel_size != (1, 1) and m.in_channels > 3:
            out.append((name, f"{name} · {m.in_channels}→{m.out_channels}, {m.kernel_size[0]}x{m.kernel_size[1]}"
                              f"{', stride ' + str(m.stride[0]) if m.stride != (1, 1) else ''}"))
    return out


def layer_input(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """The feature map that reaches layer `name` when `x` goes through the model (eval mode, a copy)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return input_of(model, name, x).clone()
    finally:
        model.train(was_training)


def _block(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(channels), MaskReLU())


def _dense_block(conv: nn.Conv2d) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(conv.out_channels), nn.ReLU())


def _measure(block: nn.Module, x: torch.Tensor, bits: int | None, block_size: int) -> list:
    block.train()
    xin = x.clone().requires_grad_(True)  # the layer's input needs a gradient (it is mid-network)
    with saved_activations(bits, block_size, model=block) as meter:
        block(xin)
    return meter.records


def _describe(record, source: str, trained: str | None) -> str:
    """Plain words for a record of the one-layer block (modules '0' conv, '1' BN, '2' ReLU)."""
    position = record.module.rsplit(".", 1)[-1]
    if len(record.shape) == 1 and position in ("0", "1") and record.dtype.startswith("float"):
        return "BatchNorm statistics (mean and 1/std per channel)"
    if position == "2":
        return "1-bit ReLU mask (which outputs were positive)" if source == "facto" else "ReLU output (full width)"
    if position == "1":
        return "BatchNorm's input (full width)"
    if source == "dense":
        return "the conv's input (for its weight gradient)"
    return f"input of the {trained} factor (the trained one)" if trained else "the layer's input (all factors train)"


def explain_layer(config: RunConfig, layer: str, x: torch.Tensor | None = None,
                  max_batch: int | None = None) -> LayerStory:
    """Dense vs Facto for one conv layer of the config's model, measured on a batch.

    Args:
        config: model, dataset, rank, update, bits, block, recompute, batch_size, seed, and init: the
            weights (fresh from the seed, or trained ones: `facto.engine.starting`).
        layer: a name from `conv_layers`.
        x: the model input batch (default: N(0, 1) noise of the dataset's shape).
        max_batch: the most images a batch may have (None: no bound): LimitError before any work.
    """
    check_batch(config.batch_size if x is None else int(x.shape[0]), max_batch)
    info = dataset_info(config.dataset)
    dense = starting_model(config, info.num_classes, info.in_channels)[0]  # config.init: fresh or trained
    names = [n for n, _ in conv_layers(dense)]
    if layer not in names:
        raise ValueError(f"layer={layer!r} is not allowed: use one of {', '.join(names) or '(none in this model)'}")
    if x is None:
        g = torch.Generator().manual_seed(config.seed)
        x = torch.randn(config.batch_size, info.in_channels, info.image_size, info.image_size, generator=g)
    feature = layer_input(dense, layer, x)
    conv: nn.Conv2d = dense.get_submodule(layer)
    update = config.facto_update
    facto_conv = FactoConv2d.from_conv(conv, config.rank, update)
    dense_records = _measure(_dense_block(conv), feature, None, config.block)
    facto_block = _block(facto_conv, conv.out_channels)
    if config.recompute:
        fuse_recompute(facto_block)
    facto_records = _measure(facto_block, feature, config.bits, config.block)
    trained = facto_conv.trainable_stage(update)
    story = LayerStory(
        layer=layer, weight_shape=tuple(conv.weight.shape), ranks=facto_conv.ranks, update=update,
        bits=config.bits, recompute=config.recompute, batch=feature.shape[0],
        rel_error=rel_error(conv.weight.detach(), facto_conv.dense_weight().detach()),
        params_dense=sum(p.numel() for p in conv.parameters()),
        params_facto=facto_conv.factor_parameters(), stages=stages(facto_conv, feature.shape))
    for source, records in (("dense", dense_records), ("facto", facto_records)):
        for r in records:
            story.kept.append(Kept(source, _describe(r, source, trained), r.shape, r.dtype,
                                   r.stored_as, r.stored_bytes, r.raw_bytes))
    if config.recompute:
        unfused = _measure(_block(FactoConv2d.from_conv(conv, config.rank, update), conv.out_channels),
                           feature, config.bits, config.block)
        story.removed_by_recompute = sum(r.stored_bytes for r in unfused) - story.total("facto")
    return story


def stages(layer: FactoConv2d, input_shape: torch.Size) -> list[Stage]:
    """The three (or two, for 1x1) stages of a factorized conv with their shapes for `input_shape`."""
    n, _, h, w = input_shape
    ho = (h + 2 * layer.padding[0] - layer.dilation[0] * (layer.kernel_size[0] - 1) - 1) // layer.stride[0] + 1
    wo = (w + 2 * layer.padding[1] - layer.dilation[1] * (layer.kernel_size[1] - 1) - 1) // layer.stride[1] + 1
    trained = layer.trainable_stage(layer.update)
    r_out, r_in = layer.ranks
    if layer.pointwise:
        return [Stage("first", "1x1 conv", (n, layer.in_channels, h, w), (n, r_in, ho, wo),
                      layer.first.numel(), trained in (None, "first")),
                Stage("last", "1x1 conv", (n, r_in, ho, wo), (n, layer.out_channels, ho, wo),
                      layer.last.numel(), trained in (None, "last"))]
    kh, kw = layer.kernel_size
    return [Stage("first", "1x1 conv", (n, layer.in_channels, h, w), (n, r_in, h, w),
                  layer.first.numel(), trained in (None, "first")),
            Stage("core", f"{kh}x{kw} conv", (n, r_in, h, w), (n, r_out, ho, wo),
                  layer.core.numel(), trained in (None, "core")),
            Stage("last", "1x1 conv", (n, r_out, ho, wo), (n, layer.out_channels, ho, wo),
                  layer.last.numel(), trained in (None, "last"))]


@dataclass
class RankPoint:
    rank: str
    ranks: tuple[int, int]
    rel_error: float
    params: int
    stored_bytes: int


def rank_curve(config: RunConfig, layer: str, ranks: list, x: torch.Tensor | None = None,
               max_batch: int | None = None) -> list[RankPoint]:
    """Reconstruction error, parameters and stored bytes of one layer for several ranks."""
    points = []
    for rank in ranks:
        story = explain_layer(config.replace(rank=rank), layer, x, max_batch)
        points.append(RankPoint(str(RankPolicy.parse(rank)), story.ranks, story.rel_error, story.params_facto,
                                story.total("facto")))
    return points


GLOSSARY = {
    "activation memory": "what autograd keeps from the forward pass so that backward can compute the "
                         "gradients: mostly the inputs of layers. It grows with the batch.",
    "factorize / Tucker-2": "write a conv's weight as three smaller ones: a 1x1 conv that shrinks the "
                            "channels, a small k×k core conv, and a 1x1 conv back to full width.",
    "rank": "how many channels the factors keep (a fraction of the layer's channels, or a number). Lower "
            "rank: fewer channels to store, but a coarser copy of the weight.",
    "train core / first / last": "which of the three factors learns; the others stay frozen. Only the "
                                 "learning factor's input is kept for backward, so the choice sets what is stored.",
    "frozen stage": "a factor that does not learn: backward needs only its weight, not its input.",
    "b-bit compression": "each kept map is cut into blocks of neighbouring values; each block keeps its "
                         "min and step and every value becomes a b-bit code. 4 bits: 8x smaller than fp32.",
    "block metadata": "the min and the step of each block (16 bits each): the small price of compression.",
    "stochastic rounding": "round up or down at random in proportion, so errors average out over steps.",
    "MaskReLU / 1-bit mask": "ReLU's backward only needs to know which outputs were positive: one bit per "
                             "value instead of the 32-bit output.",
    "recompute BN": "BatchNorm needs its input in backward. Instead of keeping that full-width map, Facto "
                    "recomputes it from the small factor input it keeps anyway.",
    "baseline": "the same model trained dense in fp32 from the same weights on the same batches.",
    "saving": "1 − Facto's stored bytes / the baseline's, for one batch.",
    "peak memory": "the most the GPU holds at any moment of a step (weights, gradients, optimizer state, "
                   "kept maps and temporary buffers): what decides whether a batch fits.",
    "HOSVD / reconstruction error": "how the factors are found (the leading singular vectors of the weight), "
                                    "and how far the factorized weight is from the dense one (0 = exact).",
}

PAPER = ("Lee, Ko, Hong: Facto-CNN: Memory-Efficient CNN Training with Low-rank Tensor Factorization "
         "and Lossy Tensor Compression (ACML 2023, PMLR 222:662-677)",
         "https://proceedings.mlr.press/v222/lee24a.html")
