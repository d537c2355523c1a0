"""What a config's Facto model is and stores, without training: the report and bytes per layer.

Used by `facto inspect`, the Layers page and the "How it works" page: the model is built
exactly as a run builds it (`facto.build`), run forward on one batch, and measured.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .build import dense_model, facto_model, layer_bytes
from .config import RunConfig
from .data import dataset_info, load_data
from .factorize import LayerReport, describe


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
        """(layer, dense bytes, Facto bytes) for every layer that stores something, in model order."""
        names = list(dict.fromkeys([*self.dense_bytes, *self.facto_bytes]))
        return [(n, self.dense_bytes.get(n, 0), self.facto_bytes.get(n, 0)) for n in names]

    def report_rows(self) -> list[dict]:
        return [asdict(r) for r in self.report]


def sample_batch(config: RunConfig, real_data: bool = True) -> torch.Tensor:
    """One batch of the config's dataset (or N(0, 1) noise of its shape when `real_data` is False)."""
    info = dataset_info(config.dataset)
    if real_data:
        data = load_data(config.dataset, config.data_dir, config.batch_size, seed=config.seed,
                         max_train=config.batch_size, max_test=1)
        return next(iter(data.train_loader))[0]
    generator = torch.Generator().manual_seed(config.seed)
    return torch.randn(config.batch_size, info.in_channels, info.image_size, info.image_size, generator=generator)


def analyse_layers(config: RunConfig, real_data: bool = False) -> LayerAnalysis:
    """Build the config's dense and Facto models and measure one training-mode forward each."""
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
        batch=int(x.shape[0]), input_shape=tuple(x.shape[1:]))
