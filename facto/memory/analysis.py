"""What a config's Facto model is and stores, without training: the report and bytes per layer,
and the numbers behind the compression figures.

Used by `facto inspect`, the Layers page and the Compression page: the model is built
exactly as a run builds it (`facto.engine.build`), run forward on one batch, and measured.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch
from torch import nn

from ..compress import quantize
from ..config import RunConfig
from ..engine.build import dense_model, facto_model, layer_bytes, probing
from ..engine.data import dataset_info, load_data
from ..method.factorize import LayerReport, describe
from .budget import check_batch


@dataclass
class LayerAnalysis:
    """The factorization report and stored bytes per layer for one batch, dense vs Facto."""

    config: RunConfig
    report: list[LayerReport]
    dense_bytes: dict[str, int]
    facto_bytes: dict[str, int]
    dense_types: dict[str, str]
    facto_types: dict[str, str]
    params: dict[str, int]
    trainable: int
    batch: int
    input_shape: tuple[int, ...]
    dense_inputs: dict[str, str] = field(default_factory=dict)  # layer -> the layer whose output it reads

    @property
    def dense_total(self) -> int:
        return sum(self.dense_bytes.values())

    @property
    def facto_total(self) -> int:
        return sum(self.facto_bytes.values())

    @property
    def saving_pct(self) -> float | None:
        return 100.0 * (1 - self.facto_total / self.dense_total) if self.dense_total else None

    def rows(self) -> list[tuple[str, int, int]]:
        """(layer, dense bytes, Facto bytes) for every layer that stores something, in model order
        (the order of the model's modules; Facto keeps the dense layers' names)."""
        stored = {*self.dense_bytes, *self.facto_bytes}
        order = list(dict.fromkeys([*self.dense_types, *self.facto_types]))
        names = [n for n in order if n in stored] + [n for n in dict.fromkeys([*self.dense_bytes, *self.facto_bytes])
                                                     if n not in order]
        return [(n, self.dense_bytes.get(n, 0), self.facto_bytes.get(n, 0)) for n in names]

    def bytes_by_variant(self) -> dict[str, dict[str, int]]:
        """{'baseline': {layer: bytes}, 'facto': {...}} with every row in model order (0 where a
        variant stores nothing), as `facto.plots.layer_bytes_bars` draws it."""
        rows = self.rows()
        return {"baseline": {n: d for n, d, _ in rows}, "facto": {n: f for n, _, f in rows}}

    def report_rows(self) -> list[dict]:
        return [asdict(r) for r in self.report]

    def type_labels(self) -> dict[str, str]:
        """Module type per layer: 'ReLU', or 'BatchNorm2d → Identity' where Facto replaced it."""
        labels = {}
        for name in dict.fromkeys([*self.dense_types, *self.facto_types]):
            dense, facto = self.dense_types.get(name), self.facto_types.get(name)
            labels[name] = dense if facto in (None, dense) else facto if dense is None else f"{dense} → {facto}"
        return labels

    def increases(self) -> list["Increase"]:
        """The rows where Facto stores more than the baseline, grouped and explained (see `Increase`)."""
        return find_increases(self)


@dataclass
class Increase:
    """Layers of one module type where Facto stores more than the baseline, and why, from the data.

    The usual cause: in the baseline such a layer reads a tensor another layer (its `source`)
    already keeps, and a tensor kept by two layers is stored once, in the row of the first.
    Facto keeps less at the source (a 1-bit mask, a compressed copy, nothing when it is
    recomputed), so the layer must keep its own copy: bytes move from the source's row to its
    row, and the pair together still stores less.
    """

    layers: list[str]
    dense_type: str
    facto_type: str
    extra: int  # bytes Facto stores more in these rows
    dense_bytes: int  # what the baseline stores in these rows
    sources: list[str] = field(default_factory=list)  # the layers whose output they read
    source_dense_type: str | None = None
    source_facto_type: str | None = None
    source_saved: int = 0  # bytes Facto stores less in the source rows
    source_bits: float | None = None  # bits per value Facto keeps at the sources (the baseline: 32)

    @property
    def net(self) -> int:
        """Bytes the layers and their sources store together, Facto minus baseline (< 0: less)."""
        return self.extra - self.source_saved

    def text(self) -> str:
        """One paragraph in plain words (Markdown bold for the layer type)."""
        n = len(self.layers)
        kind = f"{self.dense_type} layer" + ("s" if n > 1 else "")
        renamed = f"; {self.facto_type} in Facto" if self.facto_type != self.dense_type else ""
        what = f"**{n} {kind}** ({_names(self.layers)}{renamed}) store{'s' if n == 1 else ''} " \
               f"{_mb(self.extra)} more in Facto than in the baseline."
        if not self.sources:
            return what + (f" The baseline keeps {_mb(self.dense_bytes)} there; Facto keeps its own "
                           "copy of what these layers need for backward.")
        src = f"{self.source_dense_type}" + ("" if self.source_facto_type == self.source_dense_type
                                             else f" → {self.source_facto_type}")
        if self.dense_bytes:
            empty = f"so {'this row holds' if n == 1 else 'these rows hold'} only {_mb(self.dense_bytes)}"
        else:
            empty = f"so {'this row is' if n == 1 else 'these rows are'} empty"
        if self.source_bits is None or self.source_bits <= 0:
            keeps = "keep nothing of that output (it is recomputed in backward)"
        else:
            keeps = f"keep about {self.source_bits:.2g} bit{'s' if self.source_bits >= 1.5 else ''} per value " \
                    "of that output instead of 32"
        return (what + f" In the baseline, {'it reads' if n == 1 else 'they read'} the output of the layer "
                f"before ({src}: {_names(self.sources)}), which that layer already keeps for its own "
                f"backward; a tensor kept by two layers is stored once and counted in the first one's row, "
                f"{empty}. In Facto, the {self.source_dense_type} layers {keeps} ({_mb(self.source_saved)} "
                f"less), so {'this layer keeps its' if n == 1 else 'these layers keep their'} own input. "
                f"Together they store {_mb(abs(self.net))} {'less' if self.net <= 0 else 'more'} than in the "
                "baseline.")


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f} MB" if n >= 10_000 else f"{n:,} bytes"


def _names(names: list[str], most: int = 4) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def find_increases(analysis: LayerAnalysis) -> list[Increase]:
    """Group the rows where Facto stores more by (dense type, Facto type, source types)."""
    rows = {name: (dense, facto) for name, dense, facto in analysis.rows()}
    groups: dict[tuple, Increase] = {}
    for name, (dense, facto) in rows.items():
        if facto <= dense:
            continue
        source = analysis.dense_inputs.get(name)
        seen = {name}
        while source in analysis.dense_inputs and source not in seen and rows.get(source, (0, 0)) == (0, 0):
            seen.add(source)  # a layer that passes its input on (Identity, Flatten): look further back
            source = analysis.dense_inputs[source]
        s_dense, s_facto = rows.get(source, (0, 0)) if source else (0, 0)
        if source is None or s_facto >= s_dense:  # nothing moved from the layer before
            source = None
        key = (analysis.dense_types.get(name, "?"), analysis.facto_types.get(name, "?"),
               analysis.dense_types.get(source) if source else None,
               analysis.facto_types.get(source) if source else None)
        group = groups.setdefault(key, Increase([], key[0], key[1], 0, 0, source_dense_type=key[2],
                                                source_facto_type=key[3]))
        group.layers.append(name)
        group.extra += facto - dense
        group.dense_bytes += dense
        if source and source not in group.sources:
            group.sources.append(source)
            group.source_saved += s_dense - s_facto
    for group in groups.values():
        if group.sources:
            dense = sum(rows[s][0] for s in group.sources)
            group.source_bits = 32.0 * sum(rows[s][1] for s in group.sources) / dense if dense else None
    return sorted(groups.values(), key=lambda g: -g.extra)


def input_sources(model: nn.Module, x: torch.Tensor) -> dict[str, str]:
    """{leaf module: the leaf module whose output is its first input} for one forward of `x`.

    Outputs are matched to inputs by storage, so an in-place layer (ReLU(inplace=True)) counts
    as the producer of what it overwrote. No gradients; BatchNorm statistics restored after.
    """
    produced: dict[int, str] = {}
    sources: dict[str, str] = {}
    hooks = []

    def storage(t) -> int | None:
        return t.untyped_storage().data_ptr() if isinstance(t, torch.Tensor) else None

    for name, module in model.named_modules():
        if not name or any(True for _ in module.children()):
            continue

        def before(m, args, name=name):
            key = storage(args[0]) if args else None
            if key in produced:
                sources[name] = produced[key]

        def after(m, args, out, name=name):
            key = storage(out)
            if key is not None:
                produced[key] = name

        hooks += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    with probing(model, hooks), torch.no_grad():
        model(x)
    return sources


def sample_batch(config: RunConfig, real_data: bool = True) -> torch.Tensor:
    """One batch of the config's dataset (or N(0, 1) noise of its shape when `real_data` is False)."""
    info = dataset_info(config.dataset)
    if real_data:
        data = load_data(config.dataset, config.data_dir, config.batch_size, seed=config.seed,
                         max_train=config.batch_size, max_test=1)
        return next(iter(data.train_loader))[0]
    generator = torch.Generator().manual_seed(config.seed)
    return torch.randn(config.batch_size, info.in_channels, info.image_size, info.image_size, generator=generator)


def analyse_layers(config: RunConfig, real_data: bool = False, max_batch: int | None = None) -> LayerAnalysis:
    """Build the config's dense and Facto models and measure one training-mode forward each.
    `max_batch` bounds config.batch_size (None: no bound): LimitError before any work."""
    check_batch(config.batch_size, max_batch)
    info = dataset_info(config.dataset)
    dense = dense_model(config, info.num_classes, info.in_channels)
    facto = facto_model(config, dense)
    x = sample_batch(config, real_data)
    return LayerAnalysis(
        config=config, report=describe(facto),
        dense_bytes=layer_bytes(dense, x, None, config.block),
        facto_bytes=layer_bytes(facto, x, config.bits, config.block),
        dense_types={n: type(m).__name__ for n, m in dense.named_modules() if n},
        facto_types={n: type(m).__name__ for n, m in facto.named_modules() if n},
        params={"baseline": sum(p.numel() for p in dense.parameters()),
                "facto": sum(p.numel() for p in facto.parameters())},
        trainable=sum(p.numel() for p in facto.parameters() if p.requires_grad),
        batch=int(x.shape[0]), input_shape=tuple(x.shape[1:]), dense_inputs=input_sources(dense, x))


# ----------------------------------------------------------------------------- behind the compression figures

def feature_maps(model, x) -> dict:
    """Outputs of every leaf module that returns a 4-D floating tensor, for one forward of `x`.

    Training-mode forward without gradients (BatchNorm statistics are restored afterwards).
    Returns {module name: tensor (B, C, H, W)} in forward order.
    """
    maps: dict = {}
    hooks = []
    for name, module in model.named_modules():
        if name and not any(True for _ in module.children()):
            def hook(m, args, out, name=name):
                if isinstance(out, torch.Tensor) and out.dim() == 4 and out.is_floating_point():
                    maps.setdefault(name, out.detach().clone())  # in-place ops (ReLU) come later
            hooks.append(module.register_forward_hook(hook))
    with probing(model, hooks), torch.no_grad():
        model(x)
    return maps


def compression_sample(x, bits: int, block: int = 64, stochastic: bool = True, seed: int = 0) -> dict:
    """Quantize `x` as training stores it (`facto.compress.quantize`) and measure the result.

    Returns compressed (dequantized tensor), error (compressed - x), rel_error (||error|| / ||x||),
    max_error, mean_abs_error, bytes (stored, with block metadata) and raw_bytes (fp32).
    """
    gen = torch.Generator(device=x.device).manual_seed(seed)
    packed = quantize(x, bits, block, stochastic=stochastic, generator=gen)
    restored = packed.dequantize()
    error = restored - x
    return dict(compressed=restored, error=error, bits=bits,
                rel_error=float(error.norm() / x.norm().clamp_min(1e-12)),
                max_error=float(error.abs().max()), mean_abs_error=float(error.abs().mean()),
                bytes=packed.nbytes, raw_bytes=x.numel() * x.element_size())


def bits_table(x, block: int = 64, stochastic: bool = True, bits: Iterable[int] = range(1, 9),
               seed: int = 0) -> list[dict]:
    """Rows for `bits_curves`: error and stored bytes of `x` at each bit width."""
    rows = []
    for b in bits:
        s = compression_sample(x, b, block, stochastic, seed)
        rows.append({k: s[k] for k in ("bits", "rel_error", "max_error", "mean_abs_error", "bytes", "raw_bytes")})
    return rows
