"""Facto: memory-efficient CNN training (Facto-CNN, ACML 2023) you can see and play with.

The public API, re-exported; nothing is defined here.
"""
from . import compress
from .activations import ActivationMeter, hold, measure_activations, saved_activations
from .data import DataNotFoundError, dataset_info, list_datasets, load_data
from .factorize import (LayerReport, describe, factorize, format_report, parse_rank,
                        with_relu_masks)
from .fuse import FactoConvBN, IndexMaxPool2d, fuse_recompute
from .layers import FactoConv2d, FactoLinear, MaskReLU
from .models import create_model, list_models
from .store import RunStore
from .sweep import sweep
from .train import (PRESETS, EvalEvent, RunConfig, StartEvent, StepEvent, SummaryEvent, compare,
                    preset, run)

__all__ = [
    "PRESETS", "ActivationMeter", "DataNotFoundError", "EvalEvent", "FactoConv2d", "FactoConvBN",
    "FactoLinear", "IndexMaxPool2d", "LayerReport", "MaskReLU", "RunConfig", "RunStore", "StartEvent",
    "StepEvent", "SummaryEvent", "compare", "compress", "create_model", "dataset_info", "describe",
    "factorize", "format_report", "fuse_recompute", "hold", "list_datasets", "list_models",
    "load_data", "measure_activations", "parse_rank", "preset", "run", "saved_activations", "sweep",
    "with_relu_masks",
]
